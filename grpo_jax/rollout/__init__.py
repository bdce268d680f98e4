"""Rollout engines: prompts, settings and a key in; `sampling.Rollout` out (see engine.py for the protocol).

    engine = rollout.make(config.rollout.engine, model_config, mesh)
    out = engine.generate(params, prompt_tokens, prompt_mask, key, rollout.Settings(group_size=8, ...))

Every module of this package is imported here, so an engine is one new file that registers itself.
"""

import importlib
import pkgutil

from grpo_jax.rollout.engine import ENGINES, RolloutEngine, Settings, make, register_engine

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ENGINES", "RolloutEngine", "Settings", "make", "register_engine"]
