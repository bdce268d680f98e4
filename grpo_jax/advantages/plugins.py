"""The kinds of advantage plug-in: estimators, and the baselines and scales of the default estimator.

    @advantages.register_estimator("name", fields={...}, validate=check)
    def my_estimator(rewards, config, *, per_reward, reward_weights):   # [P, G], loss cfg, [P, G, R] | None, [R] | None
        ...                                                              # -> advantages [P, G]

    @advantages.register_baseline("name")     fn(rewards [P, G]) -> baseline [P, G] (or broadcastable)
    @advantages.register_scale("name")        fn(rewards [P, G], eps) -> divisor broadcastable to [P, G]

An estimator receives the total (weighted) rewards [P, G] and, when the caller has them (the runner does), the
unweighted per-reward scores [P, G, R] with the reward weights [R] in the same order (`config.rewards`); a caller
without them (`group_advantages(rewards, cfg)`) passes None for both. Selected by `loss.advantage_estimator`,
`loss.advantage_baseline`, `loss.advantage_scale`; fields and validation as for every plug-in (grpo_jax.registry).
"""

from __future__ import annotations

from grpo_jax import registry

ESTIMATORS = registry.kind("advantage_estimator", section="loss", selector="advantage_estimator")
BASELINES = registry.kind("advantage_baseline", section="loss", selector="advantage_baseline")
SCALES = registry.kind("advantage_scale", section="loss", selector="advantage_scale")


def _registrar(table: registry.Registry):
    def register(name: str, *, fields=None, validate=None, presets=None):
        return table.register(name, fields=fields, validate=validate, presets=presets)

    register.__doc__ = f"Decorator: register a {table.kind} under `name` (see grpo_jax.advantages.plugins)."
    return register


register_estimator = _registrar(ESTIMATORS)
register_baseline = _registrar(BASELINES)
register_scale = _registrar(SCALES)
