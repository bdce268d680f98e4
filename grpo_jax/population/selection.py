"""Selection: fitness of K members -> the parent each of the K new members copies. Pure functions on numpy.

    sel = select(fitness, rng, config.population)     # 'tournament' or 'truncation', by population.selection
    sel.parents[j]    the member new member j copies (its adapters, optimizer state and hyperparameters)
    sel.kept[j]       True: j keeps its parent unchanged (no mutation): the elite, or a member truncation kept
    sel.entrants[j]   the members j's parent was chosen among

Member slots are stable: a member that survives stays in its own slot (parents[j] == j), so the stacked program
copies only the slots whose parent differs.

- Tournament with elitism (AgileRL's scheme): the elite, the best member, keeps its slot unchanged; every other
  slot holds a tournament of `tournament_size` distinct members drawn uniformly (without replacement, so a
  tournament of K entrants is the whole population and picks the best) and copies its winner, which is then
  mutated. The elite may also win tournaments: its mutated copies fill other slots.
- Truncation (PBT's exploit, Jaderberg et al. 2017): with n = max(1, floor(truncation_fraction K)), each of the n
  worst members copies one of the n best, drawn uniformly, and is then mutated (explore); the others are kept.

Ties and NaN, deterministically: a NaN fitness (a failed evaluation) counts as -inf; among equal fitness values the
member with the lower index is better, both for the elite and inside a tournament (independent of draw order) and
for the truncation ranking.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class Selection(NamedTuple):
    parents: np.ndarray      # int [K]: the member each new member copies
    kept: np.ndarray         # bool [K]: copied unchanged (not mutated)
    entrants: tuple          # per new member, the members its parent was chosen among


def _fitness(fitness) -> np.ndarray:
    f = np.asarray(fitness, dtype=np.float64)
    if f.ndim != 1 or f.size < 2:
        raise ValueError(f"fitness must be a vector of K >= 2 member values, got shape {f.shape}")
    return np.where(np.isnan(f), -np.inf, f)


def ranking(fitness) -> np.ndarray:
    """Member indices best first (NaN last as -inf; ties: lower index first)."""
    f = _fitness(fitness)
    return np.lexsort((np.arange(f.size), -f))


def best(fitness) -> int:
    """The best member: the highest fitness, the lowest index among ties."""
    return int(ranking(fitness)[0])


def tournament(fitness, rng: np.random.Generator, tournament_size: int) -> Selection:
    """Tournament selection with elitism (see the module docstring). `rng` draws the K - 1 tournaments in slot order."""
    f = _fitness(fitness)
    k = f.size
    if not 1 <= int(tournament_size) <= k:
        raise ValueError(f"tournament_size must be in 1..K = {k}, got {tournament_size!r}")
    elite = best(f)
    parents = np.empty(k, np.int64)
    kept = np.zeros(k, bool)
    entrants = []
    for j in range(k):
        if j == elite:
            parents[j], kept[j] = elite, True
            entrants.append((elite,))
            continue
        drawn = np.sort(rng.choice(k, size=int(tournament_size), replace=False))
        parents[j] = drawn[best(f[drawn])] if drawn.size > 1 else drawn[0]
        entrants.append(tuple(int(i) for i in drawn))
    return Selection(parents, kept, tuple(entrants))


def truncation(fitness, rng: np.random.Generator, fraction: float) -> Selection:
    """Truncation selection (see the module docstring). `rng` draws the copied top member of each bottom one, worst
    member first."""
    f = _fitness(fitness)
    k = f.size
    if not 0.0 < float(fraction) <= 0.5:
        raise ValueError(f"truncation fraction must be in (0, 0.5], got {fraction!r}")
    n = max(1, int(math.floor(float(fraction) * k)))
    order = ranking(f)
    top = tuple(int(i) for i in order[:n])
    parents = np.arange(k, dtype=np.int64)
    kept = np.ones(k, bool)
    entrants = [(j,) for j in range(k)]
    for j in order[::-1][:n]:
        parents[j] = top[int(rng.integers(n))]
        kept[j] = False
        entrants[j] = top
    return Selection(parents, kept, tuple(entrants))


def select(fitness, rng: np.random.Generator, pop) -> Selection:
    """The selection `pop.selection` names, with its settings from the `population` section `pop`."""
    if pop.selection == "tournament":
        return tournament(fitness, rng, int(pop.tournament_size))
    if pop.selection == "truncation":
        return truncation(fitness, rng, float(pop.truncation_fraction))
    raise ValueError(f"unknown population.selection {pop.selection!r}; valid: 'tournament', 'truncation'")
