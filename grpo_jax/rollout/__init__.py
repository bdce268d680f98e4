"""The rollout path: prompts, one `Settings` and a key in; a `Rollout` out.

    settings = rollout.Settings.from_config(config.rollout, stop_ids=..., pad_id=...)
    engine = rollout.make(settings.engine, model_config, mesh)
    out = engine.generate(params, prompt_tokens, prompt_mask, key, settings)

  result.py       Rollout, the engines' output
  settings.py     Settings: every rollout setting, one hashable object built from the config once
  engine.py       the engine protocol and registry (`register_engine(name, fields=...)`, `make`)
  jitted.py       engine 'jitted' (the default): validation, placement, the call
  program.py      its compiled program, keyed on the Settings
  decode_loop.py  its decode loop: one token per row per step, compaction, refill
  draw.py         drawing one token per row from logits (temperature, top-k, top-p, greedy)
  multiturn.py    multi-turn episodes (`generate_episodes`): each row's cache kept across turns, observations
                  inserted as tokens (action_mask 0); a library function, not yet an engine the runner calls
  multiturn_reference.py  its no-cache reference for tests

Every module of this package is imported here, so an engine is one new file that registers itself.
"""

import importlib
import pkgutil

from grpo_jax.rollout.engine import ENGINES, RolloutEngine, make, register_engine
from grpo_jax.rollout.result import Rollout
from grpo_jax.rollout.settings import TRACED, Settings

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ENGINES", "Rollout", "RolloutEngine", "Settings", "TRACED", "make", "register_engine"]
