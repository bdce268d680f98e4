"""Benchmarks, one subcommand each; every one prints ONE JSON line and appends it to benchmarks/results.jsonl.

    python -m experiments.benchmark sampler      [--model smollm2-135m-instruct --prompts 8 --group 8 --new-tokens 64]
    python -m experiments.benchmark train_step   [--lora-rank 0]
    python -m experiments.benchmark grpo_step    [--vs-trl]
    python -m experiments.benchmark learning
    python -m experiments.benchmark sampler_profile   (a diagnostic: the decode loop's time per XLA operation)
    python -m experiments.benchmark <name> --help

Each subcommand lives in experiments/bench_<name>.py as `main(argv) -> dict`; shared helpers (machine, threads,
the matmul roofline, the results file) are in experiments/bench_common.py.
"""

from __future__ import annotations

import sys


def sampler(argv):
    """grpo_jax's group sampler vs transformers' generate: tokens/s, compile time, roofline."""
    from experiments import bench_sampler
    return bench_sampler.main(argv)


def sampler_profile(argv):
    """Where the sampler's decode step spends its time, per XLA operation (jax.profiler trace)."""
    from experiments import bench_sampler_profile
    return bench_sampler_profile.main(argv)


def train_step(argv):
    """One jitted GRPO train step: time, peak memory, roofline."""
    from experiments import bench_train_step
    return bench_train_step.main(argv)


def grpo_step(argv):
    """One full GRPO step (sample, reward, update), grpo_jax beside TRL's GRPOTrainer."""
    from experiments import bench_grpo_step
    return bench_grpo_step.main(argv)


def learning(argv):
    """Learning curves of grpo_jax and TRL on the same task and seeds."""
    from experiments import bench_learning
    return bench_learning.main(argv)


SUBCOMMANDS = {"sampler": sampler, "sampler_profile": sampler_profile, "train_step": train_step,
               "grpo_step": grpo_step, "learning": learning}


def usage() -> str:
    lines = [__doc__.strip(), "", "subcommands:"]
    lines += [f"  {name:<15} {fn.__doc__}" for name, fn in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return None
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"benchmark: unknown subcommand {name!r}; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    return SUBCOMMANDS[name](rest)


if __name__ == "__main__":
    main()
