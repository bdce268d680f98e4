"""The benchmark harness of grpo_jax: speed, memory and learning curves beside transformers and TRL.

    pip install -e ".[bench]"        # torch (CPU), accelerate, trl: the peers the benchmarks compare against
    python -m benchmarks             # the subcommands; `python -m benchmarks <name> --help` for each

Run from a source checkout (the harness is not part of the installed wheel; grpo_jax never imports it). Every
benchmark drives grpo_jax through its public API (`runner.Experiment.step`, `models`, `sampling`, `train_step`;
the one exception is sampler_profile, which traces the sampler's compiled program), prints ONE JSON line and
appends it to benchmarks/results.jsonl. Each roofline is the FLOPs of `benchmarks.flops` (the one FLOP model) over
the rate of `benchmarks.machine.matmul_rate` (the one matmul-rate probe).
"""

from __future__ import annotations

import os as _os

ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))  # the checkout the harness runs from


def child_env(env: dict | None = None) -> dict:
    """The environment of a benchmark's subprocess: the checkout first on PYTHONPATH (so `-m benchmarks ...` and
    `-m experiments.train` resolve to this checkout from any working directory), JAX on CPU unless set."""
    out = dict(_os.environ if env is None else env)
    out.setdefault("JAX_PLATFORMS", "cpu")
    out["PYTHONPATH"] = ROOT + _os.pathsep + out.get("PYTHONPATH", "")
    return out
