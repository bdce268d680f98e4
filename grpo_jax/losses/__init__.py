"""The GRPO objective and its plug-ins: loss variants, KL estimators, aggregations (one module each, found here).

    loss, metrics = losses.policy_loss(logps, old_logps, ref_logps, adv_n, mask, config.loss,
                                       norm_length=config.rollout.max_new_tokens)

`objective.py` is the objective; `plugins.py` the registries and `register_variant` / `register_kl_estimator` /
`register_aggregation`; every other module of this package is imported here (discovery: adding a variant is
adding a file), and registers its plug-ins on import.
"""

import importlib
import pkgutil

from grpo_jax.losses.objective import (
    CORE_FIELDS, TRACEABLE_FIELDS, accumulate_metrics, batch_denominators, effective_mask, ensure_valid, policy_loss,
    terms_alive_at_zero_advantage, validate_loss_config)
from grpo_jax.losses.plugins import (
    AGGREGATIONS, KL_ESTIMATORS, VARIANTS, PolicyTerm, register_aggregation, register_kl_estimator,
    register_variant)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

from grpo_jax.losses.kl import kl_k1, kl_k2, kl_k3  # noqa: E402  (names the tests and docs use)
from grpo_jax.losses.ppo import dual_clip_loss, ppo_clipped_loss, sequence_log_ratio  # noqa: E402

__all__ = [
    "policy_loss", "batch_denominators", "effective_mask", "accumulate_metrics", "validate_loss_config",
    "ensure_valid", "terms_alive_at_zero_advantage", "PolicyTerm", "VARIANTS", "KL_ESTIMATORS", "AGGREGATIONS",
    "register_variant",
    "register_kl_estimator", "register_aggregation", "CORE_FIELDS", "TRACEABLE_FIELDS", "kl_k1", "kl_k2", "kl_k3",
    "ppo_clipped_loss", "dual_clip_loss", "sequence_log_ratio",
]
