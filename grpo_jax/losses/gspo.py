"""Loss variant 'gspo': one clipped ratio per sequence (Zheng et al. 2025)."""

from __future__ import annotations

import jax.numpy as jnp

from grpo_jax.losses.plugins import PolicyTerm, register_variant
from grpo_jax.losses.ppo import (CLIP_FIELDS, DUAL_CLIP_FIELDS, clip_indicators, dual_clip_loss, ppo_clipped_loss,
                                 sequence_log_ratio, validate_clip_and_dual_clip)


@register_variant("gspo", fields={**CLIP_FIELDS, **DUAL_CLIP_FIELDS}, validate=validate_clip_and_dual_clip,
                  presets={"clip_low": 3e-4, "clip_high": 4e-4},
                  vanishes_at_zero_advantage=True)
def gspo_sequence_loss(logps, old_logps, advantages, mask, config) -> PolicyTerm:
    """GSPO: one ratio per sequence, the geometric mean of its token ratios, clipped per sequence.

    Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 5-7:
    s_i = exp(mean_t(logp_t - old_logp_t)), loss_i = -min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i);
    the gradient flows through every token of s_i (the GSPO sequence form; GSPO-token's
    sg[s_i] * exp(logp_t - sg[logp_t]) has the same value and, with one advantage per sequence and the
    default aggregation, the same gradient).
    Dual clip, when on, bounds the sequence loss. loss_i is broadcast to the sequence's tokens, so every
    aggregation mode is defined: with the default `seq_mean_token_mean` the loss is exactly the paper's
    (1/G) sum_i loss_i; `token_mean` weights sequences by length, the token-sum modes by length as well.
    The sequence-level ratio stays close to 1, so the paper clips at 3e-4 (left) and 4e-4 (right), sec. 5.1:
    the presets of `grpo_jax.config.loss_config('gspo')`.
    """
    ratio = jnp.exp(sequence_log_ratio(logps, old_logps, mask))
    seq_loss = ppo_clipped_loss(ratio, advantages, config.clip_low, config.clip_high)
    seq_loss, dual = dual_clip_loss(seq_loss, advantages, float(config.dual_clip))
    low, high = clip_indicators(ratio, advantages, config.clip_low, config.clip_high)
    return PolicyTerm(jnp.broadcast_to(seq_loss[:, None], logps.shape), ratio, low, high, dual)
