"""The population's host-side logic (grpo_jax.population): config section and validation, selection, mutation,
the starting population, lineage file, RNG state and one evolution. Pure numpy; no model."""

import json
import math
import os

import numpy as np
import pytest

from grpo_jax import config as config_lib
from grpo_jax import population
from grpo_jax.population import hyperparameters as hp
from grpo_jax.population import lineage, mutation, selection


def _config(size=4, **pop):
    c = config_lib.base_config()
    c.population.size = size
    for key, value in pop.items():
        node = c.population
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


def _section(**pop):
    return _config(**pop).population


# ---------------------------------------------------------------------------------------------- config


def test_the_section_is_in_the_base_config_off_and_valid():
    c = config_lib.base_config()
    assert c.population.size == 0 and not population.enabled(c)
    assert (c.population.selection, c.population.fitness, c.population.init) == ("tournament", "eval/accuracy",
                                                                                 "equal")
    assert (c.population.mutation.none, c.population.mutation.hyperparameter) == (0.1, 0.9)
    assert tuple(c.population.mutation.factors) == (0.8, 1.2)
    assert set(c.population.ranges) == set(c.population.moves) == set(hp.MUTABLE)
    for name in ("lr", "kl_beta", "clip_low", "clip_high", "entropy_coef", "temperature", "top_p", "group_size"):
        assert name in hp.MUTABLE
        low, high = c.population.ranges[name]
        assert low <= hp.config_value(c, name) <= high, name  # every default starts inside its range
    config_lib.validate(c)
    config_lib.validate(_config(4))  # a population with the defaults validates too
    c.population.size = 1
    config_lib.validate(c)  # size 1 = off


def test_the_population_off_leaves_the_fingerprint_alone():
    a, b = config_lib.base_config(), config_lib.base_config()
    b.population.size = 1
    assert "population" not in config_lib.trajectory_dict(a)
    assert config_lib.fingerprint(a) == config_lib.fingerprint(b)
    assert config_lib.fingerprint(a) != config_lib.fingerprint(_config(4))


def test_command_line_overrides_reach_the_section():
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", "--config.population.size=4", "--config.population.ranges.lr=(1e-5,1e-4)",
            "--config.population.moves.kl_beta=uniform", "--config.population.mutation.none=0.5",
            "--config.population.mutate=('lr','group_size')"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config_lib.base_config(), flag_values=values, sys_argv=argv)
    values(argv)
    c = values.config
    assert c.population.size == 4 and tuple(c.population.ranges.lr) == (1e-5, 1e-4)
    assert c.population.moves.kl_beta == "uniform" and c.population.mutation.none == 0.5
    assert tuple(c.population.mutate) == ("lr", "group_size")


