"""Mutation: one member's hyperparameters -> new hyperparameters and a description of what changed.

    new, applied = mutate(hyperparameters, config.population, rng)

With probabilities proportional to the weights `population.mutation.none` and `.hyperparameter` (AgileRL reads its
mutation probabilities so), either nothing changes ({'kind': 'none'}) or one hyperparameter of `population.mutate`,
drawn uniformly, moves by its `population.moves.<name>` within `population.ranges.<name>` = [lo, hi]:

  factor       x * f, f drawn uniformly from `population.mutation.factors` (0.8, 1.2), clipped into [lo, hi]
               (a value of 0 stays 0: use 'uniform' for a range that starts at 0)
  log_uniform  exp(uniform(log lo, log hi)), a fresh draw (lo > 0)
  uniform      uniform(lo, hi), a fresh draw
  int_step     round(x * f) (half up), but always a move of at least 1 in f's direction (AgileRL's int(4 * 1.2) = 4
               never grows), reflected at the bounds (hi + d -> hi - d; lo - d -> lo + d) and clipped; if that lands
               back on x, one step toward the inside. So it moves whenever lo < hi.

The description is JSON-able: {'kind': 'hyperparameter', 'name', 'move', 'from', 'to'} plus 'factor' for factor
and int_step moves. Every draw comes from `rng` in a fixed order: the kind, the name, the move's draw.
"""

from __future__ import annotations

import math

import numpy as np

from grpo_jax.population import hyperparameters as hp


def choose_kind(pop, rng: np.random.Generator) -> str:
    """'none' or 'hyperparameter', with probabilities proportional to the weights (a weight of 0 is never drawn)."""
    none, hyper = float(pop.mutation.none), float(pop.mutation.hyperparameter)
    return "none" if rng.random() * (none + hyper) < none else "hyperparameter"


def move_value(value, name: str, move: str, low, high, factors, rng: np.random.Generator) -> tuple:
    """(new value, extra description) of hyperparameter `name` moved by `move` within [low, high]."""
    if move == "factor":
        f = float(factors[int(rng.integers(len(factors)))])
        return float(min(max(float(value) * f, low), high)), {"factor": f}
    if move == "log_uniform":
        drawn = math.exp(rng.uniform(math.log(low), math.log(high)))
        return float(min(max(drawn, low), high)), {}
    if move == "uniform":
        return float(min(max(rng.uniform(low, high), low), high)), {}
    if move == "int_step":
        f = float(factors[int(rng.integers(len(factors)))])
        return int_step(int(value), f, int(low), int(high)), {"factor": f}
    raise ValueError(f"unknown move {move!r} for hyperparameter {name!r}")


def int_step(x: int, factor: float, low: int, high: int) -> int:
    """round(x * factor) half up, at least one step in the factor's direction, reflected at the bounds, clipped;
    never x itself unless low == high."""
    target = int(math.floor(x * factor + 0.5))
    if target == x:
        target = x + (1 if factor > 1 else -1)
    if target > high:
        target = 2 * high - target
    if target < low:
        target = 2 * low - target
    target = min(max(target, low), high)
    if target == x and low < high:
        target = x + 1 if x < high else x - 1
    return target


def mutate(hyperparameters: dict, pop, rng: np.random.Generator) -> tuple[dict, dict]:
    """(new hyperparameters, the mutation applied) for one member; `pop` is the `population` config section.
    The input dict is not changed."""
    new = dict(hyperparameters)
    if choose_kind(pop, rng) == "none":
        return new, {"kind": "none"}
    names = [n for n in pop.mutate if n in new]
    if not names:
        raise ValueError(f"population.mutate {tuple(pop.mutate)!r} names none of the member's hyperparameters "
                         f"{sorted(new)}")
    name = names[int(rng.integers(len(names)))]
    low, high = (hp.typed(name, v) for v in pop.ranges[name])
    move = pop.moves[name]
    old = new[name]
    new[name], extra = move_value(old, name, move, low, high, tuple(pop.mutation.factors), rng)
    new[name] = hp.typed(name, new[name])
    return new, {"kind": "hyperparameter", "name": name, "move": move, "from": old, "to": new[name], **extra}
