"""The three kinds of loss plug-in and what a loss variant returns.

    @losses.register_variant("name", fields={"my_coef": 1.0}, validate=check, inputs=("weights",))
    def my_variant(logps, old_logps, advantages, mask, config, *, weights) -> PolicyTerm: ...

    @losses.register_kl_estimator("name")      fn(logps [N, T], ref_logps [N, T]) -> per-token KL [N, T]
    @losses.register_aggregation("name")       fn(per_token [N, T], mask [N, T], denominators) -> scalar

`fields` become `loss.<field>` config keys (settable with `--config.loss.<field>=...`), type-checked against their
defaults and passed to `validate(loss_config)` when the plug-in is the selected one (`loss.variant`,
`loss.kl_estimator`, `loss.aggregation`), once per run. A variant's `inputs` are per-row batch arrays [N, ...] it
reads: put them in the train step's batch under those names and they reach the variant as keyword arguments.
`vanishes_at_zero_advantage=True` is a variant's (or KL estimator's) word that its per-token loss is 0, with a
zero gradient, for a completion whose advantage is exactly 0 whatever its log-probs (e.g. A * f(ratio) with f
finite). The train step then leaves zero-advantage completions out of the packed step (optim.skip_zero_advantage
'auto') when every selected term says so; an undeclared plug-in is never skipped, so the default is always exact.
An aggregation's `inputs` are the denominators it needs besides num_tokens / num_sequences (e.g. 'norm_length').
A KL estimator's `inputs` are per-token arrays it reads instead of ref_logps (then passed as None), as keyword
arguments; the train step computes 'token_kl', the exact per-token KL over the vocabulary (kl_full.py).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax

from grpo_jax import registry

VARIANTS = registry.kind("loss_variant", section="loss", selector="variant")
KL_ESTIMATORS = registry.kind("kl_estimator", section="loss", selector="kl_estimator")
AGGREGATIONS = registry.kind("aggregation", section="loss", selector="aggregation")


def _registrar(table: registry.Registry):
    def register(name: str, *, fields=None, validate=None, presets=None, inputs=(), vanishes_at_zero_advantage=False):
        return table.register(name, fields=fields, validate=validate, presets=presets, inputs=inputs,
                              vanishes_at_zero_advantage=vanishes_at_zero_advantage)

    register.__doc__ = f"Decorator: register a {table.kind} under `name` (see grpo_jax.losses.plugins)."
    return register


register_variant = _registrar(VARIANTS)
register_kl_estimator = _registrar(KL_ESTIMATORS)
register_aggregation = _registrar(AGGREGATIONS)


class PolicyTerm(NamedTuple):
    """What a variant returns: the per-token policy loss and, for metrics, its ratio and clip indicators.

    `ratio` and the indicators are [N, T] for token-level variants and [N] for sequence-level ones (GSPO).
    `dual_clipped` is None when dual clip is off. `metrics`: the variant's own metrics, a
    `step_metrics.Metrics` (each with its reduction: 'sum' for a local sum over a global denominator, 'mean',
    'max', 'min'), or None; they appear in the train step's metrics and metrics.jsonl under their names.
    """

    loss: jax.Array
    ratio: jax.Array
    clipped_low: jax.Array
    clipped_high: jax.Array
    dual_clipped: Optional[jax.Array] = None
    metrics: Optional[dict] = None
