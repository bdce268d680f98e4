"""Advantage estimator 'grpo': (reward - baseline) / scale, with the baseline and scale chosen by name."""

from __future__ import annotations

import jax

from grpo_jax.advantages.plugins import BASELINES, SCALES, register_estimator


@register_estimator("grpo")
def baseline_over_scale(rewards: jax.Array, config, *, per_reward=None, reward_weights=None) -> jax.Array:
    """A = (r - baseline(r)) / scale(r, std_eps) on the total rewards [P, G] (`loss.advantage_baseline`,
    `loss.advantage_scale`); TRL / verl GRPO with the defaults: A = (r - mean_g) / (std_g + eps)
    (Shao et al. 2024, "DeepSeekMath", eq. 3). Per-reward scores are not used."""
    del per_reward, reward_weights
    centered = rewards - BASELINES[config.advantage_baseline](rewards)
    return centered / SCALES[config.advantage_scale](rewards, float(config.std_eps))
