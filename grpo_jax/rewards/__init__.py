"""Verifiable rewards, looked up by name, with TRL's signature `fn(completions: list[str], **columns) -> list[float]`.

    from grpo_jax import rewards
    fn = rewards.get("countdown")                    # columns nums=[[...], ...], target=[...]
    fn = rewards.get("overlong", max_length=512, buffer_length=128)
    combined = rewards.combine({"format": 0.5, "countdown": 1.0})
    total, per_reward, num_errors = combined(completions, **columns)

Built in: format, format_partial, countdown, arithmetic, gsm8k, math (needs `pip install 'grpo_jax[math]'`),
overlong. Register your own with `@rewards.register("name")` on a factory `(**options) -> reward_fn`
(or `@rewards.register("name", factory=False)` on a plain TRL reward function).
"""

from grpo_jax.rewards import countdown, format, numeric, overlong, symbolic  # noqa: F401  (register built-ins)
from grpo_jax.rewards.combine import combine
from grpo_jax.rewards.registry import REWARDS

get = REWARDS.get
register = REWARDS.register
names = REWARDS.names

__all__ = ["get", "register", "names", "combine"]
