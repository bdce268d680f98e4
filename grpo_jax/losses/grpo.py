"""Loss variant 'grpo': the per-token clipped ratio of DeepSeekMath, with clip-higher and optional dual clip."""

from __future__ import annotations

import jax.numpy as jnp

from grpo_jax.losses.plugins import PolicyTerm, register_variant
from grpo_jax.losses.ppo import (CLIP_FIELDS, DUAL_CLIP_FIELDS, clip_indicators, dual_clip_loss, ppo_clipped_loss,
                                 token_log_ratio, validate_clip_and_dual_clip)


@register_variant("grpo", fields={**CLIP_FIELDS, **DUAL_CLIP_FIELDS}, validate=validate_clip_and_dual_clip,
                  presets={"clip_low": 0.2, "clip_high": 0.2},
                  vanishes_at_zero_advantage=True)
def grpo_token_loss(logps, old_logps, advantages, mask, config) -> PolicyTerm:
    """GRPO: per-token ratio r_t = exp(logp_t - old_logp_t), PPO clip with clip-higher, optional dual clip.

    Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    eq. 3 (token-level clipped objective with a group-relative advantage shared by all tokens of a completion).
    Paper clip bounds: (0.2, 0.2), as PPO (Schulman et al. 2017); DAPO's clip-higher uses (0.2, 0.28).
    """
    ratio = jnp.exp(token_log_ratio(logps, old_logps, mask))
    adv = advantages[:, None]
    loss = ppo_clipped_loss(ratio, adv, config.clip_low, config.clip_high)
    loss, dual = dual_clip_loss(loss, adv, float(config.dual_clip))
    low, high = clip_indicators(ratio, adv, config.clip_low, config.clip_high)
    return PolicyTerm(loss, ratio, low, high, dual)
