"""Multi-step arithmetic (issue 19): three one-digit operands with + - *, e.g. "4 - 2 * 2", 200 held-out problems.
The untrained SmolLM2-135M-Instruct answers them in one jump ("7 + 8 - 4 = 21") and gets ~3% right (greedy).

    python -m experiments.train --config configs/reasoning.py:SETTING --workdir runs/reasoning
    python -m benchmarks reasoning_sweep --steps 20 --eval-examples 100     # every setting below, one table

SETTINGS are the formulations tried; each is a config arg. Reward: only the final answer (task `arithmetic`,
the last <answer> block or else the last number). `tiny` is a 2-step smoke version of the default setting.
SWEEP RESULTS: see the table below (filled in from `python -m benchmarks reasoning_sweep`).
"""

from __future__ import annotations

from grpo_jax import config_base

# setting -> what it tries (each differs from `plain`, the default recipe of configs/default.py, as _apply says)
SETTINGS = {
    "plain": "configs/default.py's recipe (full FT, lr 2e-5 cosine), answer-only prompt, 64 new tokens",
    "steps_lora": "step-by-step prompt, LoRA r16 lr 3e-4 constant, 48 new tokens",
    "steps_mix": "step-by-step prompt, full FT lr 2e-5 cosine, training mix of 2 and 3 operands, 48 new tokens",
}
DEFAULT = "steps_mix"
ARGS = ("", "tiny", *SETTINGS)


def get_config(arg: str | None = None):
    arg = arg or ""
    if arg not in ARGS:
        raise ValueError(f"configs/reasoning.py: unknown arg {arg!r}; valid: {ARGS}")
    c = config_base.base_config()
    c.seed = 0
    c.total_steps = 30
    c.model.path = "smollm2-135m-instruct"
    c.model.dtype = c.model.compute_dtype = "float32"

    c.task.name = "arithmetic"
    c.task.operators = ("+", "-", "*")
    c.task.digits = 1
    c.task.num_operands = 3
    c.task.eval_size = 200
    c.task.split_seed = 0
    c.task.steps = False                # True: ask for each intermediate result (arithmetic.STEPS_INSTRUCTION)
    c.task.prefill = ""                 # the start of the assistant's turn ('' = none)
    c.task.train_operands = ()          # operand counts of the training problems (a curriculum mix); () = 3
    c.rewards = {"arithmetic": 1.0}

    c.rollout.prompts_per_step = 8
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 64
    c.rollout.temperature = 1.0

    c.loss.kl_beta = 0.0
    c.optim.lr = 2e-5
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 0
    c.optim.micro_batch_size = 32

    c.eval.every = c.total_steps        # held-out accuracy at the start and at the end
    c.eval.num_examples = 0             # all 200
    c.eval.batch_size = 100
    c.eval.pass_k = 0
    c.checkpoint.every = 10
    c.checkpoint.keep = 1
    _apply(c, DEFAULT if arg in ("", "tiny") else arg)
    if arg == "tiny":
        config_base.smoke_test(c, max_new_tokens=8)
        c.rollout.group_size = 2
    return c


def _apply(c, setting: str) -> None:
    if setting == "plain":
        return
    c.task.steps = True
    c.rollout.max_new_tokens = 48
    if setting == "steps_lora":
        c.model.lora_rank = 16
        c.optim.lr = 3e-4
        c.optim.schedule = "constant"
    elif setting == "steps_mix":
        c.task.train_operands = (2, 3)
