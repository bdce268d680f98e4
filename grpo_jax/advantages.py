"""Vectorised group advantages: rewards [P, G] (P prompts, G completions each) -> advantages [P, G].

advantage = (reward - baseline) / scale, with baseline and scale looked up by name in `BASELINES` and `SCALES`
(config `loss.advantage_baseline`, `loss.advantage_scale`). Adding an estimator is one function and one name:

    @advantages.register_baseline("my_baseline")
    def my_baseline(rewards):            # float32 [P, G] -> [P, G] (or broadcastable)
        ...

Standard deviations are the unbiased sample std (ddof = 1), as torch's `Tensor.std` used by TRL and verl; eps
(`loss.std_eps`, 1e-4 like TRL; verl uses 1e-6) is added to the std, not under the square root:
TRL / verl GRPO: A = (r - mean_g) / (std_g + eps).

A group whose G rewards are all identical carries no learning signal: its advantages are exactly 0 (never NaN),
whatever the estimator. `group_stats` counts such groups (`frac_reward_zero_std`) and, with
`loss.drop_zero_std_groups`, marks them in `keep_mask` so the loss can leave them out of every denominator
(DAPO's dynamic sampling, Yu et al. 2025, applied as a filter instead of by resampling).

Everything is jnp, works under jit (the config is read in Python, so close over it), and accepts numpy input.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from grpo_jax.config_defaults import validate_loss_config

BASELINES: dict[str, Callable[[jax.Array], jax.Array]] = {}
SCALES: dict[str, Callable[[jax.Array, float], jax.Array]] = {}


def register_baseline(name: str):
    """Register `fn(rewards [P, G]) -> baseline [P, G]` under `name` (config `loss.advantage_baseline`)."""

    def add(fn):
        BASELINES[name] = fn
        return fn

    return add


def register_scale(name: str):
    """Register `fn(rewards [P, G], eps) -> divisor broadcastable to [P, G]` (config `loss.advantage_scale`)."""

    def add(fn):
        SCALES[name] = fn
        return fn

    return add


def _std(x: jax.Array, axis=None, keepdims=False) -> jax.Array:
    """Unbiased sample standard deviation (ddof = 1), torch.std's default, as used by TRL and verl."""
    return jnp.std(x, axis=axis, ddof=1, keepdims=keepdims)


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


@register_scale("group")
def group_std_scale(rewards: jax.Array, eps: float) -> jax.Array:
    """GRPO: divide by the group's reward std + eps (Shao et al. 2024, "DeepSeekMath", eq. 3; TRL, verl)."""
    return _std(rewards, axis=1, keepdims=True) + eps


@register_scale("batch")
def batch_std_scale(rewards: jax.Array, eps: float) -> jax.Array:
    """Divide by the std of every reward in the batch + eps: more robust than the per-group std for small G.

    Hu 2025, "REINFORCE++"; Liu et al. 2025, "Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning"
    (group mean, batch std); TRL's `scale_rewards='batch'`.
    """
    return _std(rewards) + eps


@register_scale("none")
def no_scale(rewards: jax.Array, eps: float) -> jax.Array:
    """Dr.GRPO: no std division, which biases toward too-easy/too-hard questions (Liu et al. 2025,
    "Understanding R1-Zero-Like Training: A Critical Perspective")."""
    del rewards, eps
    return jnp.float32(1.0)


def _as_rewards(rewards) -> jax.Array:
    r = jnp.asarray(rewards, dtype=jnp.float32)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [P, G] (prompts x completions per prompt), got shape {r.shape}")
    if r.shape[1] < 2:
        raise ValueError(f"rewards have group size G = {r.shape[1]}; group advantages need G >= 2")
    return r


def zero_std_groups(rewards: jax.Array) -> jax.Array:
    """bool [P]: groups whose G rewards are all identical (std exactly 0)."""
    return jnp.max(rewards, axis=1) == jnp.min(rewards, axis=1)


def group_advantages(rewards, config) -> jax.Array:
    """Advantages [P, G] from rewards [P, G]: (r - baseline) / scale, 0 in zero-variance groups.

    `config` is the `loss` ConfigDict (fields advantage_baseline, advantage_scale, std_eps). Contract:
    `advantages.group_advantages(rewards_pg, config.loss)`. Flatten row-major to [P * G] to get one advantage
    per sequence, completions of a prompt adjacent.
    """
    validate_loss_config(config)
    r = _as_rewards(rewards)
    centered = r - BASELINES[config.advantage_baseline](r)
    adv = centered / SCALES[config.advantage_scale](r, float(config.std_eps))
    return jnp.where(zero_std_groups(r)[:, None], 0.0, adv)


def group_stats(rewards, config) -> dict:
    """Reward statistics under TRL's metric names, plus the dynamic-sampling `keep_mask`.

    reward: mean of all rewards. reward_std: mean over groups of the per-group std (ddof = 1), TRL's definition
    under its default group scaling (with `scale_rewards='batch'` TRL logs the batch std instead; we always log
    the group one). frac_reward_zero_std: fraction of groups whose rewards are all identical.
    keep_mask: bool [P], False for those groups when `loss.drop_zero_std_groups` is on, else all True; repeat it
    G times (`jnp.repeat(keep_mask, G)`) and pass it as `keep=` to `losses.policy_loss` / `batch_denominators`.
    """
    validate_loss_config(config)
    r = _as_rewards(rewards)
    zero = zero_std_groups(r)
    keep = ~zero if config.drop_zero_std_groups else jnp.ones_like(zero)
    return {
        "reward": jnp.mean(r),
        "reward_std": jnp.mean(_std(r, axis=1)),
        "frac_reward_zero_std": jnp.mean(zero.astype(jnp.float32)),
        "keep_mask": keep,
    }
