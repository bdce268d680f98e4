"""The `population` config section (evolutionary hyperparameter optimisation; off by default) and its validation.

Fields (declared with `registry.declare_fields`, so `config.base_config()` has them and `--config.population.x=...`
sets them; a value keeps the type of its default):

  population.size                 K members; 0 or 1 = no population (a single policy)              (0)
  population.selection            'tournament' | 'truncation'                                        ('tournament')
  population.tournament_size      entrants per tournament, 1..K, drawn without replacement          (2)
  population.truncation_fraction  truncation: the bottom floor(f K) (at least 1) copy the top ones; 0 < f <= 0.5
                                                                                                     (0.25)
  population.evolve_every         evolve every N training steps (>= 1)                               (10)
  population.fitness              the eval metric maximised, an 'eval/...' name                      ('eval/accuracy')
  population.fitness_examples     the first N problems of the held-out split, the same for every member;
                                  0 = the problems eval.num_examples evaluates                       (64)
  population.init                 'equal': every member starts at the config's values (AgileRL);
                                  'spread': the hyperparameters in `spread` start on a grid over their ranges
                                                                                                     ('equal')
  population.spread               the hyperparameters spread by init 'spread'                        (('lr',))
  population.mutate               the hyperparameters a mutation may move                            (('lr', 'kl_beta'))
  population.members_at_once      members whose updates run batched (vmap) in the train program; 1 = one after
                                  another in the same program, 0 = all K at once                     (1)
  population.mutation.none        relative weight of "no mutation"                                  (0.1)
  population.mutation.hyperparameter  relative weight of "move one hyperparameter"                  (0.9)
  population.mutation.factors     the factors a 'factor' / 'int_step' move multiplies by, one drawn uniformly
                                                                                                     ((0.8, 1.2))
  population.ranges.<name>        (min, max) of hyperparameter <name>             (hyperparameters.MUTABLE)
  population.moves.<name>         how <name> moves: 'factor' | 'log_uniform' | 'uniform' (floats), 'int_step' (ints)
                                                                                  (hyperparameters.MUTABLE)

<name> is a short name of `hyperparameters.MUTABLE` (lr = optim.lr, kl_beta = loss.kl_beta, ...): config keys
cannot hold dots. Mutation probabilities are the weights divided by their sum (AgileRL reads them so).

Tournament selection always keeps the elite (the best member, unchanged, in its own slot): the issue makes elitism
mandatory, so there is no switch for it.

`validate_population_config(config)` takes the whole experiment config (the ranges are checked against the values
the config gives the hyperparameters, group_size against rollout.group_size) and raises one ValueError naming the
first bad key and value. With the population off (size 0 or 1) it checks only the types, and that no other
population key was changed: a changed key with size < 2 is a population asked for without its size.
"""

from __future__ import annotations

import math
import numbers

import ml_collections

from grpo_jax import registry
from grpo_jax.population import hyperparameters as hp

SELECTIONS = ("tournament", "truncation")
INITS = ("equal", "spread")
OWNER = "grpo_jax.population"

FIELDS = {
    "size": 0,
    "selection": "tournament",
    "tournament_size": 2,
    "truncation_fraction": 0.25,
    "evolve_every": 10,
    "fitness": "eval/accuracy",
    "fitness_examples": 64,
    "init": "equal",
    "spread": ("lr",),
    "mutate": ("lr", "kl_beta"),
    "members_at_once": 1,
}
MUTATION_FIELDS = {"none": 0.1, "hyperparameter": 0.9, "factors": (0.8, 1.2)}
# The sub-sections, by the name `registry.declare_fields` knows them under (errors name the key as written here).
SUBSECTIONS = ("mutation", "ranges", "moves")


def _ranges() -> dict:
    return {name: tuple(h.range) for name, h in hp.MUTABLE.items()}


def _moves() -> dict:
    return {name: h.move for name, h in hp.MUTABLE.items()}


registry.declare_fields("population", OWNER, FIELDS)
registry.declare_fields("population.mutation", OWNER, MUTATION_FIELDS)
registry.declare_fields("population.ranges", OWNER, _ranges())
registry.declare_fields("population.moves", OWNER, _moves())


