"""The offline CPU demo: reinforcement learning teaches SmolLM2-135M-Instruct (embedded GGUF) to use a calculator.

    make demo                     # = python -m experiments.demo (trains this config into ./runs/demo)
    python -m experiments.train --config configs/default.py --workdir runs/demo
    python -m experiments.train --config configs/default.py:one_digit --workdir runs/one-digit   # the former demo

Problems of three 2-digit operands joined by + - * ("What is 27 * 37 - 9?"; the model answers ~3% of them alone).
A system message says that a calculator exists and how to call it (`<calc>expression</calc>`, the result comes back
as `<result>...</result>`), with no worked example. The episode is multi-turn through the 'calculator'
environment: the model's turn ends at `</calc>`, the result comes back as a user turn, and the model answers. The
reward is the final answer alone: the model's own last number (or its <answer> block) must equal the value; the
tool's result never counts as the answer, and tool use is never rewarded.

The assistant's turn starts with '<' on every held-out problem: the model itself chooses `<calc>` (the tool) or
`<answer>` (answering alone). Untrained, it calls the calculator on 1% of them (greedy) and answers none right.
Training prompts take turns: half start with '<calc>' (a hint: the call is opened for the model), half with '<'
(`task.train_prefills`); from the hinted half GRPO learns what to put in the call and how to answer from its
result, and the unhinted half then learns to open the call itself. This is configs/calculator.py:open_tag_hinted
(its docstring has the probes of every prompt tried) in 15 steps, evaluated at the start and the end on the 200
held-out problems (greedy). The measured accuracies, wall times and seeds: README and docs/performance.md.

`:tiny` is a 2-step smoke version (a few prompts, 8 held-out problems). `:one_digit` is the former demo (one-digit
a OP b, single-turn, 57.5% -> 77.5% in 30 steps; the base of configs/ablations/), `:one_digit_tiny` its smoke
version.
"""

from __future__ import annotations

from grpo_jax import config as config_lib

ARGS = ("", "tiny", "one_digit", "one_digit_tiny")


def get_config(arg: str | None = None):
    arg = arg or ""
    if arg not in ARGS:
        raise ValueError(f"configs/default.py: unknown arg {arg!r}; valid: {ARGS}")
    if arg.startswith("one_digit"):
        return one_digit(arg == "one_digit_tiny")
    from configs import calculator  # the demo is one of the calculator experiment's settings

    c = calculator.get_config("open_tag_hinted")
    c.total_steps = 15
    c.eval.every = c.total_steps       # held-out accuracy at the start and at the end
    if arg == "tiny":
        config_lib.smoke_test(c, max_new_tokens=32)
        c.rollout.group_size = 2
    return c


def one_digit(tiny: bool = False):
    """SmolLM2-135M-Instruct learns one-digit arithmetic, single-turn: 1-digit a OP b, OP in + - * /: 332 problems,
    200 held out. The untrained model answers ~58% of them (greedy): it rambles ("To solve this problem, you need to
    multiply 8 by 3."), says x * 0 = x, drops minus signs. About 6 minutes on a 2-core Intel Xeon VM."""
    c = config_lib.base_config()
    c.seed = 0
    c.total_steps = 30

    c.model.path = "smollm2-135m-instruct"
    c.model.dtype = c.model.compute_dtype = "float32"

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

    if tiny:
        config_lib.smoke_test(c, max_new_tokens=8)
        c.rollout.group_size = 2
    return c
