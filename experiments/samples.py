"""Sample completions before and after training: `python -m experiments.samples DIR [--member K] [--width N]`.

Prints a Markdown table of the first and the last eval's sample completions (DIR/eval_samples.jsonl: the first
logging.num_samples held-out problems, greedy), one row per problem: the prompt's problem, the completion at the
first eval and at the last, each marked correct or not. In a multi-turn run's episodes, what the environment
inserted (tool results, chat turns) is set apart as ⟦...⟧ from the model's own text. --width clips each
completion (0 = in full).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from grpo_jax.metrics import SAMPLES_FILE


def read_samples(workdir: str, member: int | None = None) -> dict:
    """{step: [sample rows of that eval]} from DIR/eval_samples.jsonl (a population member's only, when given)."""
    out: dict = {}
    with open(os.path.join(workdir, SAMPLES_FILE)) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if member is None or row.get("member") == member:
                    out.setdefault(int(row["step"]), []).append(row)
    return out


def _cell(text: str, width: int) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if width <= 0 or len(text) <= width else text[: width - 3] + "..."


def _marked(row: dict | None, width: int) -> str:
    if row is None:
        return "-"
    text = row.get("episode", row.get("completion", ""))  # an episode: its observations set apart as ⟦...⟧
    return ("✓ " if row.get("correct") else "✗ ") + _cell(text, width)


def before_after_table(samples: dict, width: int = 0) -> str:
    """The Markdown table of the first and the last eval's samples, matched by prompt."""
    first, last = min(samples), max(samples)
    after = {row["prompt"]: row for row in samples[last]}
    lines = [f"| problem | step {first} | step {last} |", "|---|---|---|"]
    for row in samples[first]:
        problem = row["prompt"].split("?", 1)[0] + ("?" if "?" in row["prompt"] else "")
        lines.append(f"| {_cell(problem, 60)} | {_marked(row, width)} | {_marked(after.get(row['prompt']), width)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a run directory holding eval_samples.jsonl")
    parser.add_argument("--member", type=int, default=None, help="a population member's samples")
    parser.add_argument("--width", type=int, default=0, help="clip completions to N characters (0 = in full)")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.workdir, SAMPLES_FILE)):
        print(f"error: {args.workdir}: no {SAMPLES_FILE} (a run with eval.every > 0 and logging.num_samples > 0 "
              "writes it)", file=sys.stderr)
        return 2
    samples = read_samples(args.workdir, args.member)
    if not samples:
        print(f"error: {args.workdir}: no samples{'' if args.member is None else f' of member {args.member}'}",
              file=sys.stderr)
        return 2
    print(before_after_table(samples, args.width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
