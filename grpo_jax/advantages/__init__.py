"""Vectorised group advantages: rewards [P, G] (P prompts, G completions each) -> advantages [P, G].

    adv = advantages.group_advantages(rewards_pg, config.loss)                      # the contract
    adv = advantages.group_advantages(rewards_pg, config.loss, per_reward=scores_pgr, reward_weights=w)

The estimator is a plug-in (`loss.advantage_estimator`, see `plugins.py`); the default 'grpo' is
(reward - baseline) / scale with the baseline and scale plug-ins `loss.advantage_baseline` ('group_mean' | 'rloo')
and `loss.advantage_scale` ('group' | 'batch' | 'none'). Every module of this package is imported here, so an
estimator, baseline or scale is one new file.

A group whose G total rewards are all identical carries no learning signal: its advantages are exactly 0 (never
NaN), whatever the estimator. `group_stats` counts such groups (`frac_reward_zero_std`) and, with
`loss.drop_zero_std_groups`, marks them in `keep_mask` so the loss can leave them out of every denominator
(DAPO's dynamic sampling, Yu et al. 2025, applied as a filter instead of by resampling).

Everything is jnp, works under jit (the config is read in Python, so close over it), and accepts numpy input.

Core fields of the `loss` section declared here:

  advantage_estimator   the estimator plug-in                       ('grpo')
  advantage_baseline    the default estimator's baseline            ('group_mean')
  advantage_scale       the default estimator's scale               ('group')
  std_eps               added to the std before dividing            (1e-4, as TRL)
  drop_zero_std_groups  DAPO dynamic-sampling filter: groups with identical rewards leave the update (False)
"""

import importlib
import pkgutil

import jax
import jax.numpy as jnp

from grpo_jax import registry
from grpo_jax.advantages.plugins import (
    BASELINES, ESTIMATORS, SCALES, register_baseline, register_estimator, register_scale)

CORE_FIELDS = {
    "advantage_estimator": "grpo",
    "advantage_baseline": "group_mean",
    "advantage_scale": "group",
    "std_eps": 1e-4,
    "drop_zero_std_groups": False,
}


def _validate_core(cfg) -> None:
    if float(cfg["std_eps"]) < 0.0:
        raise ValueError(f"loss.std_eps must be >= 0, got {cfg['std_eps']!r}")


registry.declare_fields("loss", "grpo_jax.advantages", CORE_FIELDS, _validate_core)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

from grpo_jax.advantages.scales import sample_std  # noqa: E402


def _as_rewards(rewards) -> jax.Array:
    r = jnp.asarray(rewards, dtype=jnp.float32)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [P, G] (prompts x completions per prompt), got shape {r.shape}")
    if r.shape[1] < 2:
        raise ValueError(f"rewards have group size G = {r.shape[1]}; group advantages need G >= 2")
    return r


def _as_per_reward(per_reward, reward_weights, shape):
    if per_reward is None:
        if reward_weights is not None:
            raise ValueError("reward_weights given without per_reward")
        return None, None
    s = jnp.asarray(per_reward, dtype=jnp.float32)
    if s.ndim != 3 or s.shape[:2] != shape:
        raise ValueError(f"per_reward must be [P, G, R] with [P, G] = {shape}, got shape {s.shape}")
    w = jnp.ones((s.shape[2],), jnp.float32) if reward_weights is None else jnp.asarray(reward_weights, jnp.float32)
    if w.shape != (s.shape[2],):
        raise ValueError(f"reward_weights must be [R] = [{s.shape[2]}], got shape {w.shape}")
    return s, w


def zero_std_groups(rewards: jax.Array) -> jax.Array:
    """bool [P]: groups whose G rewards are all identical (std exactly 0)."""
    return jnp.max(rewards, axis=1) == jnp.min(rewards, axis=1)


def group_advantages(rewards, config, *, per_reward=None, reward_weights=None) -> jax.Array:
    """Advantages [P, G] from rewards [P, G] by the `loss.advantage_estimator` plug-in, 0 in zero-variance groups.

    `config` is the `loss` ConfigDict. Contract: `advantages.group_advantages(rewards_pg, config.loss)`.
    per_reward [P, G, R] / reward_weights [R]: the unweighted per-reward scores and their weights, for estimators
    that normalise rewards separately (optional). Flatten row-major to [P * G] to get one advantage per
    sequence, completions of a prompt adjacent.
    """
    registry.ensure_valid("loss", config)
    r = _as_rewards(rewards)
    scores, weights = _as_per_reward(per_reward, reward_weights, r.shape)
    adv = ESTIMATORS[config.advantage_estimator](r, config, per_reward=scores, reward_weights=weights)
    return jnp.where(zero_std_groups(r)[:, None], 0.0, adv)


def group_stats(rewards, config) -> dict:
    """Reward statistics under TRL's metric names, plus the dynamic-sampling `keep_mask`.

    reward: mean of all rewards. reward_std: mean over groups of the per-group std (ddof = 1), TRL's definition
    under its default group scaling (with `scale_rewards='batch'` TRL logs the batch std instead; we always log
    the group one). frac_reward_zero_std: fraction of groups whose rewards are all identical.
    keep_mask: bool [P], False for those groups when `loss.drop_zero_std_groups` is on, else all True; repeat it
    G times (`jnp.repeat(keep_mask, G)`) and pass it as `keep=` to `losses.policy_loss` / `batch_denominators`.
    """
    registry.ensure_valid("loss", config)
    r = _as_rewards(rewards)
    zero = zero_std_groups(r)
    keep = ~zero if config.drop_zero_std_groups else jnp.ones_like(zero)
    return {
        "reward": jnp.mean(r),
        "reward_std": jnp.mean(sample_std(r, axis=1)),
        "frac_reward_zero_std": jnp.mean(zero.astype(jnp.float32)),
        "keep_mask": keep,
    }


__all__ = ["group_advantages", "group_stats", "zero_std_groups", "register_estimator", "register_baseline",
           "register_scale", "ESTIMATORS", "BASELINES", "SCALES", "CORE_FIELDS", "sample_std"]
