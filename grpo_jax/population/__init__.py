"""Evolutionary hyperparameter optimisation: a population of K members, selected by held-out fitness and mutated.

This package is the host-side logic, pure numpy and config: which hyperparameters a member carries and how they
move, selection, mutation, the starting population, the lineage file and the random stream. One module each:

  hyperparameters.py   the mutable hyperparameters: short name -> config path, type, default range and move
  config.py            the `population.*` config section (off by default: size 0 or 1) and its validation
  selection.py         tournament selection with elitism; truncation (PBT)
  mutation.py          none vs one hyperparameter moved: factor, log_uniform, uniform, int_step (always moves)
  init.py              the K members' starting hyperparameters ('equal' | 'spread')
  evolve.py            one evolution: selection + mutation + lineage rows
  lineage.py           DIR/population.jsonl, append-only, crash-safe; truncated on resume
  rng.py               the selection / mutation generator and its JSON-able state (for checkpoints)

    members = population.initial_hyperparameters(config)           # K dicts
    rng = population.population_rng(config.seed)
    population.append_rows(workdir, population.initial_rows(members, init=config.population.init))
    ...every population.evolve_every steps, with fitness [K] of population.fitness on the shared subset:
    parents, members, rows = population.evolve(fitness, members, rng, config.population, generation=g, step=i)
    population.append_rows(workdir, rows)

`population/train.py` and `population/sampling.py` (not imported here, so this package stays free of jax) are
the K members side by side in one program: the train step over stacked states on one frozen base with per-member
traced hyperparameters, and `sample_members`, each member's completions of the step's prompts with the same key,
LoRA members decoded together in ONE decode loop (the base's matmuls batched over all members' rows, each row
adding its member's unmerged adapters; per-member temperature / top_p traced). The runner's population loop is
`population/experiment.py`.
"""

from grpo_jax.population import hyperparameters
from grpo_jax.population.config import (
    enabled, member_names, population_config, validate_population_config)
from grpo_jax.population.evolve import Evolution, evolve
from grpo_jax.population.hyperparameters import MUTABLE, with_hyperparameters
from grpo_jax.population.init import grid, initial_hyperparameters
from grpo_jax.population.lineage import (
    LINEAGE_FILE, append_rows, initial_rows, read_lineage, truncate_lineage)
from grpo_jax.population.mutation import int_step, mutate
from grpo_jax.population.rng import population_rng, rng_from_state, rng_state
from grpo_jax.population.selection import Selection, best, ranking, select, tournament, truncation

__all__ = [
    "hyperparameters", "MUTABLE", "with_hyperparameters", "enabled", "member_names", "population_config",
    "validate_population_config", "Evolution", "evolve", "grid", "initial_hyperparameters", "LINEAGE_FILE",
    "append_rows", "initial_rows", "read_lineage", "truncate_lineage", "int_step", "mutate", "population_rng",
    "rng_from_state", "rng_state", "Selection", "best", "ranking", "select", "tournament", "truncation",
]
