"""Sampled estimators of KL(pi || pi_ref) per token, from the log-probs of the sampled tokens (Schulman 2020,
"Approximating KL Divergence", http://joschu.net/blog/kl-approx.html)."""

from __future__ import annotations

import jax.numpy as jnp

from grpo_jax.losses.plugins import register_kl_estimator


@register_kl_estimator("k1")
def kl_k1(logps, ref_logps):
    """k1 = log(pi / pi_ref) = logp - ref_logp: unbiased, high variance, can be negative. Schulman 2020."""
    return logps - ref_logps


@register_kl_estimator("k2")
def kl_k2(logps, ref_logps):
    """k2 = 0.5 * (ref_logp - logp)^2: biased, low variance, non-negative. Schulman 2020."""
    return 0.5 * jnp.square(ref_logps - logps)


@register_kl_estimator("k3")
def kl_k3(logps, ref_logps):
    """k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1: unbiased for KL(pi || pi_ref), non-negative.

    Schulman 2020; GRPO's KL term, Shao et al. 2024 "DeepSeekMath" eq. 4. (The direction matters:
    exp(logp - ref) - ... estimates the reverse KL; a known trap in one peer.)"""
    d = ref_logps - logps
    return jnp.exp(d) - d - 1.0
