"""A seconds-long experiment on a tiny random checkpoint, for the runner, CLI and multi-host tests.

    python -m experiments.train --config tests/tiny_run_config.py --config.model.path=CKPT --workdir DIR

CKPT comes from tiny_tokenizer.make_run_checkpoint. Rewards: `arithmetic` plus DAPO's `overlong` with a 6-token
buffer, so completions of different lengths score differently and the advantages are not all zero (the random
model stops early often: see tiny_tokenizer). kl_beta > 0 so the reference path runs too.
"""

from grpo_jax import config as config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.seed = 0
    c.total_steps = 4
    c.model.path = "SET --config.model.path"
    c.task.name = "arithmetic"
    c.task.eval_size = 8
    c.rewards = {"arithmetic": 1.0, "overlong": 1.0}
    c.reward_options = {"overlong": {"max_length": 8, "buffer_length": 6}}
    c.rollout.prompts_per_step = 2
    c.rollout.group_size = 4
    c.rollout.max_new_tokens = 8
    c.loss.kl_beta = 0.04
    c.optim.lr = 1e-2
    c.eval.every = 2
    c.eval.batch_size = 4
    c.eval.pass_k = 2
    c.eval.num_samples = 2
    c.checkpoint.every = 1
    c.checkpoint.keep = 2
    c.logging.progress = False
    c.logging.num_samples = 2
    return c