def population_config() -> ml_collections.ConfigDict:
    """The `population` ConfigDict with every declared field at its default (the population off)."""
    c = ml_collections.ConfigDict(registry.section_fields("population"))
    for sub in SUBSECTIONS:
        c[sub] = ml_collections.ConfigDict(registry.section_fields(f"population.{sub}"))
    return c


def enabled(config) -> bool:
    """Whether the full experiment config trains a population (population.size >= 2)."""
    return int(config.population.size) >= 2


def member_names(pop) -> tuple:
    """The hyperparameters each member carries: those `mutate` or `spread` name, in `hyperparameters.MUTABLE`'s
    order (the keys of every member's dict and lineage row)."""
    wanted = set(pop.mutate) | (set(pop.spread) if pop.init == "spread" else set())
    return tuple(name for name in hp.MUTABLE if name in wanted)


# ------------------------------------------------------------------------------------------------ validation


def _plain(value):
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def _first_change(actual: dict, default: dict, prefix: str):
    for key in sorted(set(actual) | set(default)):
        a, d = actual.get(key, "<absent>"), default.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(d, dict):
            found = _first_change(a, d, f"{prefix}{key}.")
            if found:
                return found
        elif a != d:
            return f"{prefix}{key}", a
    return None


def _number(path: str, value, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise ValueError(f"{path} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not integer and not math.isfinite(float(value)):
        raise ValueError(f"{path} must be a finite number, got {value!r}")
    return value


def _names(path: str, value, allow_empty: bool) -> tuple:
    value = tuple(value)
    for name in value:
        if name not in hp.MUTABLE:
            raise ValueError(f"{path} names {name!r}, which is not a mutable hyperparameter; mutable: "
                             f"{', '.join(hp.MUTABLE)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{path} names a hyperparameter twice: {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{path} is empty")
    return value


def _check_range(pop, name: str) -> tuple:
    path = f"population.ranges.{name}"
    value = tuple(pop.ranges[name])
    if len(value) != 2:
        raise ValueError(f"{path} must be (min, max), got {value!r}")
    integer = hp.MUTABLE[name].integer
    low, high = (_number(path, v, integer=integer) for v in value)
    if low > high:
        raise ValueError(f"{path} = {value!r}: min > max")
    return low, high


def _check_move(pop, name: str, low) -> None:
    path = f"population.moves.{name}"
    move = pop.moves[name]
    valid = hp.MUTABLE[name].moves
    if move not in valid:
        kind = "integer" if hp.MUTABLE[name].integer else "float"
        raise ValueError(f"unknown {path} {move!r} for the {kind} hyperparameter {name!r}; valid: "
                         f"{', '.join(repr(m) for m in valid)}")
    if move == "log_uniform" and not low > 0:
        raise ValueError(f"{path} = 'log_uniform' needs population.ranges.{name} with min > 0, got {low!r}")


def validate_population_config(config) -> None:
    """ValueError naming the first bad `population.*` key and value (see the module docstring for what is checked
    with the population on and off)."""
    try:
        pop = config["population"]
    except (KeyError, AttributeError, TypeError):
        raise ValueError("config has no key 'population' (every experiment file starts from base_config())") from None
    registry.validate_section("population", pop)
    for sub in SUBSECTIONS:
        if sub not in pop:
            raise ValueError(f"config has no key 'population.{sub}' (every experiment file starts from "
                             "base_config())")
        registry.validate_section(f"population.{sub}", pop[sub])
    for sub in ("ranges", "moves"):
        for name in pop[sub]:
            if name not in hp.MUTABLE:
                raise ValueError(f"population.{sub}.{name} is set, but {name!r} is not a mutable hyperparameter; "
                                 f"mutable: {', '.join(hp.MUTABLE)}")

    size = _number("population.size", pop.size, integer=True)
    if size < 0:
        raise ValueError(f"population.size must be >= 0 (0 or 1 = no population), got {size!r}")
    if size < 2:
        change = _first_change(_plain(pop), _plain(population_config()), "population.")
        if change and change[0] != "population.size":
            raise ValueError(f"{change[0]} = {change[1]!r} is set, but population.size = {size} means no population "
                             "(K < 2); set population.size >= 2 to train a population")
        return

    if pop.selection not in SELECTIONS:
        raise ValueError(f"unknown population.selection {pop.selection!r}; valid: "
                         f"{', '.join(repr(s) for s in SELECTIONS)}")
    if pop.selection == "tournament":
        t = _number("population.tournament_size", pop.tournament_size, integer=True)
        if not 1 <= t <= size:
            raise ValueError(f"population.tournament_size must be in 1..population.size = {size}, got {t!r}")
    else:
        f = _number("population.truncation_fraction", pop.truncation_fraction)
        if not 0.0 < f <= 0.5:
            raise ValueError(f"population.truncation_fraction must be in (0, 0.5] (the bottom fraction copies the "
                             f"top one), got {f!r}")
    if _number("population.members_at_once", pop.members_at_once, integer=True) < 0:
        raise ValueError(f"population.members_at_once must be >= 0 (0 = all members at once), "
                         f"got {pop.members_at_once!r}")
    if _number("population.evolve_every", pop.evolve_every, integer=True) < 1:
        raise ValueError(f"population.evolve_every must be >= 1, got {pop.evolve_every!r}")
    if not isinstance(pop.fitness, str) or not pop.fitness.startswith("eval/") or pop.fitness == "eval/":
        raise ValueError(f"population.fitness must name an eval metric ('eval/accuracy', 'eval/mean_reward', ...), "
                         f"got {pop.fitness!r}")
    if _number("population.fitness_examples", pop.fitness_examples, integer=True) < 0:
        raise ValueError(f"population.fitness_examples must be >= 0 (0 = eval.num_examples), "
                         f"got {pop.fitness_examples!r}")
    if pop.init not in INITS:
        raise ValueError(f"unknown population.init {pop.init!r}; valid: {', '.join(repr(s) for s in INITS)}")
    spread = _names("population.spread", pop.spread, allow_empty=pop.init != "spread")
    mutate = _names("population.mutate", pop.mutate, allow_empty=True)

    weights = {}
    for kind in ("none", "hyperparameter"):
        w = float(_number(f"population.mutation.{kind}", pop.mutation[kind]))
        if w < 0:
            raise ValueError(f"population.mutation.{kind} must be a weight >= 0, got {w!r}")
        weights[kind] = w
    if not sum(weights.values()) > 0:
        raise ValueError("population.mutation.none and population.mutation.hyperparameter are both 0: the mutation "
                         "probabilities are the weights over their sum, so at least one must be > 0")
    if weights["hyperparameter"] > 0 and not mutate:
        raise ValueError(f"population.mutation.hyperparameter = {weights['hyperparameter']!r} but population.mutate "
                         "is empty: name the hyperparameters to mutate, or set the weight to 0")
    factors = tuple(pop.mutation.factors)
    if not factors:
        raise ValueError("population.mutation.factors is empty")
    for f in factors:
        _number("population.mutation.factors", f)
        if not f > 0 or f == 1:
            raise ValueError(f"population.mutation.factors must be positive and != 1 (a factor that moves), "
                             f"got {factors!r}")

    for name in hp.MUTABLE:
        low, _ = _check_range(pop, name)
        _check_move(pop, name, low)
    for name in member_names(pop):
        low, high = _check_range(pop, name)
        if name == "group_size":
            maximum = int(config.rollout.group_size)
            if low < 2:
                raise ValueError(f"population.ranges.group_size = {tuple(pop.ranges.group_size)!r}: min must be >= 2 "
                                 "(GRPO compares completions within a group)")
            if high > maximum:
                raise ValueError(f"population.ranges.group_size = {tuple(pop.ranges.group_size)!r}: max must be <= "
                                 f"rollout.group_size = {maximum} (the sampler draws that many completions per prompt; "
                                 "a member's effective group size masks the rest)")
        if pop.init == "spread" and name in spread:
            continue  # its starting values are the grid, not the config's value
        value = hp.config_value(config, name)
        if not low <= value <= high:
            raise ValueError(f"{hp.MUTABLE[name].path} = {value!r} is outside population.ranges.{name} = "
                             f"{(low, high)!r}: every member starts there")


class _PopulationExperimentKind:
    """The loop (runner.run) runs the first registered kind of experiment that claims a config: this one, the
    population's (`target`, imported by name when a run asks for it), when population.size >= 2."""
    target = "grpo_jax.population.experiment:PopulationExperiment"
    claims = staticmethod(enabled)


registry.kind("experiment").register("population", _PopulationExperimentKind)
