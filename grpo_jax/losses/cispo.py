"""Loss variant 'cispo': REINFORCE with a clipped, detached importance weight (MiniMax-M1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax.losses.plugins import PolicyTerm, register_variant
from grpo_jax.losses.ppo import CLIP_FIELDS, token_log_ratio, validate_clip


def _validate(cfg) -> None:
    validate_clip(cfg)
    if float(cfg.dual_clip) != 0.0:
        raise ValueError("loss.dual_clip must be 0 with variant 'cispo': CISPO has no unclipped branch to bound")


@register_variant("cispo", fields=CLIP_FIELDS, validate=_validate, presets={"clip_low": 1.0, "clip_high": 4.0},
                  vanishes_at_zero_advantage=True)
def cispo_token_loss(logps, old_logps, advantages, mask, config) -> PolicyTerm:
    """CISPO: REINFORCE with a clipped, detached importance weight, -sg(clip(r_t)) A logp_t.

    MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention", eq. 4-5: unlike
    PPO's min, no token's gradient is dropped; an off-policy token is down-weighted instead. The paper imposes
    no lower bound ("we did not impose a lower bound"): the preset clip_low = 1.0 makes the lower bound 0 (the
    ratio is positive, so nothing is clipped below). For the upper bound we follow TRL's GRPOConfig
    documentation, which recommends an absolute cap epsilon_max = 5.0 for CISPO (after ScaleRL, Khatri et al.
    2025), i.e. the preset clip_high = 4.0 in our delta convention; MiniMax-M1 does not publish its value.
    Clip indicators count tokens whose weight was clipped (either side) and had a non-zero advantage. The loss
    value is a surrogate whose gradient is the estimator; it is not comparable in value to the PPO-style variants.
    """
    ratio = jnp.exp(token_log_ratio(logps, old_logps, mask))
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high))
    adv = advantages[:, None]
    loss = -weight * adv * jnp.where(mask > 0, logps, 0.0)
    low = (ratio < 1.0 - config.clip_low) & (adv != 0)
    high = (ratio > 1.0 + config.clip_high) & (adv != 0)
    return PolicyTerm(loss, ratio, low, high, None)
