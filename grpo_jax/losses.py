"""The GRPO objective: policy term (by variant) + beta * KL to the reference - entropy bonus, aggregated.

Inputs are per-token arrays over completion positions: logps / old_logps / ref_logps / mask [N, T] (mask 1.0 on
completion tokens), one advantage per sequence [N]. Each term is a named function registered by name, so a loss
variant, a KL estimator or an aggregation mode is a config value (`loss.variant`, `loss.kl_estimator`,
`loss.aggregation`) and adding one is a function plus a name.

Per token:  loss_t = policy_t + kl_beta * kl_t - entropy_coef * entropy_t,
then one aggregation over the WHOLE step's batch. Every aggregation is carried as (sum, denominator): the sums are
local to the rows given, the denominators (`batch_denominators`) are global, computed once from the full batch.
So for micro-batches b of one step,

    dens = batch_denominators(mask, cfg, norm_length, truncated, keep)          # full batch, once
    sum_b policy_loss(<rows of b>, cfg, denominators=dens)[0] == policy_loss(<all rows>, cfg)[0]

and the same for the gradient: gradient accumulation and data sharding give exactly the full-batch gradient
(DESIGN.md: "normalise over the whole step's batch, not per device or per micro-batch"; Tunix's (sum, denom)).

Rows that leave the update -- completions hit by `mask_truncated` (`truncated` [N] bool) or groups dropped by
`drop_zero_std_groups` (`keep` [N] bool) -- have their mask zeroed and count in no denominator.
Masked positions are never read (values there may be anything, even NaN).
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from grpo_jax.config_defaults import validate_loss_config

VARIANTS: dict[str, Callable] = {}
KL_ESTIMATORS: dict[str, Callable] = {}
AGGREGATIONS: dict[str, Callable] = {}
NEEDS_NORM_LENGTH = ("seq_mean_token_sum_norm",)


def _registrar(table: dict):
    def register(name: str):
        def add(fn):
            table[name] = fn
            return fn

        return add

    return register


register_variant = _registrar(VARIANTS)  # fn(logps, old_logps, advantages [N], mask, config) -> PolicyTerm
register_kl_estimator = _registrar(KL_ESTIMATORS)  # fn(logps, ref_logps) -> per-token KL [N, T]
register_aggregation = _registrar(AGGREGATIONS)  # fn(per_token [N, T], mask, denominators) -> scalar


class PolicyTerm(NamedTuple):
    """What a variant returns: the per-token policy loss and, for metrics, its ratio and clip indicators.

    `ratio` and the indicators are [N, T] for token-level variants and [N] for sequence-level ones (GSPO).
    `dual_clipped` is None when dual clip is off.
    """

    loss: jax.Array
    ratio: jax.Array
    clipped_low: jax.Array
    clipped_high: jax.Array
    dual_clipped: Optional[jax.Array] = None


# ---------------------------------------------------------------- policy terms


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


def _clip_indicators(ratio, adv, clip_low, clip_high):
    """TRL's clip metrics: clipped low = r < 1 - eps_low and A < 0; high = r > 1 + eps_high and A > 0
    (the bound was hit *and* the min picked the clipped branch, so the gradient was cut)."""
    return (ratio < 1.0 - clip_low) & (adv < 0), (ratio > 1.0 + clip_high) & (adv > 0)


def _token_log_ratio(logps, old_logps, mask):
    return jnp.where(mask > 0, logps - old_logps, 0.0)


@register_variant("grpo")
def grpo_token_loss(logps, old_logps, advantages, mask, config) -> PolicyTerm:
    """GRPO: per-token ratio r_t = exp(logp_t - old_logp_t), PPO clip with clip-higher, optional dual clip.

    Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    eq. 3 (token-level clipped objective with a group-relative advantage shared by all tokens of a completion).
    """
    ratio = jnp.exp(_token_log_ratio(logps, old_logps, mask))
    adv = advantages[:, None]
    loss = ppo_clipped_loss(ratio, adv, config.clip_low, config.clip_high)
    loss, dual = dual_clip_loss(loss, adv, float(config.dual_clip))
    low, high = _clip_indicators(ratio, adv, config.clip_low, config.clip_high)
    return PolicyTerm(loss, ratio, low, high, dual)


def sequence_log_ratio(logps, old_logps, mask):
    """[N]: mean over a sequence's valid tokens of (logp - old_logp); GSPO's log s_i (0 for an empty row)."""
    total = jnp.sum(_token_log_ratio(logps, old_logps, mask) * mask, axis=1)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


@register_variant("gspo")
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
    The paper clips at 3e-4 / 4e-4: use `config_defaults.loss_config('gspo')`.
    """
    ratio = jnp.exp(sequence_log_ratio(logps, old_logps, mask))
    seq_loss = ppo_clipped_loss(ratio, advantages, config.clip_low, config.clip_high)
    seq_loss, dual = dual_clip_loss(seq_loss, advantages, float(config.dual_clip))
    low, high = _clip_indicators(ratio, advantages, config.clip_low, config.clip_high)
    return PolicyTerm(jnp.broadcast_to(seq_loss[:, None], logps.shape), ratio, low, high, dual)


