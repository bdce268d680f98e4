"""The reward registry: `REWARDS.get(name, **options) -> reward fn` (the kind 'reward' of `grpo_jax.registry`).

Every entry is a factory `factory(**options) -> reward_fn` whose options all have defaults: the factory's keyword
arguments are the reward's config fields (`reward_options.<name>.*`), and `get(name, **options)` checks them.
`Registry` is re-exported for code that builds a registry of its own.
"""

from grpo_jax.registry import Registry, kind

REWARDS = kind("reward", factory=True)

__all__ = ["REWARDS", "Registry"]
