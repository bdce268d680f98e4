"""Benchmarks, one subcommand each; every one prints ONE JSON line and appends it to benchmarks/results.jsonl.

    python -m benchmarks sampler      [--model smollm2-135m-instruct --prompts 8 --group 8 --new-tokens 64]
    python -m benchmarks train_step   [--lora-rank 0]
    python -m benchmarks grpo_step    [--vs-trl]
    python -m benchmarks learning
    python -m benchmarks population        [--config-arg tiny --model M --out DIR]
    python -m benchmarks reasoning_sweep   [--settings a,b --steps 20 --eval-examples 100 --out DIR]
    python -m benchmarks ragged_sampler    [--shape qwen2.5-0.5b --dtype bfloat16]  (for the GPU)
    python -m benchmarks sampler_profile   (a diagnostic: the decode loop's time per XLA operation)
    python -m benchmarks multiturn         [--model smollm2-135m-instruct --prompts 8 --group 8 --max-turns 3]
    python -m benchmarks calculator_probe  [--settings a,b --problems 16 --group 8 --eval-problems 32]
    python -m benchmarks <name> --help

Each subcommand is a module of this package with `main(argv) -> dict` (learning: benchmarks/learning_curves.py).
Needs the bench extra: pip install -e ".[bench]".
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, what it measures)
SUBCOMMANDS = {
    "sampler": ("sampler", "grpo_jax's group sampler vs transformers' generate: tokens/s, compile time, roofline"),
    "ragged_sampler": ("ragged_sampler", "the decode loop's compaction and refill vs the plain loop on ragged rows"),
    "sampler_profile": ("sampler_profile", "where the sampler's decode step spends its time, per XLA operation"),
    "multiturn": ("multiturn", "calculator episodes with each row's cache kept across turns vs re-prefilled"),
    "train_step": ("train_step", "one jitted GRPO train step: time, peak memory, roofline"),
    "grpo_step": ("grpo_step", "one full GRPO step (sample, reward, update), grpo_jax beside TRL's GRPOTrainer"),
    "learning": ("learning_curves", "learning curves of grpo_jax and TRL on the same task and seeds"),
    "population": ("population", "a K-member population run beside its members' learning rates trained alone"),
    "reasoning_sweep": ("reasoning_sweep", "configs/reasoning.py's formulations of multi-step arithmetic, one row each"),
    "calculator_probe": ("calculator_probe", "the untrained model on each setting of configs/calculator.py"),
}


def usage() -> str:
    lines = [__doc__.strip(), "", "subcommands:"]
    lines += [f"  {name:<15} {what}" for name, (_, what) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv=None, prog: str = "python -m benchmarks"):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return None
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"{prog}: unknown subcommand {name!r}; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    return importlib.import_module(f"benchmarks.{SUBCOMMANDS[name][0]}").main(rest)


if __name__ == "__main__":
    main()
