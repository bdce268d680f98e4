"""Countdown with a reasoning format: the seed tutorial's experiment (Phil Schmid's "mini-R1", after TinyZero).

    python -m experiments.train --config configs/countdown.py --workdir runs/countdown-3b          # Qwen2.5-3B
    python -m experiments.train --config configs/countdown.py:0.5b --workdir runs/countdown-0.5b   # Qwen2.5-0.5B
    python -m experiments.train --config configs/countdown.py:cpu --workdir runs/countdown-cpu     # laptop smoke

Model Qwen/Qwen2.5-3B-Instruct (downloaded from the hub) in bfloat16, full finetuning; Countdown problems with
3-4 numbers (generated; `--config.task.source=Jiayi-Pan/Countdown-Tasks-3to4` reads the real data set), the
tutorial's prompt with the assistant turn prefilled by "Let me solve this step by step.\\n<think>"; rewards
`format` (<think>...</think><answer>...</answer>) + `countdown` (the equation uses each number once and hits the
target), weight 1 each; G = 8 completions of up to 1024 tokens; lr 5e-7 cosine with 3% warmup, beta 0.001, 450
steps; held-out accuracy (greedy) and pass@4 (8 samples) on 200 problems every 50 steps.
Hyperparameters from the tutorial (philschmid.de/mini-deepseek-r1: 450 steps, lr 5e-7, beta 0.001, G 8,
max_completion_length 1024), which reports ~6 h on 4x H100 with TRL + vLLM. Not measured with grpo_jax here
(no accelerator in this project's CI); multi-GPU/TPU: `--config.mesh.fsdp=-1 --config.mesh.data=1` shards the
weights (FSDP) instead of replicating them. `cpu` runs SmolLM2-135M for 2 short steps (~2 min on 2 CPU cores).
"""

from __future__ import annotations

from grpo_jax import config as config_lib

ARGS = ("", "3b", "0.5b", "cpu")
MODELS = {"": "Qwen/Qwen2.5-3B-Instruct", "3b": "Qwen/Qwen2.5-3B-Instruct", "0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
          "cpu": "smollm2-135m-instruct"}


def get_config(arg: str | None = None):
    arg = arg or ""
    if arg not in ARGS:
        raise ValueError(f"configs/countdown.py: unknown arg {arg!r}; valid: {ARGS}")
    c = config_lib.base_config()
    c.seed = 42
    c.total_steps = 450

    c.model.path = MODELS[arg]
    c.model.dtype = c.model.compute_dtype = "bfloat16"
    c.model.remat = True

    c.task.name = "countdown"
    c.task.source = ""             # '' = generated problems; or a hub id / local file with columns nums, target
    c.task.eval_size = 200
    c.task.split_seed = 0
    c.rewards = {"format": 1.0, "countdown": 1.0}

    c.rollout.prompts_per_step = 16
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 1024
    c.rollout.temperature = 1.0

    c.loss.kl_beta = 0.001
    c.optim.lr = 5e-7
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 14      # 3% of 450
    c.optim.micro_batch_size = 32  # sequences per gradient-accumulation micro-batch (4 prompt groups)

    c.eval.every = 50
    c.eval.num_examples = 200
    c.eval.batch_size = 64
    c.eval.pass_k = 4
    c.eval.num_samples = 8

    c.checkpoint.every = 50
    c.checkpoint.keep = 3

    if arg == "cpu":
        config_lib.smoke_test(c)
    return c
