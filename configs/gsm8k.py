"""GSM8K (Cobbe et al. 2021) with a reasoning format: Qwen2.5-0.5B- or 1.5B-Instruct, or Gemma 3 1B-it.

    python -m experiments.train --config configs/gsm8k.py --workdir runs/gsm8k-0.5b          # Qwen2.5-0.5B
    python -m experiments.train --config configs/gsm8k.py:1.5b --workdir runs/gsm8k-1.5b     # Qwen2.5-1.5B
    python -m experiments.train --config configs/gsm8k.py:gemma3-1b --workdir runs/gsm8k-g3  # Gemma 3 1B-it
    python -m experiments.train --config configs/gsm8k.py:cpu --workdir runs/gsm8k-cpu     # offline smoke run

Data: the hub's openai/gsm8k (train split for training, test split for the held-out eval), or local jsonl/parquet
files via task.train_file / task.test_file. The prompt asks for <think> ... </think> <answer> ... </answer>, prefilled
like the Countdown tutorial; rewards `format` (weight 0.5) + `gsm8k` (the answered number equals the reference after
'####', weight 1). G = 8 completions of up to 512 tokens, 16 prompts per step, lr 1e-6 constant after 10 warmup
steps, beta 0.04 (DeepSeekMath), 500 steps; held-out accuracy (greedy) and pass@4 (8 samples) on 500 test problems
every 50 steps. Expected wall time: not measured (no accelerator in this project's CI); the rollouts dominate.
`gemma3-1b` is google/gemma-3-1b-it (a gated model: accept its licence on the hub and log in first): the same
recipe; its chat template has no system turn (transformers folds the system prompt into the first user turn), it
stops on <eos> or <end_of_turn> (both in its generation_config.json), and its 262k vocabulary makes the head the
largest matmul, so the trainer's log-probs are chunked over positions as for every model.
`cpu` is a 2-step smoke run of SmolLM2-135M on the test suite's small GSM8K-format files (offline, a few minutes on
2 CPU cores).
"""

from __future__ import annotations

from grpo_jax import config as config_lib

ARGS = ("", "0.5b", "1.5b", "gemma3-1b", "cpu")
MODELS = {"": "Qwen/Qwen2.5-0.5B-Instruct", "0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
          "1.5b": "Qwen/Qwen2.5-1.5B-Instruct", "gemma3-1b": "google/gemma-3-1b-it", "cpu": "smollm2-135m-instruct"}


def get_config(arg: str | None = None):
    arg = arg or ""
    if arg not in ARGS:
        raise ValueError(f"configs/gsm8k.py: unknown arg {arg!r}; valid: {ARGS}")
    c = config_lib.base_config()
    c.seed = 0
    c.total_steps = 500

    c.model.path = MODELS[arg]
    c.model.dtype = c.model.compute_dtype = "bfloat16"
    c.model.remat = True

    c.task.name = "gsm8k"
    c.task.source = "openai/gsm8k"
    c.task.train_file = ""         # '' = the hub's train split; or a local jsonl/parquet (columns question, answer)
    c.task.test_file = ""
    c.task.eval_size = 500
    c.task.split_seed = 0
    c.rewards = {"format": 0.5, "gsm8k": 1.0}

    c.rollout.prompts_per_step = 16
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 512
    c.rollout.temperature = 1.0

    c.loss.kl_beta = 0.04
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 10
    c.optim.micro_batch_size = 32

    c.eval.every = 50
    c.eval.num_examples = 0        # the whole eval split (task.eval_size problems)
    c.eval.batch_size = 64
    c.eval.pass_k = 4
    c.eval.num_samples = 8

    c.checkpoint.every = 50
    c.checkpoint.keep = 3

    if arg == "cpu":  # offline: the small GSM8K-format files of the test suite stand in for the hub
        config_lib.smoke_test(c)
        c.task.train_file = "tests/fixtures/gsm8k_train.jsonl"
        c.task.test_file = "tests/fixtures/gsm8k_test.jsonl"
        c.task.eval_size = 4
        c.eval.num_examples = 0
    return c
