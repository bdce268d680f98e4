"""Learning curves of a workdir as PNG files (matplotlib, Agg backend: no display needed).

    paths = plot_workdir("runs/demo")     # -> runs/demo/plots/{reward,eval_accuracy,kl,completion_length,summary}.png

Each panel plots one metric of DIR/metrics.jsonl against `step`; a metric the run did not log (e.g. kl with
kl_beta = 0) is left out.
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
    "completion_length": ("Completion length", "tokens", ("completions/mean_length", "eval/mean_length")),
}


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _draw(ax, rows, title, ylabel, keys) -> bool:
    drawn = False
    for key in keys:
        steps, values = _series(rows, key)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
            drawn = True
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn and len(keys) > 1:
        ax.legend(fontsize=8)
    return drawn


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
    for name, (title, ylabel, keys) in PANELS.items():
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if _draw(ax, rows, title, ylabel, keys):
            fig.tight_layout()
            path = os.path.join(out_dir, f"{name}.png")
            fig.savefig(path, dpi=110)
            paths.append(path)
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