@pytest.mark.parametrize("size, pop, message", [
    (-1, {}, r"population.size must be >= 0"),
    (1, {"selection": "truncation"}, r"population.selection = 'truncation' is set, but population.size = 1 means "
                                     r"no population \(K < 2\)"),
    (0, {"ranges__lr": (1e-5, 1e-4)}, r"population.ranges.lr = \(1e-05, 0.0001\) is set, but population.size = 0"),
    (4, {"tournament_size": 5}, r"population.tournament_size must be in 1..population.size = 4, got 5"),
    (4, {"tournament_size": 0}, r"population.tournament_size must be in 1..population.size = 4, got 0"),
    (4, {"selection": "roulette"}, r"unknown population.selection 'roulette'"),
    (4, {"selection": "truncation", "truncation_fraction": 0.75}, r"population.truncation_fraction must be in"),
    (4, {"evolve_every": 0}, r"population.evolve_every must be >= 1, got 0"),
    (4, {"fitness": "reward"}, r"population.fitness must name an eval metric .* got 'reward'"),
    (4, {"fitness_examples": -2}, r"population.fitness_examples must be >= 0"),
    (4, {"init": "random"}, r"unknown population.init 'random'"),
    (4, {"ranges__lr": (1e-4, 1e-5)}, r"population.ranges.lr = \(0.0001, 1e-05\): min > max"),
    (4, {"ranges__temperature": (2.0, 1.0)}, r"population.ranges.temperature = \(2.0, 1.0\): min > max"),
    (4, {"ranges__lr": (1e-5,)}, r"population.ranges.lr must be \(min, max\)"),
    (4, {"ranges__group_size": (2.5, 8)}, r"population.ranges.group_size must be an integer, got 2.5"),
    (4, {"mutate": ("lr", "momentum")}, r"population.mutate names 'momentum', which is not a mutable hyperparameter"),
    (4, {"mutate": ("lr", "lr")}, r"population.mutate names a hyperparameter twice"),
    (4, {"init": "spread", "spread": ("warmup",)}, r"population.spread names 'warmup', which is not a mutable"),
    (4, {"init": "spread", "spread": ()}, r"population.spread is empty"),
    (4, {"ranges__lr": (1e-5, 1e-4)}, r"optim.lr = 1e-06 is outside population.ranges.lr = \(1e-05, 0.0001\)"),
    (4, {"mutate": ("kl_beta",), "ranges__kl_beta": (0.05, 0.1)}, r"loss.kl_beta = 0.04 is outside population.ran"),
    (4, {"mutate": ("group_size",), "ranges__group_size": (2, 16)}, r"max must be <= rollout.group_size = 8"),
    (4, {"mutate": ("group_size",), "ranges__group_size": (1, 8)}, r"population.ranges.group_size .* min must be >= 2"),
    (4, {"moves__lr": "int_step"}, r"unknown population.moves.lr 'int_step' for the float hyperparameter 'lr'"),
    (4, {"moves__group_size": "factor"}, r"unknown population.moves.group_size 'factor' for the integer"),
    (4, {"moves__kl_beta": "log_uniform"}, r"'log_uniform' needs population.ranges.kl_beta with min > 0"),
    (4, {"mutation__none": -0.1}, r"population.mutation.none must be a weight >= 0, got -0.1"),
    (4, {"mutation__none": 0.0, "mutation__hyperparameter": 0.0}, r"are both 0"),
    (4, {"mutate": ()}, r"population.mutation.hyperparameter = 0.9 but population.mutate is empty"),
    (4, {"mutation__factors": (0.8, 1.0)}, r"population.mutation.factors must be positive and != 1"),
    (4, {"mutation__factors": (-0.8, 1.2)}, r"population.mutation.factors must be positive and != 1"),
])
def test_each_bad_setting_is_one_clear_error(size, pop, message):
    with pytest.raises(ValueError, match=message):
        config_lib.validate(_config(size, **pop))


def test_a_value_of_the_wrong_type_is_refused():
    import ml_collections

    c = _config(4)
    c.population = ml_collections.ConfigDict({**c.population.to_dict(), "selection": 3})
    with pytest.raises(ValueError, match="population.selection must be a string, got 3"):
        config_lib.validate(c)
    c = _config(4)
    c.population.mutation = ml_collections.ConfigDict({**c.population.mutation.to_dict(), "none": "often"})
    with pytest.raises(ValueError, match="population.mutation.none must be a finite number, got 'often'"):
        config_lib.validate(c)


def test_an_unknown_range_key_is_refused():
    c = _config(4)
    c.population.ranges.momentum = (0.1, 0.9)
    with pytest.raises(ValueError, match=r"population.ranges.momentum is set, but 'momentum' is not a mutable"):
        config_lib.validate(c)


def test_a_spread_hyperparameter_need_not_start_in_range_and_others_must():
    c = _config(4, init="spread", spread=("lr",), ranges__lr=(1e-5, 1e-4))
    config_lib.validate(c)  # optim.lr = 1e-6 is not used: the members start on the grid
    c.loss.kl_beta = 0.5
    with pytest.raises(ValueError, match=r"loss.kl_beta = 0.5 is outside population.ranges.kl_beta"):
        config_lib.validate(c)


