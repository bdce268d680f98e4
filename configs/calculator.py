"""Multi-turn: SmolLM2-135M-Instruct (embedded GGUF) answers arithmetic with a calculator tool.

    python -m experiments.train --config configs/calculator.py --workdir runs/calculator
    python -m experiments.train --config configs/calculator.py:tiny --workdir runs/calculator-tiny   # smoke

Problems of three 2-digit operands joined by + - * (arithmetic task, sampled, 200 held out); a system message
tells the model that a calculator exists and how to call it: `<calc>12 * (3 + 4)</calc>` ends the model's turn
(environment 'calculator', call_format 'tag'), the value comes back inline as `<result>84</result>`, and the
model goes on, up to environment.max_turns turns within rollout.max_new_tokens tokens for the whole episode. The
reward is the final answer alone (`arithmetic`, read from the <answer> tags of the whole episode); the tool calls
are logged (env/tool_calls, env/parse_rate, eval/tool_call_rate, ...), not rewarded. A starting point, not tuned.
`:tiny` shrinks it to 2 steps of 2 prompts x 2 episodes of 32 tokens and 8 held-out problems.
"""

from __future__ import annotations

from grpo_jax import config as config_lib

ARGS = ("", "tiny")
SYSTEM = ("You can use a calculator. To compute an expression, write it between <calc> and </calc>, for example "
          "<calc>12 * (3 + 4)</calc>, and stop; the result comes back as <result>84</result>. Then go on, and "
          "give the final answer in <answer> </answer> tags.")


def get_config(arg: str | None = None):
    arg = arg or ""
    if arg not in ARGS:
        raise ValueError(f"configs/calculator.py: unknown arg {arg!r}; valid: {ARGS}")
    c = config_lib.base_config()
    c.seed = 0
    c.total_steps = 30

    c.model.path = "smollm2-135m-instruct"
    c.model.dtype = c.model.compute_dtype = "float32"

    c.task.name = "arithmetic"
    c.task.operators = ("+", "-", "*")
    c.task.digits = 2
    c.task.num_operands = 3
    c.task.eval_size = 200
    c.task.split_seed = 0
    c.task.system = SYSTEM
    c.task.prefill = ""                # the start of the assistant's turn ('' = none); the calculator sees it
    c.rewards = {"arithmetic": 1.0}
    # The tool's result is not the model's answer: only an <answer> block counts (require_answer), or only what the
    # model wrote itself (skip_observations cuts the observations out before the last number is read).
    c.reward_options = {"arithmetic": {"require_answer": True, "skip_observations": False}}

    c.environment.name = "calculator"
    c.environment.call_format = "tag"
    c.environment.max_turns = 4
    c.environment.max_observation_tokens = 32

    c.rollout.prompts_per_step = 8
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 128     # the whole episode: model turns and results
    c.rollout.temperature = 1.0

    c.loss.kl_beta = 0.0
    c.optim.lr = 2e-5
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 0

    c.eval.every = c.total_steps       # held-out accuracy at the start and at the end
    c.eval.num_examples = 0            # the whole eval split
    c.eval.batch_size = 50
    c.eval.pass_k = 0

    c.checkpoint.every = 10
    c.checkpoint.keep = 1

    if arg == "tiny":
        config_lib.smoke_test(c, max_new_tokens=32)
        c.rollout.group_size = 2
    return c
