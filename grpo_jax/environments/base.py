"""The Environment protocol, its registry (kind 'environment') and the `environment` config section.

    @environments.register("my_env", fields={"my_env_level": 3})   # --config.environment.name=my_env
    class MyEnv(environments.Environment):
        stop = ("</calc>",)                      # strings that end a model turn (EOS and max_turn_tokens do too)
        def reset(self, example: dict) -> None: ...
        def step(self, turn: str) -> environments.Observation: ...

One environment object serves one rollout row for one episode at a time: `reset(example)` starts an episode from
the task's example dict (the same example for the G rows of a group, so a stateful environment must derive its
state from the example alone, never from a global random stream), then each `step(turn)` receives the text of
the model's last turn (stop string included when one ended it) and returns an `Observation`. `stats` holds the
episode's counters (numbers, reset by `reset`) for the rollout to log; `Observation.info` holds values a reward
may read.

The registered object is the class (or any factory) called with the `environment` config section:
`make(section)` builds one. Its own `fields` become `environment.<field>` keys, read back as `self.config.<field>`;
`validate(section)` checks them when it is the selected environment. Core fields (declared here):

  environment.name                    a registered environment; '' = the task's `default_environment` (single-turn
                                      for a task that names none: every built-in task); 'none' = single-turn
  environment.max_turns               model turns per episode at most (>= 1)
  environment.max_turn_tokens         tokens per model turn at most (0 = only the episode budget,
                                      rollout.max_new_tokens, bounds a turn)
  environment.max_observation_tokens  tokens per inserted observation at most (0 = only the episode budget);
                                      a longer one is cut and marked (`faults.truncate_tokens`)
  environment.timeout_s               seconds one `step` may run (`faults.safe_step`)
  environment.observation_role        how an observation is inserted: 'inline' (its text right after the turn),
                                      'tool' or 'user' (a chat turn in that role); '' = the environment's own
                                      `observation_role`
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import ml_collections

from grpo_jax import registry

ENVIRONMENTS = registry.kind("environment", factory=True, section="environment")
ROLES = ("inline", "tool", "user")
SINGLE_TURN = "none"  # environment.name that forces single-turn, whatever the task's default

CORE_FIELDS = {
    "name": "",
    "max_turns": 4,
    "max_turn_tokens": 0,
    "max_observation_tokens": 256,
    "timeout_s": 5.0,
    "observation_role": "",
}


@dataclasses.dataclass(frozen=True)
class Observation:
    """What an environment answers to one model turn.

    text  tokenised once and inserted after the turn (as `observation_role` says); None inserts nothing;
    done  the episode ends with this turn: no model turn follows, so the rollout inserts no text after it;
    info  values rewards may read for this row (e.g. {'solved': True}); the last observation's info is the episode's.
    """
    text: Optional[str] = None
    done: bool = False
    info: dict = dataclasses.field(default_factory=dict)


class Environment:
    """Base class of a multi-turn environment (see the module docstring for the protocol).

    `stop` may be a class attribute or set per instance in `__init__` (e.g. from a config field);
    `observation_role` is the role the environment's observations take when `environment.observation_role` is ''.
    Subclasses that override `__init__` call `super().__init__(config)`."""

    stop: tuple = ()
    observation_role: str = "inline"

    def __init__(self, config=None):
        self.config = environment_config() if config is None else config
        self.stats: dict[str, float] = {}

    @property
    def role(self) -> str:
        """The role observations are inserted in: the config's `observation_role`, or the environment's own."""
        return self.config["observation_role"] or self.observation_role

    def reset(self, example: dict) -> None:
        raise NotImplementedError

    def step(self, turn: str) -> Observation:
        raise NotImplementedError


def register(name: str, obj: Any = None, *, fields: Optional[dict] = None, validate=None, replace: bool = False):
    """Register an environment class (or factory `(section) -> Environment`) under `name`; without `obj`, a
    decorator. `fields` ({name: default}) become `environment.<field>` config keys; `validate(section)` raises
    ValueError naming a bad field when this environment is the selected one."""
    return ENVIRONMENTS.register(name, obj, fields=fields, validate=validate, replace=replace)


def names() -> list[str]:
    return ENVIRONMENTS.names()


def environment_config(name: str = "", **fields) -> ml_collections.ConfigDict:
    """The `environment` section: every declared field at its default, then `name` and `fields` set."""
    cfg = ml_collections.ConfigDict(registry.section_fields("environment"))
    cfg.name = name
    for field, value in fields.items():
        if field not in cfg:
            raise ValueError(f"environment config has no field {field!r}; fields: {', '.join(sorted(cfg))}")
        cfg[field] = value
    return cfg


def for_task(section, task) -> Optional[ml_collections.ConfigDict]:
    """The environment section a run plays, or None for single-turn: `section` when its name names an environment;
    with name '' the task's `default_environment` (a copy of `section` with that name; None when the task names
    none); with name 'none', None."""
    name = section["name"]
    if name == SINGLE_TURN:
        return None
    if not name:
        name = getattr(task, "default_environment", "") or ""
        if not name:
            return None
        section = ml_collections.ConfigDict(section.to_dict() if hasattr(section, "to_dict") else dict(section))
        section.name = name
        registry.ensure_valid("environment", section)
    return section


def make(section) -> Environment:
    """A fresh environment of the kind `section.name` selects, configured by `section` (a ConfigDict or a plain
    dict of every field; validated first)."""
    if isinstance(section, dict):
        section = ml_collections.ConfigDict(section)
    registry.ensure_valid("environment", section)
    name = section["name"]
    if not name or name == SINGLE_TURN:
        raise ValueError(f"environment.name is {name!r} (single-turn): there is no environment to make")
    return ENVIRONMENTS.entry(name).obj(section)


def _validate(section) -> None:
    name = section["name"]
    if name and name != SINGLE_TURN and name not in ENVIRONMENTS:
        valid = ", ".join(repr(n) for n in ["", SINGLE_TURN, *ENVIRONMENTS.names()])
        raise ValueError(f"unknown environment.name {name!r}; valid: {valid} ('' = the task's default, "
                         f"{SINGLE_TURN!r} = single-turn)")
    for field, low in (("max_turns", 1), ("max_turn_tokens", 0), ("max_observation_tokens", 0)):
        if section[field] < low:
            raise ValueError(f"environment.{field} must be >= {low}, got {section[field]!r}")
    if not section["timeout_s"] > 0:
        raise ValueError(f"environment.timeout_s must be > 0, got {section['timeout_s']!r}")
    role = section["observation_role"]
    if role and role not in ROLES:
        raise ValueError(f"unknown environment.observation_role {role!r}; valid: '', "
                         f"{', '.join(repr(r) for r in ROLES)}")
    if name and name != SINGLE_TURN:
        entry = ENVIRONMENTS.entry(name)
        registry.check_types("environment", section, entry.fields)
        if entry.validate is not None:
            entry.validate(section)


registry.declare_fields("environment", "grpo_jax.environments", CORE_FIELDS, _validate)
