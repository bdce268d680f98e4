"""PPO's clipped surrogate, dual clip and the clip fields shared by the clipped variants (GRPO, GSPO, CISPO).

Clip bounds are deltas from 1 for every variant: the ratio is clipped to [1 - clip_low, 1 + clip_high]. Each
variant declares these fields with the same defaults (GRPO's 0.2 / 0.2) and its paper's values as `presets`
(`grpo_jax.config.loss_config(variant)` applies them).
"""

from __future__ import annotations

import jax.numpy as jnp

CLIP_FIELDS = {"clip_low": 0.2, "clip_high": 0.2}
DUAL_CLIP_FIELDS = {"dual_clip": 0.0}


def validate_clip(cfg) -> None:
    clip_low, clip_high = float(cfg["clip_low"]), float(cfg["clip_high"])
    if not 0.0 <= clip_low <= 1.0:
        raise ValueError(f"loss.clip_low must be in [0, 1] (ratio clipped below at 1 - clip_low), got {clip_low!r}")
    if clip_high < 0.0:
        raise ValueError(f"loss.clip_high must be >= 0 (ratio clipped above at 1 + clip_high), got {clip_high!r}")


def validate_clip_and_dual_clip(cfg) -> None:
    validate_clip(cfg)
    dual_clip = float(cfg["dual_clip"])
    if dual_clip != 0.0 and dual_clip <= 1.0:
        raise ValueError(f"loss.dual_clip must be 0 (off) or a constant > 1 (Ye et al. 2020 use 3), got {dual_clip!r}")


def ppo_clipped_loss(ratio, adv, clip_low, clip_high):
    """PPO's clipped surrogate as a loss, -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A).

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7; separate lower/upper bounds are
    DAPO's clip-higher (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale").
    """
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return -jnp.minimum(ratio * adv, clipped * adv)


def dual_clip_loss(loss, adv, c):
    """Dual-clip PPO: for A < 0 the objective is max(min(r A, clip(r) A), c A), i.e. the loss is at most -c A.

    Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning", eq. 5: bounds
    the otherwise unbounded loss of a negative-advantage token whose ratio r exploded (r > c).
    Returns (loss, bool mask of where the bound was active); c == 0 turns it off (mask None).
    """
    if c == 0.0:
        return loss, None
    bound = -c * adv
    active = (adv < 0) & (loss > bound)
    return jnp.where(adv < 0, jnp.minimum(loss, bound), loss), active


def clip_indicators(ratio, adv, clip_low, clip_high):
    """TRL's clip metrics: clipped low = r < 1 - eps_low and A < 0; high = r > 1 + eps_high and A > 0
    (the bound was hit *and* the min picked the clipped branch, so the gradient was cut)."""
    return (ratio < 1.0 - clip_low) & (adv < 0), (ratio > 1.0 + clip_high) & (adv > 0)


def token_log_ratio(logps, old_logps, mask):
    """[N, T]: logp - old_logp on valid tokens, 0 elsewhere (masked positions are never read)."""
    return jnp.where(mask > 0, logps - old_logps, 0.0)


def sequence_log_ratio(logps, old_logps, mask):
    """[N]: mean over a sequence's valid tokens of (logp - old_logp); GSPO's log s_i (0 for an empty row)."""
    total = jnp.sum(token_log_ratio(logps, old_logps, mask) * mask, axis=1)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
