"""The task registry: `TASKS.get(name, **options) -> Task` (the kind 'task' of `grpo_jax.registry`); a task
factory's keyword arguments are its config fields (`task.*` besides `task.name`)."""

from grpo_jax.registry import kind

TASKS = kind("task", factory=True)
