"""The task registry: `TASKS.get(name, **options) -> Task` (same mechanics as the reward registry)."""

from grpo_jax.rewards.registry import Registry

TASKS = Registry("task")
