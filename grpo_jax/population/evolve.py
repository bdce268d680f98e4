"""One evolution step on the host: fitness [K] and the members' hyperparameters -> parents, new hyperparameters, rows.

    evo = evolve(fitness, hyperparameters, rng, config.population, generation=g, step=i)
    parents, new_hyperparameters, rows = evo

Selection (`selection.select`) first, then each member in slot order: a kept one (the tournament's elite, or a
member truncation keeps) takes its parent's hyperparameters unchanged (mutation {'kind': 'elite'} / {'kind':
'kept'}); every other one takes a copy of its parent's and mutates it (`mutation.mutate`). All draws come from `rng`
in that order, so the same fitness, hyperparameters and generator state give the same evolution.

What the caller does with it (the stacked-member runner): for each slot j with parents[j] != j, copy member
parents[j]'s adapters (or parameters) and optimizer state into slot j (the optimizer moments are kept through a
learning-rate mutation); then train every member with new_hyperparameters[j]; append `rows` to the lineage file
(`lineage.append_rows`) and save the generator state (`rng.rng_state`) with the next checkpoint.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from grpo_jax.population.lineage import row
from grpo_jax.population.mutation import mutate
from grpo_jax.population.selection import select


class Evolution(NamedTuple):
    parents: np.ndarray          # int [K]: the member each slot copies (== j: the slot keeps its own state)
    hyperparameters: list        # K dicts: each slot's hyperparameters after the evolution
    rows: list                   # K lineage rows (generation, step, member, parent, fitness, ..., mutation)


def evolve(fitness, hyperparameters: list, rng: np.random.Generator, pop, *, generation: int,
           step: int) -> Evolution:
    """One evolution of the K members (`pop`: the `population` config section; `generation` >= 1 counts the
    evolutions, this one included; `step` is the training step it follows)."""
    k = len(hyperparameters)
    values = np.asarray(fitness, dtype=np.float64)
    if values.shape != (k,):
        raise ValueError(f"fitness must hold one value per member ({k}), got shape {values.shape}")
    if k != int(pop.size):
        raise ValueError(f"population.size = {pop.size} but {k} members' hyperparameters were given")
    sel = select(values, rng, pop)
    kept_kind = "elite" if pop.selection == "tournament" else "kept"
    new, rows = [], []
    for j in range(k):
        parent = int(sel.parents[j])
        if sel.kept[j]:
            h, applied = dict(hyperparameters[parent]), {"kind": kept_kind}
        else:
            h, applied = mutate(hyperparameters[parent], pop, rng)
        new.append(h)
        rows.append(row(generation, step, j, parent, values[j], values[parent], h, applied))
    return Evolution(sel.parents, new, rows)