def test_the_hyperparameters_map_to_their_config_keys():
    c = config_lib.base_config()
    d = hp.with_hyperparameters(c, {"lr": 3e-5, "group_size": 4, "temperature": 0.7})
    assert (d.optim.lr, d.rollout.group_size, d.rollout.temperature) == (3e-5, 4, 0.7)
    assert (c.optim.lr, c.rollout.group_size) == (1e-6, 8)  # a copy
    assert hp.PATHS["kl_beta"] == "loss.kl_beta" and hp.PATHS["top_p"] == "rollout.top_p"
    with pytest.raises(ValueError, match="'momentum' is not a mutable hyperparameter"):
        hp.get("momentum")


# ---------------------------------------------------------------------------------------------- selection


FITNESS = np.array([0.2, 0.9, 0.5, 0.1, 0.7, 0.3])


def test_tournament_keeps_the_elite_and_picks_among_the_entrants():
    for seed in range(50):
        sel = selection.tournament(FITNESS, np.random.default_rng(seed), 3)
        assert sel.parents[1] == 1 and sel.kept[1] and sel.kept.sum() == 1  # the elite: argmax, unchanged
        for j in range(len(FITNESS)):
            if j == 1:
                continue
            entrants = sel.entrants[j]
            assert len(entrants) == 3 and len(set(entrants)) == 3
            assert sel.parents[j] in entrants
            assert FITNESS[sel.parents[j]] == max(FITNESS[list(entrants)])


def test_a_tournament_of_every_member_picks_the_best():
    for seed in range(20):
        sel = selection.tournament(FITNESS, np.random.default_rng(seed), len(FITNESS))
        assert (sel.parents == 1).all()


def test_tournaments_of_one_pick_uniformly():
    counts = np.zeros(len(FITNESS))
    rng = np.random.default_rng(0)
    for _ in range(2000):
        sel = selection.tournament(FITNESS, rng, 1)
        assert sel.parents[1] == 1
        for j in (0, 2, 3, 4, 5):
            counts[sel.parents[j]] += 1
    freq = counts / counts.sum()
    assert np.all(np.abs(freq - 1 / 6) < 0.02), freq  # 10000 draws: std ~0.004


def test_ties_and_nan_resolve_to_the_lower_index():
    tied = np.array([0.5, 0.9, 0.9, np.nan])
    assert selection.best(tied) == 1
    assert list(selection.ranking(tied)) == [1, 2, 0, 3]
    for seed in range(20):
        sel = selection.tournament(tied, np.random.default_rng(seed), 4)
        assert (sel.parents == 1).all()
    assert selection.best([np.nan, np.nan]) == 0


def test_truncation_replaces_the_bottom_with_copies_of_the_top():
    for seed in range(30):
        sel = selection.truncation(FITNESS, np.random.default_rng(seed), 0.34)  # floor(0.34 * 6) = 2
        assert sorted(np.flatnonzero(~sel.kept)) == [0, 3]  # the two worst: 0.2 and 0.1
        for j in (0, 3):
            assert sel.parents[j] in (1, 4)  # the two best: 0.9 and 0.7
        for j in (1, 2, 4, 5):
            assert sel.parents[j] == j and sel.kept[j]
    small = selection.truncation([0.3, 0.1, 0.2, 0.4], np.random.default_rng(0), 0.1)  # at least one
    assert list(small.parents) == [0, 3, 2, 3] and list(small.kept) == [True, False, True, True]
    with pytest.raises(ValueError, match="truncation fraction must be in"):
        selection.truncation(FITNESS, np.random.default_rng(0), 0.6)
    with pytest.raises(ValueError, match="tournament_size must be in 1..K = 6"):
        selection.tournament(FITNESS, np.random.default_rng(0), 7)


# ---------------------------------------------------------------------------------------------- mutation


def _always(pop_cfg, name, move=None, low=None, high=None):
    """Make every mutation move `name` (weight of 'none' 0, only `name` mutable)."""
    pop_cfg.mutation.none = 0.0
    pop_cfg.mutate = (name,)
    if move:
        pop_cfg.moves[name] = move
    if low is not None:
        pop_cfg.ranges[name] = (low, high)
    return pop_cfg


