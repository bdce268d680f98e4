"""Multi-turn environments as plug-ins: the protocol, fault handling, tool-call formats and the built-ins.

    from grpo_jax import environments
    env = environments.make(config.environment)         # one object per rollout row
    env.reset(example)
    outcome = environments.safe_step(env, turn_text, timeout_s=config.environment.timeout_s,
                                     max_chars=environments.max_observation_chars(config.environment))
    outcome.observation.text, outcome.observation.done, outcome.fault, env.stats

  base.py          Environment, Observation, the registry (`register`, `make`) and the `environment` config section
  faults.py        safe_step (raise / timeout / oversize -> a bounded observation, counted), truncate_tokens
  tool_calls.py    the tool-call formats ('tag', 'hermes'): finding and parsing the call at the end of a turn
  calculator.py    'calculator': arithmetic through the bounded evaluator of grpo_jax.rewards.safe_eval
  guess_number.py  'guess_number': a stateful game answered 'higher' / 'lower' / 'correct'

`grpo_jax.rollout.multiturn.generate_episodes` steps them (one host round-trip per turn for the batch); a run with
`environment.name` set samples with it (`grpo_jax.evaluation.Sampler`), `environment.name = ''` is the single-turn
path. Every module of this package is imported here, so an environment is one new file that registers itself (or a
config file / caller that registers one before building the config).
"""

import importlib
import pkgutil

from grpo_jax.environments.base import (ENVIRONMENTS, ROLES, SINGLE_TURN, Environment, Observation,
                                        environment_config, for_task, make, names, register)
from grpo_jax.environments.faults import (FAULTS, StepOutcome, max_observation_chars, safe_step, truncate_text,
                                          truncate_tokens)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ENVIRONMENTS", "FAULTS", "ROLES", "Environment", "Observation", "StepOutcome", "environment_config",
           "make", "max_observation_chars", "names", "register", "safe_step", "truncate_text", "truncate_tokens"]
