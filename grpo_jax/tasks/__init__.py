"""Reasoning tasks: prompts (chat messages + optional assistant prefill), reward columns, a held-out eval set.

    from grpo_jax import tasks
    task = tasks.get("countdown", eval_size=200)        # or "arithmetic", "gsm8k"; options as in the config's task.*
    batch = task.train_batch(seed, step, batch_size)      # list of example dicts, deterministic and resumable
    columns = tasks.reward_columns(batch, repeat=G)       # TRL-style columns aligned with P*G completions
    held_out = task.eval_set()                            # fixed by the task's split_seed; disjoint from training

See grpo_jax/tasks/base.py for the example dict.
"""

from grpo_jax.tasks import arithmetic, countdown, gsm8k  # noqa: F401  (register built-ins)
from grpo_jax.tasks.base import Task, reward_columns
from grpo_jax.tasks.registry import TASKS

get = TASKS.get
register = TASKS.register
names = TASKS.names

__all__ = ["get", "register", "names", "Task", "reward_columns"]
