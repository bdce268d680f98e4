"""Advantage estimator 'gdpo': each reward normalised within its group separately, then summed and batch-normalised.

Liu et al. 2026, "GDPO: Group reward-Decoupled Normalization Policy Optimization for Multi-reward RL
Optimization", arXiv 2601.05242. With R rewards r_k [P, G] (the unweighted scores) and their weights w_k
(`config.rewards`, in that order):

    A_k = (r_k - mean_g r_k) / (std_g r_k + eps)       per reward, within each group; 0 where r_k is constant
    S   = sum_k w_k A_k                                 [P, G]
    A   = (S - mean S) / (std S + eps)                  over the whole batch (all P * G completions)

std is the sample std (ddof = 1) and eps is `loss.std_eps`, as for GRPO (and in the paper's TRL / verl code).
GRPO instead normalises the weighted total sum_k w_k r_k within each group, so the reward with the largest spread
sets the scale and flattens the others: beside a length penalty of spread s, the GRPO advantage gap between a
correct and a wrong answer shrinks like 1 / s; under GDPO each reward counts on the scale of its own group std,
whatever the other rewards do (tests/test_gdpo.py works both out by hand). The batch normalisation keeps the
scale of A independent of the number of rewards.

Invariants: a reward that is constant within a group adds exactly 0 to that group; each A_k is centred per group,
so mean S = 0 up to rounding; S = 0 everywhere (no reward varies in any group) gives A = 0, also with eps = 0;
R = 1 gives GRPO's group advantages (advantage_baseline 'group_mean', advantage_scale 'group') batch-normalised:
the weight's size cancels, its sign does not. A group whose weighted total is constant gets A = 0 by the package
rule of `advantages.group_advantages` (and is what `drop_zero_std_groups` drops), although S need not vanish
there when the weights differ. Needs the per-reward scores: `group_advantages(rewards, config,
per_reward=[P, G, R], reward_weights=[R])`, as the runner calls it; without them it is a ValueError.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax.advantages.plugins import register_estimator
from grpo_jax.advantages.scales import sample_std


def per_reward_group_advantages(per_reward: jax.Array, eps: float) -> jax.Array:
    """[P, G, R] -> A_k [P, G, R]: each reward's (r - group mean) / (group std + eps), exactly 0 where it is
    constant within the group."""
    constant = jnp.max(per_reward, axis=1, keepdims=True) == jnp.min(per_reward, axis=1, keepdims=True)
    centred = per_reward - jnp.mean(per_reward, axis=1, keepdims=True)
    scale = jnp.where(constant, 1.0, sample_std(per_reward, axis=1, keepdims=True) + eps)
    return jnp.where(constant, 0.0, centred / scale)


@register_estimator("gdpo")
def gdpo_advantages(rewards: jax.Array, config, *, per_reward=None, reward_weights=None) -> jax.Array:
    """GDPO's advantages [P, G] from the per-reward scores [P, G, R] and weights [R] (module docstring)."""
    del rewards  # the weighted total: GDPO normalises the rewards one by one instead
    if per_reward is None:
        raise ValueError("loss.advantage_estimator 'gdpo' normalises each reward separately: pass per_reward "
                         "[P, G, R] and reward_weights [R] to advantages.group_advantages (the runner does)")
    eps = float(config.std_eps)
    total = jnp.sum(per_reward_group_advantages(per_reward, eps) * reward_weights, axis=-1)
    std = sample_std(total)
    flat = std == 0.0  # S == 0 everywhere (it is centred): no signal, and no 0 / 0 when eps = 0
    return jnp.where(flat, 0.0, (total - jnp.mean(total)) / jnp.where(flat, 1.0, std + eps))
