"""Scales of the default ('grpo') advantage estimator: (rewards [P, G], eps) -> divisor broadcastable to [P, G].

Standard deviations are the unbiased sample std (ddof = 1), as torch's `Tensor.std` used by TRL and verl; eps
(`loss.std_eps`, 1e-4 like TRL; verl uses 1e-6) is added to the std, not under the square root.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax.advantages.plugins import register_scale


def sample_std(x: jax.Array, axis=None, keepdims=False) -> jax.Array:
    """Unbiased sample standard deviation (ddof = 1), torch.std's default, as used by TRL and verl."""
    return jnp.std(x, axis=axis, ddof=1, keepdims=keepdims)


@register_scale("group")
def group_std_scale(rewards: jax.Array, eps: float) -> jax.Array:
    """GRPO: divide by the group's reward std + eps (Shao et al. 2024, "DeepSeekMath", eq. 3; TRL, verl)."""
    return sample_std(rewards, axis=1, keepdims=True) + eps


@register_scale("batch")
def batch_std_scale(rewards: jax.Array, eps: float) -> jax.Array:
    """Divide by the std of every reward in the batch + eps: more robust than the per-group std for small G.

    Hu 2025, "REINFORCE++"; Liu et al. 2025, "Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning"
    (group mean, batch std); TRL's `scale_rewards='batch'`.
    """
    return sample_std(rewards) + eps


@register_scale("none")
def no_scale(rewards: jax.Array, eps: float) -> jax.Array:
    """Dr.GRPO: no std division, which biases toward too-easy/too-hard questions (Liu et al. 2025,
    "Understanding R1-Zero-Like Training: A Critical Perspective")."""
    del rewards, eps
    return jnp.float32(1.0)
