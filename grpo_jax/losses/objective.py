"""The GRPO objective: policy term (by variant) + beta * KL to the reference - entropy bonus, aggregated.

Inputs are per-token arrays over completion positions: logps / old_logps / ref_logps / mask [N, T], one advantage
per sequence [N]. `mask` is 1.0 on the tokens TRAINED on, the policy's own sampled tokens: the train step passes its
batch's action_mask, which is 0 on a multi-turn rollout's inserted observation tokens (present in the sequence and
attended, never trained) and equals the completion mask single-turn. Everything here reads only this mask: the
policy term (GSPO's sequence ratio included), KL, entropy (metric and bonus), the ratio / clip metrics and every
denominator, so a mask-0 position adds nothing to the loss or a metric and the loss's gradient with respect to its
log-prob is exactly 0. The variant, the KL estimator and the aggregation are plug-ins
looked up by name (`loss.variant`, `loss.kl_estimator`, `loss.aggregation`; see `plugins.py`).

Per token:  loss_t = policy_t + kl_beta * kl_t - entropy_coef * entropy_t,
then one aggregation over the WHOLE step's batch. Every aggregation is carried as (sum, denominator): the sums are
local to the rows given, the denominators (`batch_denominators`) are global, computed once from the full batch.
So for micro-batches b of one step,

    dens = batch_denominators(mask, cfg, norm_length, truncated, keep)          # full batch, once
    sum_b policy_loss(<rows of b>, cfg, denominators=dens)[0] == policy_loss(<all rows>, cfg)[0]

and the same for the gradient: gradient accumulation and data sharding give exactly the full-batch gradient
(normalise over the whole step's batch, not per device or per micro-batch; Tunix's (sum, denominator)).

Rows that leave the update -- completions hit by `mask_truncated` (`truncated` [N] bool) or groups dropped by
`drop_zero_std_groups` (`keep` [N] bool) -- have their mask zeroed and count in no denominator.
Masked positions are never read (values there may be anything, even NaN).

The core fields of the `loss` section declared here:

  variant            the loss variant plug-in                       ('grpo')
  kl_beta            weight of the per-token KL to the reference    (0.04, DeepSeekMath / TRL <= 0.18)
  kl_estimator       the KL estimator plug-in                       ('k3': Schulman 2020; DeepSeekMath's)
  aggregation        the aggregation plug-in                        ('seq_mean_token_mean')
  entropy_coef       loss -= entropy_coef * aggregated entropy      (0.0)
  mask_truncated     drop completions that hit the length limit     (False; DAPO's overlong filtering)
  num_iterations     mu: updates per rollout                        (1)

Traced hyperparameters: `policy_loss(..., hyperparameters={field: value})` uses each given value in place of the
config's field (`TRACEABLE_FIELDS`: kl_beta, clip_low, clip_high, entropy_coef), so one trace serves values that
differ per call or per population member under `jax.vmap`; the formulas are the same code, reading the value as an
array. A field given this way is never tested as a Python number, so what the config's value decides statically
follows the key's presence instead: a given kl_beta forms the KL term (ref_logps / the estimator's inputs needed;
kl_beta = 0 then adds 0 * kl, and `kl` is logged), a given entropy_coef subtracts coef * entropy (entropy needed).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from grpo_jax import registry
from grpo_jax.losses.plugins import AGGREGATIONS, KL_ESTIMATORS, VARIANTS, PolicyTerm
from grpo_jax.step_metrics import Metrics, combine_micro_batches

CORE_FIELDS = {
    "variant": "grpo",
    "kl_beta": 0.04,
    "kl_estimator": "k3",
    "aggregation": "seq_mean_token_mean",
    "entropy_coef": 0.0,
    "mask_truncated": False,
    "num_iterations": 1,
}


# The loss fields `policy_loss(hyperparameters=...)` may give as (traced) values: every formula reading them treats
# them as arrays. Others (dual_clip, the variant's own fields, ...) decide the program's structure or are not
# written for it.
TRACEABLE_FIELDS = ("kl_beta", "clip_low", "clip_high", "entropy_coef")


class _WithValues:
    """The loss ConfigDict seen with some fields replaced by (traced) values: attribute, item and .get access."""

    def __init__(self, config, values: dict):
        self._config, self._values = config, values

    def __getattr__(self, name):
        values = self.__dict__["_values"]
        return values[name] if name in values else getattr(self.__dict__["_config"], name)

    def __getitem__(self, name):
        return self._values[name] if name in self._values else self._config[name]

    def __contains__(self, name):
        return name in self._values or name in self._config

    def get(self, name, default=None):
        return self._values[name] if name in self._values else self._config.get(name, default)


def _traced_values(hyperparameters) -> dict:
    values = dict(hyperparameters or {})
    bad = sorted(set(values) - set(TRACEABLE_FIELDS))
    if bad:
        raise ValueError(f"policy_loss(hyperparameters=) names {bad}; the loss fields that may be given as traced "
                         f"values are {list(TRACEABLE_FIELDS)}")
    return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


def _validate_core(cfg) -> None:
    kl_beta = float(cfg["kl_beta"])
    if kl_beta < 0.0:
        raise ValueError(f"loss.kl_beta must be >= 0, got {kl_beta!r}")
    num_iterations = cfg["num_iterations"]
    if num_iterations < 1:
        raise ValueError(f"loss.num_iterations must be an integer >= 1, got {num_iterations!r}")


registry.declare_fields("loss", "grpo_jax.losses", CORE_FIELDS, _validate_core)


def validate_loss_config(cfg) -> None:
    """Check the `loss` section (core fields, the advantage fields when grpo_jax.advantages is imported, and the
    selected plug-ins' fields); ValueError naming the bad field and value."""
    registry.validate_section("loss", cfg)


def ensure_valid(cfg) -> None:
    """`validate_loss_config` unless this exact section was validated already (the run validates once)."""
    registry.ensure_valid("loss", cfg)


def terms_alive_at_zero_advantage(config, *, use_kl=None, traced=()) -> list:
    """The terms of this loss that may be non-zero, or have a non-zero gradient, on a completion whose advantage is
    exactly 0 (empty list: every term vanishes there, so such a completion adds nothing to the loss or the
    gradient while still counting in the denominators). Each plug-in declares this about itself
    (`vanishes_at_zero_advantage`); the entropy bonus is this module's own term.

    use_kl: whether the KL term is formed (None: loss.kl_beta > 0); `traced`: loss fields given per call or per
    population member (`TRACEABLE_FIELDS`), which count as possibly non-zero."""
    use_kl = float(config.kl_beta) > 0.0 if use_kl is None else bool(use_kl)
    alive = []
    if not VARIANTS.entry(config.variant).vanishes_at_zero_advantage:
        alive.append(f"the policy term of loss.variant {config.variant!r} (its plug-in does not declare "
                     "vanishes_at_zero_advantage)")
    if use_kl and not KL_ESTIMATORS.entry(config.kl_estimator).vanishes_at_zero_advantage:
        why = f"loss.kl_beta = {config.kl_beta}" if float(config.kl_beta) > 0 else "a member's kl_beta range"
        alive.append(f"the KL term ({why})")
    if "entropy_coef" in traced or float(config.entropy_coef) != 0.0:
        why = "a member's entropy_coef" if "entropy_coef" in traced else f"loss.entropy_coef = {config.entropy_coef}"
        alive.append(f"the entropy bonus ({why})")
    return alive


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


def _needs_norm_length(config) -> bool:
    return "norm_length" in AGGREGATIONS.entry(config.aggregation).inputs


def batch_denominators(mask, config, norm_length=None, truncated=None, keep=None) -> dict:
    """Global normalisers of one step, from the FULL batch's mask (call once, pass to every micro-batch).

    `mask`: the tokens trained on (the train step's action_mask), so every denominator counts model tokens only.
    Returns float32 scalars: `num_tokens` (valid tokens of kept rows), `num_sequences` (kept rows: not truncated
    when `mask_truncated`, and `keep`), and `norm_length` when given (Dr.GRPO's constant; required by an
    aggregation that declares it, `seq_mean_token_sum_norm`). Under jit on a sharded batch these sums are global
    across devices.
    """
    ensure_valid(config)
    m, rows = effective_mask(mask, config, truncated, keep)
    dens = {"num_tokens": jnp.sum(m), "num_sequences": jnp.sum(rows.astype(jnp.float32))}
    if norm_length is not None:
        if isinstance(norm_length, numbers.Real) and not norm_length > 0:
            raise ValueError(f"norm_length must be > 0 (the max completion length), got {norm_length!r}")
        dens["norm_length"] = jnp.asarray(norm_length, dtype=jnp.float32)
    elif _needs_norm_length(config):
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


def _variant_inputs(entry, inputs, n, kind="loss.variant"):
    missing = [name for name in entry.inputs if name not in (inputs or {})]
    if missing:
        raise ValueError(f"{kind} {entry.name!r} reads the per-row inputs {list(entry.inputs)}; missing "
                         f"{missing} (put them in the train step's batch, or pass inputs= to policy_loss)")
    out = {}
    for name in entry.inputs:
        value = jnp.asarray(inputs[name])
        if value.shape[:1] != (n,):
            raise ValueError(f"input {name!r} of {kind} {entry.name!r} must have one row per sequence "
                             f"[{n}, ...], got shape {value.shape}")
        out[name] = value
    return out


def policy_loss(logps, old_logps, ref_logps, advantages, mask, config, norm_length=None, truncated=None,
                entropy=None, denominators=None, keep=None, inputs=None, hyperparameters=None):
    """The GRPO objective -> (loss scalar, metrics: a `step_metrics.Metrics` of scalars).

    logps [N, T]: the current policy's log-probs of the completion tokens (differentiate w.r.t. these).
    old_logps [N, T]: the behaviour policy's (sampler's) log-probs; None means on-policy, sg(logps).
    ref_logps [N, T]: the reference policy's; may be None when kl_beta == 0 (then it is never read) or when the
        KL estimator declares inputs of its own (kl_estimator 'full' reads inputs['token_kl'] instead).
    advantages [N]: one per sequence. mask [N, T]: 1.0 on the tokens trained on (the train step's action_mask:
        the policy's sampled tokens, 0 on inserted observation tokens; module docstring).
    config: the `loss` ConfigDict. norm_length: Dr.GRPO's constant (rollout.max_new_tokens).
    truncated [N] bool: completions that hit the length limit (used when loss.mask_truncated).
    entropy [N, T]: per-token policy entropy (needed when entropy_coef != 0; logged whenever given).
    denominators: `batch_denominators` of the full step batch, for micro-batches / shards; None = this batch.
    keep [N] bool: rows to include (drop_zero_std_groups' keep_mask repeated G times); None = all.
    inputs: {name: [N, ...]} per-row arrays; the variant and the KL estimator receive those they declare
        (`register_variant(inputs=)`, `register_kl_estimator(inputs=)`).
    hyperparameters: {field: scalar} of `TRACEABLE_FIELDS`, used in place of config's (may be traced; module
        docstring); None = the config's values.

    Metrics: loss, policy_loss (the aggregated policy term), kl (token mean; only when kl_beta > 0), entropy
    (token mean, when given), clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean, ratio/mean,
    ratio/max, ratio/min, dual_clip_ratio (when dual clip is on), and the variant's own `PolicyTerm.metrics`.
    Means are over valid tokens, or over kept sequences for a sequence-level variant (GSPO, as TRL). With
    `denominators` given every 'sum' metric is a local-sum / global-denominator, so micro-batch metrics combine
    exactly with `accumulate_metrics` (sums, and max / min for ratio/max / ratio/min; an empty batch gives
    ratio/max 0 and ratio/min +inf).
    """
    ensure_valid(config)
    logps = jnp.asarray(logps, dtype=jnp.float32)
    old_logps = jax.lax.stop_gradient(logps) if old_logps is None else jnp.asarray(old_logps, jnp.float32)
    advantages = jnp.asarray(advantages, dtype=jnp.float32)
    mask = jnp.asarray(mask, dtype=jnp.float32)
    traced = _traced_values(hyperparameters)
    use_kl = "kl_beta" in traced or float(config.kl_beta) > 0.0
    kl_beta = traced.get("kl_beta", float(config.kl_beta))
    use_entropy = "entropy_coef" in traced or float(config.entropy_coef) != 0.0
    entropy_coef = traced.get("entropy_coef", float(config.entropy_coef))
    kl_estimator = KL_ESTIMATORS.entry(config.kl_estimator)
    if use_kl and ref_logps is None and not kl_estimator.inputs:
        raise ValueError(f"loss.kl_beta = {'<given>' if 'kl_beta' in traced else config.kl_beta} > 0 needs "
                         "ref_logps (pass them, or set kl_beta = 0)")
    if use_entropy and entropy is None:
        raise ValueError(f"loss.entropy_coef = {'<given>' if 'entropy_coef' in traced else config.entropy_coef} "
                         "!= 0 needs the per-token `entropy` [N, T]")
    ref_logps = jnp.asarray(ref_logps, jnp.float32) if use_kl and ref_logps is not None else None
    entropy = None if entropy is None else jnp.asarray(entropy, jnp.float32)
    _check_shapes(logps, old_logps, ref_logps, advantages, mask, entropy)

    m, rows = effective_mask(mask, config, truncated, keep)
    if denominators is None:
        dens = batch_denominators(mask, config, norm_length, truncated, keep)
    elif "norm_length" not in denominators and norm_length is not None:
        dens = {**denominators, "norm_length": jnp.asarray(norm_length, dtype=jnp.float32)}
    else:
        dens = denominators
    aggregation = AGGREGATIONS.entry(config.aggregation)
    for name in aggregation.inputs:
        if name not in dens:
            raise ValueError(f"loss.aggregation {config.aggregation!r} needs denominators[{name!r}]; "
                             f"pass {name}= to batch_denominators")
    aggregate = aggregation.obj

    variant = VARIANTS.entry(config.variant)
    term = variant.obj(logps, old_logps, advantages, m, _WithValues(config, traced) if traced else config,
                       **_variant_inputs(variant, inputs, logps.shape[0]))
    per_token = term.loss
    metrics = Metrics()
    metrics.add("policy_loss", aggregate(term.loss, m, dens))
    if use_kl:
        ref_masked = None if ref_logps is None else jnp.where(m > 0, ref_logps, 0.0)
        kl = kl_estimator.obj(jnp.where(m > 0, logps, 0.0), ref_masked,
                              **_variant_inputs(kl_estimator, inputs, logps.shape[0], "loss.kl_estimator"))
        per_token = per_token + kl_beta * kl
        metrics.add("kl", _mean_over(kl, m, dens["num_tokens"]))
    if entropy is not None:
        if use_entropy:
            per_token = per_token - entropy_coef * entropy
        metrics.add("entropy", _mean_over(entropy, m, dens["num_tokens"]))
    metrics.add("loss", aggregate(per_token, m, dens))
    metrics.update_from(_ratio_metrics(term, m, rows, dens))
    if term.metrics:
        clash = sorted(set(term.metrics) & set(metrics))
        if clash:
            raise ValueError(f"loss.variant {config.variant!r} returns metrics {clash}, names the objective uses")
        metrics.update_from(term.metrics)
    return metrics["loss"], metrics


def _ratio_metrics(term: PolicyTerm, m, rows, dens) -> Metrics:
    """Clip fractions and ratio stats, over valid tokens (token-level ratio) or kept sequences (GSPO)."""
    if term.ratio.ndim == 1:
        weights, denom = rows.astype(jnp.float32), dens["num_sequences"]
    else:
        weights, denom = m, dens["num_tokens"]
    low, high = term.clipped_low.astype(jnp.float32), term.clipped_high.astype(jnp.float32)
    out = Metrics()
    out.add("clip_ratio/low_mean", _mean_over(low, weights, denom))
    out.add("clip_ratio/high_mean", _mean_over(high, weights, denom))
    out.add("clip_ratio/region_mean", _mean_over(jnp.maximum(low, high), weights, denom))
    out.add("ratio/mean", _mean_over(term.ratio, weights, denom))
    out.add("ratio/max", jnp.max(jnp.where(weights > 0, term.ratio, 0.0)), "max")
    out.add("ratio/min", jnp.min(jnp.where(weights > 0, term.ratio, jnp.inf)), "min")
    if term.dual_clipped is not None:
        out.add("dual_clip_ratio", _mean_over(term.dual_clipped.astype(jnp.float32), weights, denom))
    return out


def accumulate_metrics(total: dict, new: dict) -> Metrics:
    """Combine the metrics of two micro-batches computed with the same global `denominators` (jit-friendly),
    each by its declared reduction."""
    return combine_micro_batches(total, new)