@pytest.mark.parametrize("name, move, low, high, start", [
    ("lr", "factor", 1e-6, 1e-4, 1e-5),
    ("lr", "log_uniform", 1e-6, 1e-4, 1e-5),
    ("kl_beta", "uniform", 0.0, 0.1, 0.04),
    ("temperature", "factor", 0.5, 1.5, 1.4),
    ("top_p", "factor", 0.8, 1.0, 1.0),
    ("clip_high", "log_uniform", 0.1, 0.4, 0.2),
    ("group_size", "int_step", 2, 8, 8),
    ("group_size", "int_step", 2, 8, 2),
])
def test_every_move_stays_in_its_range(name, move, low, high, start):
    pop_cfg = _always(_section(), name, move, low, high)
    rng = np.random.default_rng(0)
    value, seen = start, set()
    for _ in range(300):
        new, applied = population.mutate({name: value}, pop_cfg, rng)
        assert applied["kind"] == "hyperparameter" and applied["name"] == name and applied["move"] == move
        assert applied["from"] == value and applied["to"] == new[name]
        assert low <= new[name] <= high
        assert type(new[name]) is (int if hp.MUTABLE[name].integer else float)
        if move == "int_step":
            assert new[name] != value  # an integer mutation always moves
        value = new[name]
        seen.add(value)
    assert len(seen) > 1


def test_factor_moves_multiply_by_one_of_the_factors():
    pop_cfg = _always(_section(), "lr", "factor", 1e-7, 1e-3)
    rng = np.random.default_rng(1)
    outcomes = set()
    for _ in range(50):
        new, applied = population.mutate({"lr": 1e-5}, pop_cfg, rng)
        assert applied["factor"] in (0.8, 1.2) and new["lr"] == pytest.approx(1e-5 * applied["factor"])
        outcomes.add(applied["factor"])
    assert outcomes == {0.8, 1.2}
    assert population.mutate({"lr": 1e-3}, pop_cfg, np.random.default_rng(0))[0]["lr"] <= 1e-3  # clipped


def test_an_integer_of_4_under_a_factor_of_1_2_moves():
    assert int(4 * 1.2) == 4  # the stuck move this replaces
    assert population.int_step(4, 1.2, 2, 16) == 5
    assert population.int_step(4, 0.8, 2, 16) == 3
    assert population.int_step(10, 1.2, 2, 16) == 12
    assert population.int_step(16, 1.2, 2, 16) == 13  # 19 reflected at 16
    assert population.int_step(2, 0.8, 2, 16) == 3    # 1 reflected at 2
    assert population.int_step(4, 2.0, 4, 5) == 5     # 8 reflected to 2, clipped to 4 = x: one step inside
    assert population.int_step(5, 5.0, 4, 5) == 4
    assert population.int_step(3, 1.2, 3, 3) == 3      # a one-value range cannot move
    for x in range(2, 9):
        for f in (0.8, 1.2, 0.5, 3.0):
            y = population.int_step(x, f, 2, 8)
            assert 2 <= y <= 8 and y != x


def test_no_mutation_leaves_the_values_and_weights_are_respected():
    pop_cfg = _section()
    pop_cfg.mutation.hyperparameter = 0.0
    members = {"lr": 1e-6, "kl_beta": 0.04}
    rng = np.random.default_rng(0)
    for _ in range(200):
        new, applied = population.mutate(members, pop_cfg, rng)
        assert applied == {"kind": "none"} and new == members and new is not members
    pop_cfg = _section()
    pop_cfg.mutation.none = 0.0
    assert all(population.mutate(members, pop_cfg, rng)[1]["kind"] == "hyperparameter" for _ in range(200))
    pop_cfg.mutation.none, pop_cfg.mutation.hyperparameter = 1.0, 3.0  # relative weights: P(none) = 1/4
    kinds = [population.mutate(members, pop_cfg, rng)[1]["kind"] for _ in range(4000)]
    assert abs(kinds.count("none") / len(kinds) - 0.25) < 0.03
    names = [population.mutate(members, pop_cfg, rng)[1].get("name") for _ in range(2000)]
    assert {n for n in names if n} == {"lr", "kl_beta"}  # only the mutable names of population.mutate


