"""`make demo`: GRPO on a laptop CPU, offline. Trains configs/default.py into ./runs/demo and prints the held-out
accuracy before and after, and where the learning curves are.

    python -m experiments.demo                   # = make demo
    python -m experiments.demo --workdir runs/demo2 --config.seed=1     # any config override works here too

Running it again resumes (or, when the run is complete, only prints its results). See configs/default.py for the
experiment and its expected wall time.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app

from experiments import train  # defines --config, --workdir and the multi-host flags

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(HERE, "configs", "default.py")
DEFAULT_WORKDIR = "runs/demo"


def with_defaults(argv: list[str]) -> list[str]:
    """argv with `--config configs/default.py` and `--workdir runs/demo` first unless given (train's flags have no
    defaults; --config.key=value overrides must come after the config file, so the defaults go in front)."""
    def given(name):
        return any(a in (f"--{name}", f"-{name}") or a.startswith((f"--{name}=", f"-{name}=")) for a in argv[1:])

    front = [] if given("config") else [f"--config={DEFAULT_CONFIG}"]
    front += [] if given("workdir") else [f"--workdir={DEFAULT_WORKDIR}"]
    return argv[:1] + front + argv[1:]


def _eval_rows(workdir: str) -> list[dict]:
    from grpo_jax.metrics import read_metrics

    return [r for r in read_metrics(workdir) if "eval/accuracy" in r]


def main(argv):
    if len(argv) > 1:
        train.fail(f"unexpected arguments {argv[1:]}")
    config = train._CONFIG.value
    if train._QUIET:
        from absl import logging
        logging.set_verbosity(logging.WARNING)
    task = {k: v for k, v in config.task.items() if k not in ("name", "system")}  # the system message: the config
    environment = f", environment {config.environment.name}" if config.environment.name else ""
    print(f"grpo_jax demo: GRPO on {config.model.path}, task {config.task.name} ({task}{environment}), "
          f"{config.total_steps} steps of {config.rollout.prompts_per_step} prompts x {config.rollout.group_size} "
          f"completions; workdir {train._WORKDIR.value}", flush=True)
    start = time.time()
    try:
        from grpo_jax import runner

        result = runner.run(config, train._WORKDIR.value)
    except (ValueError, OSError) as e:
        if train._traceback_wanted():
            raise
        train.fail(str(e) or type(e).__name__)
    minutes = (time.time() - start) / 60
    if result.status != "completed":
        print(f"preempted after step {result.step}; run `make demo` again to resume", flush=True)
        return
    evals = _eval_rows(result.workdir)
    if len(evals) >= 2:
        before, after = evals[0], evals[-1]
        n = after.get("eval/num_examples", "?")
        print(f"held-out accuracy (greedy, {n} problems): before {100 * before['eval/accuracy']:.1f}% "
              f"(step {before['step']}) -> after {100 * after['eval/accuracy']:.1f}% (step {after['step']})",
              flush=True)
    print(f"wall time of this invocation: {minutes:.1f} min", flush=True)
    summary = [p for p in result.plots if p.endswith("summary.png")]
    if summary:
        print(f"learning curves: {summary[0]} (and the other PNGs in {os.path.dirname(summary[0])})", flush=True)
    print(f"metrics: {os.path.join(result.workdir, 'metrics.jsonl')}; TensorBoard: "
          f"tensorboard --logdir {os.path.join(result.workdir, 'tensorboard')}", flush=True)


if __name__ == "__main__":
    app.run(main, argv=with_defaults(sys.argv), flags_parser=train.parse_flags)
