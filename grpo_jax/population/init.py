"""The K members' starting hyperparameters, a function of the config alone (no state, no clock).

    members = initial_hyperparameters(config)     # list of K dicts, keys config.member_names(config.population)

- init 'equal' (AgileRL): every member starts at the values the config gives the hyperparameters (optim.lr, ...).
- init 'spread': each hyperparameter of `population.spread` starts on a grid of K points over its range (`grid`:
  geometric when min > 0, so a learning rate range (1e-5, 1e-4) gives K points evenly spaced in log over the decade;
  arithmetic when the range holds 0; integers rounded half up), member k on point k of the first spread name; the
  other spread names' grids are permuted by a generator seeded from config.seed (a Latin hypercube), so no two
  spread hyperparameters rise together over the members. The others start at the config's values.
"""

from __future__ import annotations

import math

import numpy as np

from grpo_jax.population import hyperparameters as hp
from grpo_jax.population.config import member_names
from grpo_jax.population.rng import population_rng

# Sub-stream of population_rng for init's permutations (selection and mutation use the main stream).
INIT_STREAM = 1


def grid(low, high, k: int, integer: bool = False) -> list:
    """K points from low to high inclusive: geometric when low > 0, else arithmetic; integers rounded half up."""
    if k == 1:
        points = [float(low)]
    elif low > 0:
        points = list(np.geomspace(float(low), float(high), k))
    else:
        points = list(np.linspace(float(low), float(high), k))
    if integer:
        return [int(math.floor(p + 0.5)) for p in points]
    return [float(p) for p in points]


def initial_hyperparameters(config) -> list[dict]:
    """The starting hyperparameters of each of the population.size members of the full experiment config."""
    pop = config.population
    k = int(pop.size)
    names = member_names(pop)
    base = {name: hp.config_value(config, name) for name in names}
    members = [dict(base) for _ in range(k)]
    if pop.init == "equal":
        return members
    if pop.init != "spread":
        raise ValueError(f"unknown population.init {pop.init!r}; valid: 'equal', 'spread'")
    for i, name in enumerate(pop.spread):
        low, high = pop.ranges[name]
        points = grid(low, high, k, hp.MUTABLE[name].integer)
        order = np.arange(k) if i == 0 else population_rng(int(config.seed), INIT_STREAM, i).permutation(k)
        for member, point in zip(order, points):
            members[int(member)][name] = hp.typed(name, point)
    return members
