"""The hyperparameters a population member may carry and mutate: name -> config path, type, default range, move.

    name           config key            type   default range   default move
    lr             optim.lr              float  (1e-7, 1e-3)    factor
    kl_beta        loss.kl_beta          float  (0.0, 0.2)      factor
    clip_low       loss.clip_low         float  (0.05, 0.4)     factor
    clip_high      loss.clip_high        float  (0.05, 0.5)     factor
    entropy_coef   loss.entropy_coef     float  (0.0, 0.01)     uniform
    temperature    rollout.temperature   float  (0.5, 1.5)      factor
    top_p          rollout.top_p         float  (0.5, 1.0)      factor
    group_size     rollout.group_size    int    (2, 8)          int_step

A member's hyperparameters are a dict keyed by these short names (config keys cannot hold dots, so the names are
the config keys of `population.ranges` / `population.moves` and the keys of lineage rows); `PATHS` and
`with_hyperparameters` map them back to the config. `lr` is the peak learning rate: the member's schedule is the
config's schedule scaled to it. `group_size` is an effective group size: the sampler always draws
`rollout.group_size` completions per prompt (the fixed maximum) and a member with a smaller effective size masks the
rest out of its advantages and loss, so the range's max is at most `rollout.group_size` (validated).

Adding a mutable hyperparameter is a row here plus the train step / sampler carrying it per member as a traced value
(a value read as a Python number at trace time cannot differ between members of one program).
"""

from __future__ import annotations

import copy
import dataclasses

FLOAT_MOVES = ("factor", "log_uniform", "uniform")
INT_MOVES = ("int_step",)


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One mutable hyperparameter: the config key it sets, whether it is an integer, its default range and move."""
    name: str
    path: str
    integer: bool
    range: tuple
    move: str

    @property
    def moves(self) -> tuple:
        """The moves valid for this hyperparameter's type."""
        return INT_MOVES if self.integer else FLOAT_MOVES


MUTABLE: dict[str, Hyperparameter] = {h.name: h for h in (
    Hyperparameter("lr", "optim.lr", False, (1e-7, 1e-3), "factor"),
    Hyperparameter("kl_beta", "loss.kl_beta", False, (0.0, 0.2), "factor"),
    Hyperparameter("clip_low", "loss.clip_low", False, (0.05, 0.4), "factor"),
    Hyperparameter("clip_high", "loss.clip_high", False, (0.05, 0.5), "factor"),
    Hyperparameter("entropy_coef", "loss.entropy_coef", False, (0.0, 0.01), "uniform"),
    Hyperparameter("temperature", "rollout.temperature", False, (0.5, 1.5), "factor"),
    Hyperparameter("top_p", "rollout.top_p", False, (0.5, 1.0), "factor"),
    Hyperparameter("group_size", "rollout.group_size", True, (2, 8), "int_step"),
)}

PATHS = {name: h.path for name, h in MUTABLE.items()}


def names() -> tuple:
    """The mutable hyperparameters' names, in table order."""
    return tuple(MUTABLE)


def get(name: str) -> Hyperparameter:
    """The table row of `name`; ValueError naming the mutable ones."""
    if name not in MUTABLE:
        raise ValueError(f"{name!r} is not a mutable hyperparameter; mutable: {', '.join(MUTABLE)}")
    return MUTABLE[name]


def typed(name: str, value):
    """`value` as the hyperparameter's Python type (int for integers, else float)."""
    return int(value) if MUTABLE[name].integer else float(value)


def config_value(config, name: str):
    """The value the full experiment config gives hyperparameter `name` (at its config path)."""
    node = config
    for part in get(name).path.split("."):
        node = node[part]
    return typed(name, node)


def with_hyperparameters(config, hyperparameters: dict):
    """A deep copy of the full experiment config with each hyperparameter of the dict set at its config path: the
    single-policy config a member's settings stand for (the reference a stacked member must reproduce)."""
    out = copy.deepcopy(config)
    for name, value in hyperparameters.items():
        *parents, leaf = get(name).path.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = typed(name, value)
    return out
