"""The `learning` benchmark's experiment: 20 GRPO steps on arithmetic, run identically by grpo_jax and by TRL.

    python -m benchmarks learning                       # both systems, seeds 0-2 (see learning_curves.py)
    python -m experiments.train --config benchmarks/learning_config.py --workdir /tmp/bl --config.seed=0   # one run

SmolLM2-135M-Instruct (embedded GGUF, float32), full finetuning, arithmetic task and reward, 4 prompts x 8
completions x 48 new tokens, loss 'grpo' (per-sequence token mean), kl_beta 0.04, temperature 1.0, AdamW lr 1e-5
(constant; chosen so 20 steps visibly move the reward, identical for both systems), greedy held-out accuracy on
the task's whole eval split before and after. `get_config("tiny")` is a smoke version (2 x 2 x 8, 2 steps, 4 eval
problems; give it a tiny model with --config.model.path).

`settings(arg)` is the same experiment as `trl_reference.Settings`, from which TRL's GRPOConfig is built, so both
systems read their settings from this one file.
"""

from __future__ import annotations

from benchmarks.grpo_step import grpo_jax_config
from benchmarks.trl_reference import Settings

STEPS = {"": 20, "tiny": 2}


def settings(arg: str | None = None) -> Settings:
    arg = arg or ""
    if arg not in STEPS:
        raise ValueError(f"benchmarks/learning_config.py: unknown arg {arg!r}; valid: '' (full) or 'tiny'")
    if arg == "tiny":
        return Settings(prompts_per_step=2, group_size=2, max_new_tokens=8, kl_beta=0.04, lr=1e-5,
                        task_options={"eval_size": 4})
    return Settings(prompts_per_step=4, group_size=8, max_new_tokens=48, kl_beta=0.04, lr=1e-5)


def steps(arg: str | None = None) -> int:
    return STEPS[arg or ""]


def get_config(arg: str | None = None):
    config = grpo_jax_config(settings(arg), steps(arg))
    config.eval.every = steps(arg)        # held-out accuracy before (step 0) and after the last step
    config.eval.num_examples = 0          # the whole eval split
    config.eval.pass_k = 0
    config.checkpoint.every = 0
    config.checkpoint.export_hf = False
    config.logging.tensorboard = False
    config.logging.plots = False
    config.logging.progress = False
    return config
