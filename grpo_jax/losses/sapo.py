"""Loss variant 'sapo': a smooth, temperature-controlled gate on the token ratio in place of PPO's hard clip.

Gao et al. 2025 (Qwen team), "Soft Adaptive Policy Optimization", arXiv 2511.20347. Per token, with
r_t = pi(y_t) / pi_old(y_t) and the sequence's advantage A, SAPO maximises f(r_t) A with the soft gate

    f(r) = sigmoid(tau (r - 1)) * 4 / tau,     tau = tau_pos if A > 0 else tau_neg,

so the loss is -f(r_t) A, aggregated like GRPO's (the paper averages tokens per sequence, then sequences:
`loss.aggregation = 'seq_mean_token_mean'`). Its gradient is

    d/dtheta [f(r) A] = w(r) * r * A * dlog pi(y_t)/dtheta,     w(r) = 4 s (1 - s),  s = sigmoid(tau (r - 1)),

PPO's unclipped policy gradient scaled by w: w(1) = 1 (on-policy tokens keep the full GRPO gradient, whatever tau),
w falls smoothly to 0 as r leaves 1, faster for larger tau -- a continuous trust region instead of the hard band
where PPO's gradient is either all or nothing. The paper sets tau_neg > tau_pos (negative-advantage updates spread
to many unsampled tokens' logits, so their gradient should decay faster) and uses tau_pos = 1.0, tau_neg = 1.05
(the defaults here). A token with A = 0 has zero loss and gradient (it takes tau_neg, which does not matter).

Invariants: f(1) = 2 / tau and w(1) = 1; the loss is bounded, |loss| <= 4 |A| / tau, so dual clip has nothing to
bound (must be 0); no hard clipping happens, so the clip_ratio metrics are 0. Own metric:
`sapo/gate_weight_min`, the smallest gradient weight w over the step's valid tokens (how hard the most
off-policy token was attenuated; reduction min).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax.losses.plugins import PolicyTerm, register_variant
from grpo_jax.losses.ppo import token_log_ratio
from grpo_jax.step_metrics import Metrics

FIELDS = {"sapo_tau_pos": 1.0, "sapo_tau_neg": 1.05}


def _validate(cfg) -> None:
    for name in FIELDS:
        value = float(cfg[name])
        if not value > 0.0:
            raise ValueError(f"loss.{name} must be > 0 (the soft gate's temperature), got {cfg[name]!r}")
    if float(cfg.dual_clip) != 0.0:
        raise ValueError(f"loss.dual_clip must be 0 with variant 'sapo' (got {cfg['dual_clip']!r}): the soft "
                         "gate already bounds the loss by 4 |A| / tau")


def soft_gate(ratio, adv, tau_pos: float, tau_neg: float):
    """(f(r) = sigmoid(tau (r - 1)) * 4 / tau, gradient weight w = 4 s (1 - s)), tau by the sign of A."""
    tau = jnp.where(adv > 0, tau_pos, tau_neg)
    s = jax.nn.sigmoid(tau * (ratio - 1.0))
    return s * (4.0 / tau), 4.0 * s * (1.0 - s)


@register_variant("sapo", fields=FIELDS, validate=_validate,
                  vanishes_at_zero_advantage=True)
def sapo_token_loss(logps, old_logps, advantages, mask, config) -> PolicyTerm:
    """SAPO's per-token loss -f(r_t) A (module docstring); ratio as GRPO's, no clip indicators."""
    ratio = jnp.exp(token_log_ratio(logps, old_logps, mask))
    adv = advantages[:, None]
    gate, weight = soft_gate(ratio, adv, float(config.sapo_tau_pos), float(config.sapo_tau_neg))
    never = jnp.zeros(ratio.shape, bool)
    metrics = Metrics().add("sapo/gate_weight_min", jnp.min(jnp.where(mask > 0, weight, jnp.inf)), "min")
    return PolicyTerm(-gate * adv, ratio, never, never, None, metrics)
