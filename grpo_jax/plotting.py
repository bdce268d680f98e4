"""Learning curves of a workdir as PNG files (matplotlib, Agg backend: no display needed).

    paths = plot_workdir("runs/demo")     # -> runs/demo/plots/{reward,eval_accuracy,kl,completion_length,
                                          #    eval_intermediate,eval_tools,tool_calls,summary}.png

Each panel plots one metric of DIR/metrics.jsonl against `step`; a metric the run did not log (e.g. kl with
kl_beta = 0) is left out.

A population run (rows with `member`) draws one line per member in every panel, and adds `fitness.png` (each
member's `population/fitness` at every evolution and at the end) and `hp_<name>.png` for each member
hyperparameter its rows carry (`hp/<name>`, e.g. hp_lr.png: the value each member trained with, step by step, so a
copy or a mutation shows as a jump).
"""

from __future__ import annotations

import os
from typing import Optional

from grpo_jax.metrics import read_metrics

# file name -> (title, y label, metric keys drawn in it)
PANELS = {
    "reward": ("Training reward", "mean reward", ("reward",)),
    "eval_accuracy": ("Held-out accuracy (greedy)", "accuracy", ("eval/accuracy",)),
    "kl": ("KL to the reference", "KL", ("kl",)),
    "completion_length": ("Completion length", "tokens", ("completions/mean_length", "eval/mean_length",
                                                          "eval/mean_length_correct")),
    "eval_intermediate": ("Held-out answers stating an intermediate result", "share",
                          ("eval/intermediate_rate",)),
    # multi-turn runs: the held-out episodes' tool use beside their accuracy, and the training episodes' calls
    "eval_tools": ("Held-out tool use (greedy)", "share / calls per episode",
                   ("eval/accuracy", "eval/tool_call_rate", "eval/calls_mean", "eval/parse_rate",
                    "eval/correct_with_call")),
    "tool_calls": ("Tool calls per step (training)", "calls", ("env/tool_calls",)),
}


# panels drawn only for runs that log this metric (the tool panel repeats eval/accuracy, which every run has)
REQUIRES = {"eval_tools": "eval/tool_call_rate"}

FITNESS_KEY, HP_PREFIX = "population/fitness", "hp/"  # population.experiment's row columns


def _series(rows: list[dict], key: str, member=None) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows
              if key in r and r[key] is not None and r.get("member") == member]
    return [p[0] for p in points], [p[1] for p in points]


def _members(rows: list[dict]) -> list:
    """The population's members in the rows ([None] for a single run)."""
    found = sorted({r["member"] for r in rows if r.get("member") is not None})
    return found or [None]


def _draw(ax, rows, title, ylabel, keys, step_lines: bool = False) -> bool:
    drawn = False
    members = _members(rows)
    for key in keys:
        for member in members:
            steps, values = _series(rows, key, member)
            if not steps:
                continue
            label = key if member is None else (f"member {member}" if len(keys) == 1 else f"{key} (member {member})")
            if step_lines:
                ax.step(steps, values, where="post", label=label)
            else:
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
            drawn = True
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn and (len(keys) > 1 or members != [None]):
        ax.legend(fontsize=8)
    return drawn


def _population_panels(rows: list[dict]) -> dict:
    """fitness and hp_<name> panels of a population run's rows (none for a single run)."""
    if _members(rows) == [None]:
        return {}
    panels = {"fitness": ("Fitness per member", FITNESS_KEY, (FITNESS_KEY,))}
    names = sorted({k for r in rows for k in r if k.startswith(HP_PREFIX)})
    for key in names:
        name = key[len(HP_PREFIX):]
        panels[f"hp_{name}"] = (f"{name} per member", name, (key,))
    return panels


def plot_workdir(workdir: str, out_dir: Optional[str] = None) -> list[str]:
    """Write one PNG per panel plus summary.png (all panels) to `out_dir` (default DIR/plots); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    out_dir = out_dir or os.path.join(workdir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    present = {}
    population_panels = _population_panels(rows)
    for name, (title, ylabel, keys) in {**PANELS, **population_panels}.items():
        if name in REQUIRES and not any(REQUIRES[name] in r for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        train_rows = [r for r in rows if FITNESS_KEY not in r] if name.startswith("hp_") else rows
        if _draw(ax, train_rows, title, ylabel, keys, step_lines=name.startswith("hp_")):
            fig.tight_layout()
            path = os.path.join(out_dir, f"{name}.png")
            fig.savefig(path, dpi=110)
            paths.append(path)
            if name in PANELS or name == "fitness":
                present[name] = (title, ylabel, keys)
        plt.close(fig)
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.5), squeeze=False)
        for ax, (title, ylabel, keys) in zip(axes[0], present.values()):
            _draw(ax, rows, title, ylabel, keys)
        fig.suptitle(os.path.basename(os.path.abspath(workdir)))
        fig.tight_layout()
        path = os.path.join(out_dir, "summary.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
