"""Multi-turn: SmolLM2-135M-Instruct (embedded GGUF) answers arithmetic with a calculator tool.

    python -m experiments.train --config configs/calculator.py --workdir runs/calculator
    python -m experiments.train --config configs/calculator.py:tiny --workdir runs/calculator-tiny   # smoke
    python -m benchmarks reasoning_sweep --config configs/calculator.py --settings SETTING,...  # the sweep (below)

Problems of three 2-digit operands joined by + - * (arithmetic task, sampled, 200 held out; the model answers ~3% of
them alone). A system message says that a calculator exists and how to call it, with no worked example:
`<calc>12 * (3 + 4)</calc>` ends the model's turn (environment 'calculator', call_format 'tag'), the value comes
back as `<result>84</result>`, and the model goes on, up to environment.max_turns turns within
rollout.max_new_tokens tokens for the whole episode. The reward is the final answer alone (`arithmetic`); the
tool's result never counts as the model's answer (reward_options: `skip_observations` reads only what the model
wrote, `require_answer` only its <answer> block). Tool use is logged (env/tool_calls, env/parse_rate,
eval/tool_call_rate, eval/calls_mean, eval/parse_rate, eval/correct_with_call), never rewarded.

SETTINGS are what was tried (config args); '' is DEFAULT, the best. `tiny` is a 2-step smoke version.

Probes: `python -m benchmarks calculator_probe` (2026-12-06, 2-core Intel Xeon, the code of commit ad68bce; its
results.jsonl line names 774bf60, the commit at its end). The untrained model; sampled: the first 16 training
problems x 8 episodes at temperature 1; greedy: 32 held-out problems; "right" = the task's reward with the
setting's options (the model's own last number or <answer>) is 1:

| setting | calls (sampled) | right (sampled) | groups of 8 with a right one | greedy right | greedy calls |
|---|---|---|---|---|---|
| prefill_user (DEFAULT): prefill `<calc>`, result as a user turn | 87.5% | 5.5% | 37.5% | 46.9% | 100.0% |
| words: `27 times 37 minus 9`, prefill `<calc>`, user turn | 89.8% | 3.1% | 18.8% | 46.9% | 100.0% |
| unicode: `27 × 37 − 9`, prefill `<calc>`, user turn | 89.8% | 0.0% | 0.0% | 15.6% | 100.0% |
| one_op: one-operation calculator, prefill `<calc>`, user turn | 90.6% | 0.0% | 0.0% | 0.0% | 100.0% |
| open_tag: prefill `<`, result as a user turn | 2.3% | 0.0% | 0.0% | 0.0% | 3.1% |
| open_tag_hinted: open_tag, half the training prompts prefilled `<calc>` | 44.5% | 0.8% | 6.2% | 0.0% | 3.1% |
| inline_result: prefill `<calc>`, result inline | 87.5% | 0.0% | 0.0% | 0.0% | 100.0% |
| no_prefill: no prefill, result inline | 0.0% | 0.0% | 0.0% | 0.0% | 3.1% |

Only prefill_user (and words, which the model turns into symbols as well) gives GRPO a signal: a right answer in
a good share of the groups. Every setting whose untrained greedy accuracy is below 10% has at most one right
episode in 128 at temperature 1. open_tag_hinted keeps open_tag's held-out prompt and hints half the training
prompts with prefill_user's `<calc>`: its hinted half is where the signal starts. Templated word problems were not
tried.

Trained (held-out greedy accuracy on the 200 problems; `python -m experiments.train --config
configs/calculator.py:SETTING`, 30 steps, stopped after the eval at step 15; one run at a time on the 2-core Intel
Xeon, except prefill_user, whose steps 1-7 overlapped the test suite):

| setting | step 0 | step 15 | episodes calling the tool, step 0 -> 15 | correct answers from a call, step 15 |
|---|---|---|---|---|
| prefill_user | 60.0% | 100.0% | 100% -> 100% | 100% |
| open_tag_hinted | 0.0% | 100.0% | 1% -> 100% | 100% |
| open_tag (with 96 tokens, 100 held-out problems; stopped after step 1: reward 0, 2 calls in 64 episodes) | 0.0% | - | 1% -> - | - |

configs/default.py (`make demo`) is open_tag_hinted in 15 steps; its seeds are in README and docs/performance.md.
"""

from __future__ import annotations

from grpo_jax import config as config_lib

SYSTEM = ("You can use a calculator. To compute an expression, write it between <calc> and </calc>, for example "
          "<calc>12 * (3 + 4)</calc>, and stop; the result comes back as <result>84</result>. Then go on, and "
          "give the final answer in <answer> </answer> tags.")
ONE_OP_SYSTEM = ("You can use a calculator. It computes one operation at a time: write it between <calc> and "
                 "</calc>, for example <calc>12 * 7</calc>, and stop; the result comes back as <result>84</result>. "
                 "Then go on, and give the final answer in <answer> </answer> tags.")

SETTINGS = {
    "prefill_user": "prefill <calc>, the result as a user turn, the model's own last number or <answer> rewarded",
    "words": "prefill_user with operators as words (27 times 37 minus 9)",
    "unicode": "prefill_user with unicode operators (27 × 37 − 9)",
    "one_op": "prefill_user with a one-operation calculator (two calls needed)",
    "open_tag": "prefill '<' (the model picks <calc> or <answer>), the result as a user turn",
    "open_tag_hinted": "open_tag, half the training prompts hinted with the prefill <calc> (held-out: '<')",
    "inline_result": "prefill <calc>, the result inline in the assistant's turn, only <answer> rewarded",
    "no_prefill": "no prefill, the result inline, only <answer> rewarded",
}
DEFAULT = "prefill_user"
ARGS = ("", "tiny", *SETTINGS)


def get_config(arg: str | None = None):
    arg = arg or ""
    if arg not in ARGS:
        raise ValueError(f"configs/calculator.py: unknown arg {arg!r}; valid: {ARGS}")
    setting = DEFAULT if arg in ("", "tiny") else arg
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
    c.task.system = ONE_OP_SYSTEM if setting == "one_op" else SYSTEM
    c.task.prefill = {"open_tag": "<", "open_tag_hinted": "<", "no_prefill": ""}.get(setting, "<calc>")
    c.task.train_prefills = ("<calc>", "<") if setting == "open_tag_hinted" else ()  # training prompts, in turn
    c.task.spelling = setting if setting in ("words", "unicode") else "symbols"
    c.rewards = {"arithmetic": 1.0}
    inline = setting in ("inline_result", "no_prefill")
    c.reward_options = {"arithmetic": {"require_answer": inline, "skip_observations": not inline}}

    c.environment.name = "calculator"
    c.environment.call_format = "tag"
    c.environment.observation_role = "inline" if inline else "user"
    c.environment.max_operations = 1 if setting == "one_op" else 0
    c.environment.max_turns = 4 if setting == "one_op" else 3
    c.environment.max_observation_tokens = 32

    c.rollout.prompts_per_step = 8
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 64      # the whole episode: model turns and results
    c.rollout.temperature = 1.0

    c.loss.kl_beta = 0.0
    c.optim.lr = 3e-5
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 0

    c.eval.every = 15                  # held-out accuracy at the start, halfway and at the end
    c.eval.num_examples = 0            # the whole eval split
    c.eval.batch_size = 50
    c.eval.pass_k = 0

    c.checkpoint.every = 10
    c.checkpoint.keep = 1

    if arg == "tiny":
        config_lib.smoke_test(c, max_new_tokens=32)
        c.rollout.group_size = 2
    return c