@register_variant("cispo")
def cispo_token_loss(logps, old_logps, advantages, mask, config) -> PolicyTerm:
    """CISPO: REINFORCE with a clipped, detached importance weight, -sg(clip(r_t)) A logp_t.

    MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention", eq. 4-5: unlike
    PPO's min, no token's gradient is dropped; an off-policy token is down-weighted instead. The paper imposes
    no lower bound: `loss_config('cispo')` sets clip_low = 1.0 (lower bound 0). Clip indicators count tokens
    whose weight was clipped (either side) and had a non-zero advantage. The loss value is a surrogate whose
    gradient is the estimator; it is not comparable in value to the PPO-style variants.
    """
    ratio = jnp.exp(_token_log_ratio(logps, old_logps, mask))
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high))
    adv = advantages[:, None]
    loss = -weight * adv * jnp.where(mask > 0, logps, 0.0)
    low = (ratio < 1.0 - config.clip_low) & (adv != 0)
    high = (ratio > 1.0 + config.clip_high) & (adv != 0)
    return PolicyTerm(loss, ratio, low, high, None)


# ---------------------------------------------------------------- KL to the reference


@register_kl_estimator("k1")
def kl_k1(logps, ref_logps):
    """k1 = log(pi / pi_ref) = logp - ref_logp: unbiased, high variance, can be negative.

    Schulman 2020, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html)."""
    return logps - ref_logps


@register_kl_estimator("k2")
def kl_k2(logps, ref_logps):
    """k2 = 0.5 * (ref_logp - logp)^2: biased, low variance, non-negative. Schulman 2020, "Approximating KL
    Divergence"."""
    return 0.5 * jnp.square(ref_logps - logps)


@register_kl_estimator("k3")
def kl_k3(logps, ref_logps):
    """k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1: unbiased for KL(pi || pi_ref), non-negative.

    Schulman 2020, "Approximating KL Divergence"; GRPO's KL term, Shao et al. 2024 "DeepSeekMath" eq. 4.
    (The direction matters: exp(logp - ref) - ... estimates the reverse KL; DESIGN.md's known trap.)"""
    d = ref_logps - logps
    return jnp.exp(d) - d - 1.0


# ---------------------------------------------------------------- aggregation (sum / global denominator)


def _masked_sum(x, mask, axis=None):
    return jnp.sum(jnp.where(mask > 0, x * mask, 0.0), axis=axis)


