"""Baselines of the default ('grpo') advantage estimator: rewards [P, G] -> baseline [P, G]."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax.advantages.plugins import register_baseline


@register_baseline("group_mean")
def group_mean_baseline(rewards: jax.Array) -> jax.Array:
    """GRPO's baseline: the mean reward of the group (Shao et al. 2024, "DeepSeekMath", eq. 3)."""
    return jnp.mean(rewards, axis=1, keepdims=True)


@register_baseline("rloo")
def leave_one_out_baseline(rewards: jax.Array) -> jax.Array:
    """RLOO: the mean reward of the *other* G - 1 completions, so r_i - b_i = G / (G - 1) * (r_i - mean).

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs" (Kool et al. 2019's leave-one-out estimator). Unbiased: b_i does not depend on sample i.
    """
    g = rewards.shape[1]
    return (jnp.sum(rewards, axis=1, keepdims=True) - rewards) / (g - 1)
