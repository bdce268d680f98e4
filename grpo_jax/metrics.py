"""Metrics writers: DIR/metrics.jsonl (one JSON object per row), TensorBoard events, and wandb when asked.

Rows carry `step` and TRL's metric names (docs/design.md, "Contracts"): reward, reward_std, rewards/<name>/mean,
frac_reward_zero_std, completions/mean_length, completions/clipped_ratio, kl, entropy, clip_ratio/region_mean,
loss, grad_norm, learning_rate, step_time, and every other metric the train step returns (a plug-in's own under
its name); eval rows carry eval/accuracy, eval/pass@k, eval/mean_reward and the task's own eval metrics (e.g.
eval/format_rate for the R1-format tasks).

DIR/eval_samples.jsonl holds each eval's first logging.num_samples held-out problems with their greedy completions
in full (the log and TensorBoard show them clipped), for reading before / after (python -m experiments.samples DIR).

Resuming from the checkpoint of step k keeps the rows (of both files) with step <= k and drops the later ones (they were written by
the interrupted run after its last checkpoint and are computed again), so a resumed run's file equals an
uninterrupted run's, except for the wall-clock fields in TIMING_KEYS.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any, Iterable, Optional

import numpy as np

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "eval_samples.jsonl"  # each eval's sample completions in full: {step, [member,] prompt, completion, ...}
# Wall-clock measurements: the only fields that differ between a resumed run and an uninterrupted one.
TIMING_KEYS = ("step_time", "sampler/tokens_per_s", "sampler/time", "train/time", "eval/time", "env/time", "time")


def _scalar(value: Any):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    value = np.asarray(value)
    if value.size != 1:
        raise ValueError(f"metric values must be scalars, got shape {value.shape}")
    value = value.item()
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics.jsonl file (or of DIR/metrics.jsonl when given a workdir)."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def without_timing(rows: Iterable[dict]) -> list[dict]:
    """Rows without the wall-clock fields, for comparing two runs."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def _truncate(path: str, keep_through: Optional[int]) -> None:
    """Keep the rows with step <= keep_through (none when keep_through is None)."""
    if not os.path.exists(path):
        return
    rows = [] if keep_through is None else [r for r in read_metrics(path) if r.get("step", 0) <= keep_through]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


class MetricsWriter:
    """Writes rows to every enabled sink. A disabled writer (processes other than 0) accepts rows and drops them.

    resume_step: the step of the checkpoint the run resumes from (rows after it are dropped), or None for a run
    starting from scratch (an old file from a run killed before its first checkpoint is cleared).
    """

    def __init__(self, workdir: str, config=None, *, resume_step: Optional[int] = None, enabled: bool = True,
                 tensorboard: bool = True, wandb_project: str = ""):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self.samples_path = os.path.join(workdir, SAMPLES_FILE)
        self._tb = self._wandb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        _truncate(self.path, resume_step)
        _truncate(self.samples_path, resume_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step hides events a killed run logged after the checkpoint we resume from.
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)
        if wandb_project:
            self._wandb = _start_wandb(wandb_project, workdir, config)

    def write(self, row: dict) -> dict:
        """Write one row (must hold `step`); returns it with python scalars."""
        if "step" not in row:
            raise ValueError(f"a metrics row needs 'step', got keys {sorted(row)}")
        row = {k: _scalar(v) for k, v in row.items()}
        if not self.enabled:
            return row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        step = row["step"]
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        return row

    def write_samples(self, step: int, samples: Iterable[dict], tags: Optional[dict] = None) -> None:
        """One DIR/eval_samples.jsonl row per sample completion (prompt, completion, reward, correct), with `step`
        and `tags` (a population member's {'member': k})."""
        if not self.enabled:
            return
        with open(self.samples_path, "a") as f:
            for sample in samples:
                f.write(json.dumps({"step": int(step), **(tags or {}), **sample}) + "\n")

    def write_text(self, tag: str, text: str, step: int) -> None:
        """A block of text (the sample-completion table) to TensorBoard / wandb."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.add_text(tag, "```\n" + text + "\n```", step)
        if self._wandb is not None:
            self._wandb.log({tag: self._wandb_module.Html("<pre>" + _html_escape(text) + "</pre>")}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    @property
    def _wandb_module(self):
        import wandb
        return wandb


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _start_wandb(project: str, workdir: str, config):
    try:
        import wandb
    except ImportError:
        raise ValueError(f"logging.wandb = {project!r} but wandb is not installed; `pip install wandb` "
                         "(or set --config.logging.wandb='')") from None
    run_id_path = os.path.join(workdir, "wandb_run_id")
    run_id = wandb.util.generate_id()
    if os.path.exists(run_id_path):  # resume the same wandb run
        with open(run_id_path) as f:
            run_id = f.read().strip() or run_id
    with open(run_id_path, "w") as f:
        f.write(run_id)
    return wandb.init(project=project, id=run_id, resume="allow", dir=workdir,
                      config=None if config is None else config.to_dict(), name=os.path.basename(workdir.rstrip("/")))