@register_aggregation("seq_mean_token_mean")
def seq_mean_token_mean(per_token, mask, dens):
    """GRPO (Shao et al. 2024, eq. 3): mean over sequences of each sequence's token mean. The token mean is
    local to a sequence; the sequence count is global."""
    seq = _masked_sum(per_token, mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return jnp.sum(seq) / jnp.maximum(dens["num_sequences"], 1.0)


@register_aggregation("token_mean")
def token_mean(per_token, mask, dens):
    """DAPO's token-level loss (Yu et al. 2025, eq. 8; TRL 'dapo'/'bnpo'): sum over all tokens of the batch /
    total token count, so long completions are not down-weighted."""
    return _masked_sum(per_token, mask) / jnp.maximum(dens["num_tokens"], 1.0)


@register_aggregation("seq_mean_token_sum")
def seq_mean_token_sum(per_token, mask, dens):
    """Sum over each sequence's tokens, mean over sequences (verl's 'seq-mean-token-sum')."""
    return _masked_sum(per_token, mask) / jnp.maximum(dens["num_sequences"], 1.0)


@register_aggregation("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(per_token, mask, dens):
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", sec. 3.1): sum over all tokens /
    (number of sequences * a CONSTANT length), the max completion length (`norm_length`), never the token
    count, so no length bias. Same as TRL's 'dr_grpo'. (verl's 'seq-mean-token-sum-norm' omits the sequence
    count.)"""
    return _masked_sum(per_token, mask) / (jnp.maximum(dens["num_sequences"], 1.0) * dens["norm_length"])


# ---------------------------------------------------------------- the objective


def _row_keep(n, config, truncated, keep):
    rows = jnp.ones((n,), dtype=bool)
    if config.mask_truncated:
        if truncated is None:
            raise ValueError("loss.mask_truncated is True but no `truncated` [N] bool array was passed")
        rows = rows & ~jnp.asarray(truncated, dtype=bool).reshape(n)
    if keep is not None:
        rows = rows & jnp.asarray(keep, dtype=bool).reshape(n)
    return rows


def effective_mask(mask, config, truncated=None, keep=None):
    """(mask with dropped rows zeroed [N, T] float32, rows kept [N] bool)."""
    mask = jnp.asarray(mask, dtype=jnp.float32)
    rows = _row_keep(mask.shape[0], config, truncated, keep)
    return mask * rows[:, None], rows


def batch_denominators(mask, config, norm_length=None, truncated=None, keep=None) -> dict:
    """Global normalisers of one step, from the FULL batch's mask (call once, pass to every micro-batch).

    Returns float32 scalars: `num_tokens` (valid tokens of kept rows), `num_sequences` (kept rows: not truncated
    when `mask_truncated`, and `keep`), and `norm_length` when given (Dr.GRPO's constant; required by
    `seq_mean_token_sum_norm`). Under jit on a sharded batch these sums are global across devices.
    """
    validate_loss_config(config)
    m, rows = effective_mask(mask, config, truncated, keep)
    dens = {"num_tokens": jnp.sum(m), "num_sequences": jnp.sum(rows.astype(jnp.float32))}
    if norm_length is not None:
        if isinstance(norm_length, numbers.Real) and not norm_length > 0:
            raise ValueError(f"norm_length must be > 0 (the max completion length), got {norm_length!r}")
        dens["norm_length"] = jnp.asarray(norm_length, dtype=jnp.float32)
    elif config.aggregation in NEEDS_NORM_LENGTH:
        raise ValueError(
            f"loss.aggregation {config.aggregation!r} divides by a constant length: pass norm_length= "
            "(the runner passes rollout.max_new_tokens)")
    return dens


def _check_shapes(logps, old_logps, ref_logps, advantages, mask, entropy):
    if logps.ndim != 2:
        raise ValueError(f"logps must be [N, T], got shape {logps.shape}")
    for name, x in (("old_logps", old_logps), ("ref_logps", ref_logps), ("mask", mask), ("entropy", entropy)):
        if x is not None and x.shape != logps.shape:
            raise ValueError(f"{name} has shape {x.shape}, expected logps' shape {logps.shape}")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be [N] = {logps.shape[:1]} (one per sequence), got {advantages.shape}")


def _mean_over(x, weights, denom):
    return jnp.sum(jnp.where(weights > 0, x * weights, 0.0)) / jnp.maximum(denom, 1.0)


def policy_loss(logps, old_logps, ref_logps, advantages, mask, config, norm_length=None, truncated=None,
                entropy=None, denominators=None, keep=None):
    """The GRPO objective -> (loss scalar, metrics dict of scalars).

    logps [N, T]: the current policy's log-probs of the completion tokens (differentiate w.r.t. these).
    old_logps [N, T]: the behaviour policy's (sampler's) log-probs; None means on-policy, sg(logps).
    ref_logps [N, T]: the reference policy's; may be None when kl_beta == 0 (then it is never read).
    advantages [N]: one per sequence. mask [N, T]: 1.0 on completion tokens.
    config: the `loss` ConfigDict. norm_length: Dr.GRPO's constant (rollout.max_new_tokens).
    truncated [N] bool: completions that hit the length limit (used when loss.mask_truncated).
    entropy [N, T]: per-token policy entropy (needed when entropy_coef != 0; logged whenever given).
    denominators: `batch_denominators` of the full step batch, for micro-batches / shards; None = this batch.
    keep [N] bool: rows to include (drop_zero_std_groups' keep_mask repeated G times); None = all.

    Metrics: loss, policy_loss (the aggregated policy term), kl (token mean; only when kl_beta > 0), entropy
    (token mean, when given), clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean, ratio/mean,
    ratio/max, ratio/min, dual_clip_ratio (when dual clip is on). Means are over valid tokens, or over kept
    sequences for a sequence-level variant (GSPO, as TRL). With `denominators` given every metric is a
    local-sum / global-denominator, so micro-batch metrics combine exactly with `accumulate_metrics`
    (sums, and max / min for ratio/max / ratio/min; an empty batch gives ratio/max 0 and ratio/min +inf).
    """
    validate_loss_config(config)
    logps = jnp.asarray(logps, dtype=jnp.float32)
    old_logps = jax.lax.stop_gradient(logps) if old_logps is None else jnp.asarray(old_logps, jnp.float32)
    advantages = jnp.asarray(advantages, dtype=jnp.float32)
    mask = jnp.asarray(mask, dtype=jnp.float32)
    use_kl = float(config.kl_beta) > 0.0
    if use_kl and ref_logps is None:
        raise ValueError(f"loss.kl_beta = {config.kl_beta} > 0 needs ref_logps (pass them, or set kl_beta = 0)")
    if float(config.entropy_coef) != 0.0 and entropy is None:
        raise ValueError(f"loss.entropy_coef = {config.entropy_coef} != 0 needs the per-token `entropy` [N, T]")
    ref_logps = jnp.asarray(ref_logps, jnp.float32) if use_kl else None
    entropy = None if entropy is None else jnp.asarray(entropy, jnp.float32)
    _check_shapes(logps, old_logps, ref_logps, advantages, mask, entropy)

    m, rows = effective_mask(mask, config, truncated, keep)
    if denominators is None:
        dens = batch_denominators(mask, config, norm_length, truncated, keep)
    elif "norm_length" not in denominators and norm_length is not None:
        dens = {**denominators, "norm_length": jnp.asarray(norm_length, dtype=jnp.float32)}
    else:
        dens = denominators
    if config.aggregation in NEEDS_NORM_LENGTH and "norm_length" not in dens:
        raise ValueError(f"loss.aggregation {config.aggregation!r} needs denominators['norm_length']; "
                         "pass norm_length= to batch_denominators")
    aggregate = AGGREGATIONS[config.aggregation]

    term = VARIANTS[config.variant](logps, old_logps, advantages, m, config)
    per_token = term.loss
    metrics = {"policy_loss": aggregate(term.loss, m, dens)}
    if use_kl:
        kl = KL_ESTIMATORS[config.kl_estimator](jnp.where(m > 0, logps, 0.0), jnp.where(m > 0, ref_logps, 0.0))
        per_token = per_token + float(config.kl_beta) * kl
        metrics["kl"] = _mean_over(kl, m, dens["num_tokens"])
    if entropy is not None:
        if float(config.entropy_coef) != 0.0:
            per_token = per_token - float(config.entropy_coef) * entropy
        metrics["entropy"] = _mean_over(entropy, m, dens["num_tokens"])
    metrics["loss"] = aggregate(per_token, m, dens)
    metrics.update(_ratio_metrics(term, m, rows, dens))
    return metrics["loss"], metrics


def _ratio_metrics(term: PolicyTerm, m, rows, dens) -> dict:
    """Clip fractions and ratio stats, over valid tokens (token-level ratio) or kept sequences (GSPO)."""
    if term.ratio.ndim == 1:
        weights, denom = rows.astype(jnp.float32), dens["num_sequences"]
    else:
        weights, denom = m, dens["num_tokens"]
    low, high = term.clipped_low.astype(jnp.float32), term.clipped_high.astype(jnp.float32)
    out = {
        "clip_ratio/low_mean": _mean_over(low, weights, denom),
        "clip_ratio/high_mean": _mean_over(high, weights, denom),
        "clip_ratio/region_mean": _mean_over(jnp.maximum(low, high), weights, denom),
        "ratio/mean": _mean_over(term.ratio, weights, denom),
        "ratio/max": jnp.max(jnp.where(weights > 0, term.ratio, 0.0)),
        "ratio/min": jnp.min(jnp.where(weights > 0, term.ratio, jnp.inf)),
    }
    if term.dual_clipped is not None:
        out["dual_clip_ratio"] = _mean_over(term.dual_clipped.astype(jnp.float32), weights, denom)
    return out


METRIC_COMBINE = {"ratio/max": jnp.maximum, "ratio/min": jnp.minimum}  # every other metric adds


def accumulate_metrics(total: dict, new: dict) -> dict:
    """Combine the metrics of two micro-batches computed with the same global `denominators` (jit-friendly)."""
    return {k: METRIC_COMBINE.get(k, jnp.add)(total[k], new[k]) for k in total}
