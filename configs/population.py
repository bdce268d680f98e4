"""Evolutionary hyperparameter search on the CPU demo task: K = 4 LoRA members over one frozen SmolLM2-135M-Instruct,
learning rates spread over a decade, trained side by side in one program and selected by held-out accuracy.

    python -m experiments.train --config configs/population.py --workdir runs/population
    python -m benchmarks population        # this run beside each of the four learning rates trained alone

The task is `make demo`'s (one-digit a OP b, 200 held-out problems); each step every member samples 8 completions of
the SAME 4 prompts in one decode loop (the base's matmuls over all 4 x 32 rows, each member's adapter on its own
rows) and one jitted program updates all four with their own learning rates. Every `population.evolve_every` steps
the members are scored on the same first `population.fitness_examples` held-out problems (greedy, the same key),
tournament selection keeps the elite and refills the rest, and a mutation moves a learning rate or a sampling
temperature. DIR/population.jsonl is the lineage; the elite is exported to DIR/export at the end.

About 26 minutes on a 2-core AMD EPYC VM with the members' updates vmapped (24 steps, every member's eval of the
200 held-out problems at the start and the end, fitness on 64 at steps 8, 16 and 24); the measured accuracies
beside the single learning rates, with their commit and machine: docs/performance.md (raw lines in
benchmarks/results.jsonl).
Args (comma-separated): `tiny`, a 2-step smoke version (2 members, 8 held-out problems); `single=k`, the same
experiment with the population off and member k's starting hyperparameters (its learning rate): the single runs the
benchmark compares with.
"""

from __future__ import annotations

from grpo_jax import config as config_lib
from grpo_jax import population

ARGS = ("", "tiny", "single=K", "tiny,single=K")


def get_config(arg: str | None = None):
    parts = [p for p in (arg or "").split(",") if p]
    tiny = "tiny" in parts
    singles = [p for p in parts if p.startswith("single=")]
    if len(parts) != tiny + len(singles) or len(singles) > 1 or parts.count("tiny") > 1:
        raise ValueError(f"configs/population.py: unknown arg {arg!r}; valid: {ARGS}")
    c = _population(tiny)
    if singles:
        k = singles[0].split("=", 1)[1]
        if not k.isdigit() or int(k) >= int(c.population.size):
            raise ValueError(f"configs/population.py: {singles[0]!r} needs a member index 0..{c.population.size - 1}")
        c = population.with_hyperparameters(c, population.initial_hyperparameters(c)[int(k)])
        c.population = population.population_config()  # the population off: one policy
    return c


def _population(tiny: bool):
    c = config_lib.base_config()
    c.seed = 0
    c.total_steps = 24

    c.model.path = "smollm2-135m-instruct"
    c.model.dtype = c.model.compute_dtype = "float32"
    c.model.lora_rank = 16              # LoRA members: one frozen base, four adapters

    c.task.name = "arithmetic"          # make demo's task: 1-digit a OP b, 200 held-out problems
    c.task.operators = ("+", "-", "*", "/")
    c.task.digits = 1
    c.task.num_operands = 2
    c.task.eval_size = 200
    c.task.split_seed = 0
    c.rewards = {"arithmetic": 1.0}

    c.rollout.prompts_per_step = 4
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 16
    c.rollout.temperature = 1.0

    c.loss.kl_beta = 0.0                # no reference pass
    c.optim.lr = 3e-4                   # the members' lr comes from the spread below
    c.optim.schedule = "constant"       # a member's lr is what evolution selects and mutates
    c.optim.warmup_steps = 0

    c.population.size = 4
    c.population.init = "spread"
    c.population.spread = ("lr",)
    c.population.ranges.lr = (1e-4, 1e-3)   # a decade: 1e-4, 2.15e-4, 4.64e-4, 1e-3
    c.population.mutate = ("lr", "temperature")
    c.population.evolve_every = 8
    c.population.fitness = "eval/accuracy"
    c.population.fitness_examples = 64
    c.population.selection = "tournament"
    c.population.tournament_size = 2

    c.eval.every = c.total_steps        # every member's held-out accuracy at the start and the end
    c.eval.num_examples = 0             # the whole eval split (task.eval_size problems)
    c.eval.batch_size = 100
    c.eval.pass_k = 0

    c.checkpoint.every = 8
    c.checkpoint.keep = 1

    if tiny:
        config_lib.smoke_test(c, max_new_tokens=8)
        c.population.size = 2
        c.population.evolve_every = 1
        c.population.fitness_examples = 8
        c.rollout.group_size = 2
    return c
