"""The offline CPU demo: SmolLM2-135M-Instruct (embedded GGUF) learns arithmetic with GRPO on a laptop.

    make demo                     # = python -m experiments.demo (trains this config into ./runs/demo)
    python -m experiments.train --config configs/default.py --workdir runs/demo

About 6 minutes on a 2-core Intel Xeon VM (30 steps and two held-out evals of 200 problems; `make demo` adds
~1.5 min of installs); the measured accuracies and wall times, with their commits: README and docs/performance.md.
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