# ---------------------------------------------------------------------------------------------- init


def test_spread_init_covers_a_decade_of_learning_rates():
    c = _config(4, init="spread", spread=("lr",), ranges__lr=(1e-5, 1e-4))
    config_lib.validate(c)
    members = population.initial_hyperparameters(c)
    lrs = [m["lr"] for m in members]
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-4)
    assert np.allclose(np.diff(np.log10(lrs)), 1 / 3)
    assert all(m["kl_beta"] == 0.04 for m in members)  # not spread: the config's value
    assert population.initial_hyperparameters(c) == members  # deterministic


def test_equal_init_and_a_second_spread_hyperparameter():
    c = _config(4)
    assert population.initial_hyperparameters(c) == [{"lr": 1e-6, "kl_beta": 0.04}] * 4
    c = _config(5, init="spread", spread=("lr", "group_size"), mutate=("lr",), ranges__lr=(1e-5, 1e-4),
                ranges__group_size=(2, 8))
    config_lib.validate(c)
    members = population.initial_hyperparameters(c)
    assert list(members[0]) == ["lr", "group_size"]
    assert sorted(m["group_size"] for m in members) == [2, 3, 4, 6, 8]  # geomspace(2, 8, 5) rounded half up
    assert [m["lr"] for m in members] == sorted(m["lr"] for m in members)
    assert population.grid(0.0, 0.1, 3) == pytest.approx([0.0, 0.05, 0.1])  # a range holding 0: arithmetic


# ---------------------------------------------------------------------------------------------- lineage, rng


def test_lineage_rows_round_trip_and_a_torn_last_line_is_ignored(tmp_path):
    workdir = str(tmp_path)
    members = [{"lr": 1e-5, "group_size": 4}, {"lr": 2e-5, "group_size": 6}]
    first = population.initial_rows(members, init="spread")
    population.append_rows(workdir, first)
    second = [lineage.row(1, 10, 0, 1, 0.25, float("nan"), members[1], {"kind": "none"}),
              lineage.row(1, 10, 1, np.int64(1), np.float32(0.5), 0.5, members[1], {"kind": "elite"})]
    population.append_rows(workdir, second)
    rows = population.read_lineage(workdir)
    assert rows == json.loads(json.dumps(first + second))
    assert rows[2]["parent_fitness"] is None and rows[3]["fitness"] == 0.5 and rows[3]["parent"] == 1
    assert rows[0] == {"generation": 0, "step": 0, "member": 0, "parent": None, "fitness": None,
                       "parent_fitness": None, "hyperparameters": members[0],
                       "mutation": {"kind": "init", "init": "spread"}}

    path = os.path.join(workdir, population.LINEAGE_FILE)
    with open(path, "a") as f:
        f.write('{"generation": 2, "step": 20, "mem')  # a crash mid-write
    assert population.read_lineage(workdir) == rows
    third = [lineage.row(2, 20, 0, 0, 0.75, 0.75, members[0], {"kind": "elite"})]
    population.append_rows(workdir, third)  # cuts the torn tail first
    assert population.read_lineage(path) == rows + json.loads(json.dumps(third))
    assert open(path).read().endswith("}\n")

    population.truncate_lineage(workdir, 1)  # resume from a checkpoint holding generation 1
    assert population.read_lineage(workdir) == rows
    population.truncate_lineage(workdir, None)
    assert population.read_lineage(workdir) == []
    assert population.read_lineage(str(tmp_path / "none")) == []


def test_a_bad_line_before_the_last_is_an_error(tmp_path):
    (tmp_path / population.LINEAGE_FILE).write_text('{"generation": 0}\nnot json\n{"generation": 1}\n')
    with pytest.raises(ValueError, match="population.jsonl:2: not a JSON row"):
        population.read_lineage(str(tmp_path))


