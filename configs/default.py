"""The offline CPU demo: SmolLM2-135M-Instruct (embedded GGUF) learns arithmetic with GRPO on a laptop.

    make demo                     # = python -m experiments.demo (trains this config into ./runs/demo)
    python -m experiments.train --config configs/default.py --workdir runs/demo

Measured (2026-11-26, commit 505bc9d, fresh clone, 2-core AMD EPYC VM, 24 GiB, no GPU, no network):
`time make demo` = 8m53s in all (venv + installs ~1.2 min, load + compile ~0.5 min, 30 steps at ~13 s each,
two held-out evals); held-out greedy accuracy on 200 problems 57.5% (step 0) -> 79.0% (step 30); training reward
0.11 -> 0.94 (sampled at temperature 1). Two runs here gave identical numbers (CPU runs are deterministic; another
CPU model may round differently).
Re-measured 2026-12-02 (commit 4ad8dc8's code, packed train step, same VM type): `python -m experiments.train
--config configs/default.py --workdir runs/demo` 9m41s, 57.5% -> 77.5%.
Re-measured 2026-12-02 with optim.skip_zero_advantage (groups whose 8 rewards are all equal are not computed),
same command, 2-core AMD EPYC, one after the other: 9m04s, 57.5% -> 79.0%, against 9m45s, 57.5% -> 79.0% for
0764f65 (before the packed train step); train phase 347 s vs 392 s over the 30 steps.
`--config configs/default.py:tiny` is a 2-step smoke version (a few prompts, 8 held-out problems).
"""

from __future__ import annotations

from grpo_jax import config as config_lib

ARGS = ("", "tiny")


def get_config(arg: str | None = None):
    arg = arg or ""
    if arg not in ARGS:
        raise ValueError(f"configs/default.py: unknown arg {arg!r}; valid: {ARGS}")
    c = config_lib.base_config()
    c.seed = 0
    c.total_steps = 30

    c.model.path = "smollm2-135m-instruct"
    c.model.dtype = c.model.compute_dtype = "float32"

    # 1-digit a OP b, OP in + - * /: 332 problems, 200 held out. The untrained model answers ~58% of them (greedy):
    # it rambles ("To solve this problem, you need to multiply 8 by 3."), says x * 0 = x, drops minus signs.
    c.task.name = "arithmetic"
    c.task.operators = ("+", "-", "*", "/")
    c.task.digits = 1
    c.task.num_operands = 2
    c.task.eval_size = 200
    c.task.split_seed = 0
    c.rewards = {"arithmetic": 1.0}

    c.rollout.prompts_per_step = 8
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 16
    c.rollout.temperature = 1.0

    c.loss.kl_beta = 0.0                # no reference pass: a quarter less compute per step
    c.optim.lr = 2e-5
    c.optim.schedule = "cosine"         # decays to 0 at the last step: a stable final policy
    c.optim.warmup_steps = 0
    c.optim.micro_batch_size = 32       # two micro-batches of 4 prompt groups: half the activation memory
    c.optim.skip_zero_advantage = True  # groups whose 8 rewards are equal carry no gradient: not computed

    c.eval.every = c.total_steps        # held-out accuracy at the start and at the end
    c.eval.num_examples = 0             # the whole eval split (task.eval_size problems)
    c.eval.batch_size = 100
    c.eval.pass_k = 0

    c.checkpoint.every = 10
    c.checkpoint.keep = 1

    if arg == "tiny":
        config_lib.smoke_test(c, max_new_tokens=8)
        c.rollout.group_size = 2
    return c
