"""`reasoning_sweep`: the settings of a config file (configs/reasoning.py by default) trained one after another, one
table row each.

    python -m benchmarks reasoning_sweep                               # every setting, as configured
    python -m benchmarks reasoning_sweep --config configs/calculator.py --steps 20 --eval-examples 100  # its sweep
    python -m benchmarks reasoning_sweep --settings steps_mix --steps 20 --eval-examples 100   # the sweep's budget
    python -m benchmarks reasoning_sweep --settings tiny --model tiny.gguf --out /tmp/rs --results ''    # smoke

A config file's SETTINGS (name -> what it tries) are its config args; each setting is
`python -m experiments.train --config FILE:SETTING` in OUT/SETTING, one subprocess
after another (a fresh OUT/SETTING each: an existing one is an error, a resumed run would not time the whole run).
--steps N sets total_steps and eval.every to N (held-out eval at the start and the end only); --eval-examples the
held-out problems of both evals; --set KEY=VALUE any other override. A row reports the first and last held-out greedy accuracy and their difference in
points, the last eval's intermediate_rate and mean_length_correct, the mean training reward of the first and the
last quarter of the steps, the median step time after the first step, and the run's wall time; a multi-turn
config's rows add the first and last eval's tool-call rate and the last eval's share of correct answers that made a
tool call (`eval/tool_call_rate`, `eval/correct_with_call`).

One JSON line on stdout ({"rows": [...]}, appended to benchmarks/results.jsonl unless --results ''), and the table as
Markdown on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import ROOT, child_env, machine, results

CONFIG_FILE = os.path.join(ROOT, "configs", "reasoning.py")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks reasoning_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=CONFIG_FILE, help="the config file whose SETTINGS are swept")
    p.add_argument("--settings", default="", help="comma-separated settings of the config (default: all)")
    p.add_argument("--steps", type=int, default=0, help="total_steps (and eval.every) override; 0 = the config's")
    p.add_argument("--eval-examples", type=int, default=0, help="held-out problems per eval; 0 = the config's")
    p.add_argument("--model", default="", help="model.path override (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every setting, e.g. --set rollout.max_new_tokens=32 (repeatable)")
    p.add_argument("--out", default=os.path.join("runs", "bench_reasoning"))
    p.add_argument("--results", default=results.RESULTS, help="JSONL file the line is appended to ('' = none)")
    return p


def settings(config_file: str = CONFIG_FILE) -> dict:
    """The config file's SETTINGS (name -> what it tries), loaded from its file as experiments.train loads it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sweep_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SETTINGS


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def row(name: str, what: str, rows: list[dict], wall: float) -> dict:
    """One table row from a run's metrics.jsonl rows."""
    evals = [r for r in rows if "eval/accuracy" in r]
    train = {int(r["step"]): r for r in rows if "step_time" in r and "reward" in r}
    steps = [train[s] for s in sorted(train)]
    quarter = max(1, len(steps) // 4)
    first, last = (evals[0], evals[-1]) if evals else ({}, {})
    out = {"setting": name, "what": what, "steps": len(steps),
           "eval_examples": last.get("eval/num_examples"),
           "accuracy_first": first.get("eval/accuracy"), "accuracy_last": last.get("eval/accuracy"),
           "points": (round(100 * (last["eval/accuracy"] - first["eval/accuracy"]), 1) if evals else None),
           "intermediate_rate_first": first.get("eval/intermediate_rate"),
           "intermediate_rate_last": last.get("eval/intermediate_rate"),
           "mean_length_correct_last": last.get("eval/mean_length_correct"),
           "reward_first_quarter": (round(statistics.mean(r["reward"] for r in steps[:quarter]), 3) if steps else None),
           "reward_last_quarter": (round(statistics.mean(r["reward"] for r in steps[-quarter:]), 3) if steps else None),
           "step_s": (round(statistics.median(r["step_time"] for r in steps[1:]), 2) if len(steps) > 1 else None),
           "wall_s": round(wall, 1)}
    if "eval/tool_call_rate" in last:
        out.update({"tool_call_rate_first": first.get("eval/tool_call_rate"),
                    "tool_call_rate_last": last.get("eval/tool_call_rate"),
                    "correct_with_call_last": last.get("eval/correct_with_call")})
    return out


def table(rows: list[dict]) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    tools = any("tool_call_rate_last" in r for r in rows)
    head = ("| setting | what | steps | held-out acc. first -> last | points | intermediate rate last | "
            "train reward first -> last quarter | step s | wall s |")
    if tools:
        head += " tool calls first -> last | correct with a call |"
    lines = [head, "|" + "---|" * (11 if tools else 9)]
    for r in rows:
        line = (f"| {r['setting']} | {r['what']} | {r['steps']} | {pct(r['accuracy_first'])} -> "
                f"{pct(r['accuracy_last'])} ({r['eval_examples']}) | {r['points']} | "
                f"{pct(r['intermediate_rate_last'])} | {r['reward_first_quarter']} -> {r['reward_last_quarter']} | "
                f"{r['step_s']} | {r['wall_s']} |")
        if tools:
            line += (f" {pct(r.get('tool_call_rate_first'))} -> {pct(r.get('tool_call_rate_last'))} | "
                     f"{pct(r.get('correct_with_call_last'))} |")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    config_file = os.path.abspath(args.config)
    known = settings(config_file)
    names = [s for s in args.settings.split(",") if s] or list(known)
    unknown = [s for s in names if s not in known]
    if unknown:
        raise SystemExit(f"reasoning_sweep: unknown settings {unknown}; {args.config} has {list(known)}")
    out_dir = os.path.abspath(args.out)
    taken = [s for s in names if os.path.exists(os.path.join(out_dir, s))]
    if taken:
        raise SystemExit(f"reasoning_sweep: {[os.path.join(out_dir, s) for s in taken]} exist: give a fresh --out")
    env, rows = child_env(), []
    for i, name in enumerate(names):
        workdir = os.path.join(out_dir, name)
        command = [sys.executable, "-m", "experiments.train", "--config", f"{config_file}:{name}", "--workdir",
                   workdir, "--config.checkpoint.export_hf=False"]
        if args.model:
            command.append(f"--config.model.path={args.model}")
        if args.steps:
            command += [f"--config.total_steps={args.steps}", f"--config.eval.every={args.steps}"]
        if args.eval_examples:
            command += [f"--config.eval.num_examples={args.eval_examples}"]
        command += [f"--config.{kv}" for kv in args.set]
        print(f"[reasoning_sweep {i + 1}/{len(names)}] {' '.join(command)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, env=env)
        rows.append(row(name, known[name], _read_jsonl(os.path.join(workdir, "metrics.jsonl")),
                        time.perf_counter() - start))
        print(table(rows), file=sys.stderr, flush=True)
    line = {"benchmark": "reasoning_sweep", "time": results.now(), "commit": results.git_commit(),
            "machine": machine.describe(), "config": os.path.relpath(config_file, ROOT), "steps": args.steps or None,
            "rows": rows}
    return results.emit(line, args.results)


if __name__ == "__main__":
    main()