def test_rng_state_round_trips_through_json():
    rng = population.population_rng(7)
    rng.random(3)
    rng.integers(10, size=5)  # leave a buffered 32-bit half behind, too
    state = json.loads(json.dumps(population.rng_state(rng)))
    restored = population.rng_from_state(state)
    assert np.array_equal(rng.random(10), restored.random(10))
    assert np.array_equal(rng.integers(1000, size=10), restored.integers(1000, size=10))
    assert np.array_equal(rng.choice(6, 3, replace=False), restored.choice(6, 3, replace=False))
    assert population.population_rng(7).random() == population.population_rng(7).random()
    assert population.population_rng(7).random() != population.population_rng(8).random()
    population.population_rng(-3).random()  # any int seed
    with pytest.raises(ValueError, match="PCG64 state dict"):
        population.rng_from_state({"bit_generator": "MT19937"})


# ---------------------------------------------------------------------------------------------- evolve


def test_evolve_composes_selection_mutation_and_lineage():
    c = _config(4, init="spread", ranges__lr=(1e-5, 1e-4), tournament_size=2)
    config_lib.validate(c)
    members = population.initial_hyperparameters(c)
    fitness = [0.1, 0.6, 0.3, 0.2]
    evo = population.evolve(fitness, members, population.population_rng(0), c.population, generation=1, step=10)
    parents, new, rows = evo
    assert parents[1] == 1 and new[1] == members[1] and rows[1]["mutation"] == {"kind": "elite"}
    for j, r in enumerate(rows):
        assert (r["generation"], r["step"], r["member"], r["parent"]) == (1, 10, j, parents[j])
        assert r["fitness"] == fitness[j] and r["parent_fitness"] == fitness[parents[j]]
        assert r["hyperparameters"] == new[j]
        if r["mutation"]["kind"] == "hyperparameter":
            name = r["mutation"]["name"]
            assert r["mutation"]["from"] == members[parents[j]][name] and new[j][name] == r["mutation"]["to"]
            low, high = c.population.ranges[name]
            assert low <= new[j][name] <= high
        elif r["mutation"]["kind"] == "none":
            assert new[j] == members[parents[j]]
    json.dumps(rows, allow_nan=False)
    again = population.evolve(fitness, members, population.population_rng(0), c.population, generation=1, step=10)
    assert again.rows == rows and np.array_equal(again.parents, parents)  # same state, same evolution
    assert members == population.initial_hyperparameters(c)  # inputs untouched


def test_evolve_resumes_exactly_from_a_saved_rng_state():
    c = _config(4, selection="truncation", truncation_fraction=0.5)
    members = population.initial_hyperparameters(c)
    fits = [[0.1, 0.4, 0.2, 0.3], [0.5, 0.5, 0.1, 0.9], [0.2, 0.1, 0.8, 0.4]]

    def run(gens, rng, members, start=0):
        out = []
        for g in range(start, gens):
            evo = population.evolve(fits[g], members, rng, c.population, generation=g + 1, step=10 * (g + 1))
            members = evo.hyperparameters
            out += evo.rows
        return members, out, rng

    straight = run(3, population.population_rng(5), members)[1]
    mid_members, first, rng = run(1, population.population_rng(5), members)
    state = json.loads(json.dumps(population.rng_state(rng)))  # a checkpoint holds this
    _, rest, _ = run(3, population.rng_from_state(state), mid_members, start=1)
    assert first + rest == straight
    kinds = {r["mutation"]["kind"] for r in straight}
    assert "kept" in kinds and kinds <= {"kept", "none", "hyperparameter"}
    with pytest.raises(ValueError, match="one value per member"):
        population.evolve([0.1, 0.2], members, rng, c.population, generation=1, step=1)


def test_validate_catches_a_fitness_key_before_evolve_needs_it():
    assert math.isclose(_section().mutation.none + _section().mutation.hyperparameter, 1.0)
    with pytest.raises(ValueError, match="population.fitness must name an eval metric"):
        config_lib.validate(_config(4, fitness="eval/"))
