"""benchmarks/population.py's report (from hand-made run directories) and configs/population.py's args: the single
runs are the population's experiment with the population off and one member's starting hyperparameters."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import population as bench  # noqa: E402
from configs import population as population_config  # noqa: E402
from grpo_jax import config as config_lib  # noqa: E402
from grpo_jax import population  # noqa: E402


def _write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_single_runs_are_the_members_alone():
    pop = population_config.get_config("")
    config_lib.validate(pop)
    members = population.initial_hyperparameters(pop)
    assert [m["lr"] for m in members] == pytest.approx([1e-4, 10 ** -3.6667, 10 ** -3.3333, 1e-3], rel=1e-3)
    for k, member in enumerate(members):
        single = population_config.get_config(f"single={k}")
        config_lib.validate(single)
        assert not population.enabled(single) and single.population.to_dict() == \
            population.population_config().to_dict()
        assert single.optim.lr == pytest.approx(member["lr"]) and single.rollout.temperature == member["temperature"]
        rest = single.copy_and_resolve_references()
        rest.optim.lr, rest.population = pop.optim.lr, pop.population
        assert rest.to_dict() == pop.to_dict()  # nothing else differs
    tiny = population_config.get_config("tiny,single=1")
    assert tiny.total_steps == 2 and tiny.optim.lr == pytest.approx(1e-3)
    for bad in ("x", "single=4", "single=", "tiny,tiny"):
        with pytest.raises(ValueError, match="configs/population.py"):
            population_config.get_config(bad)


def test_report_reads_the_runs(tmp_path):
    """Median step times after the first step, the elite from the final fitness rows (ties: the lower member),
    its accuracy, and the ratios."""
    out = tmp_path / "out"
    pop_rows = []
    for step, t in ((1, 50.0), (2, 8.0), (3, 10.0), (4, 12.0)):
        pop_rows += [{"step": step, "member": m, "step_time": t, "reward": 0.1} for m in (0, 1)]
    pop_rows += [{"step": 4, "member": 0, "population/fitness": 0.5}, {"step": 4, "member": 1, "population/fitness": 0.5},
                 {"step": 0, "member": 0, "eval/accuracy": 0.1}, {"step": 0, "member": 1, "eval/accuracy": 0.1},
                 {"step": 4, "member": 0, "eval/accuracy": 0.4}, {"step": 4, "member": 1, "eval/accuracy": 0.3}]
    _write(str(out / "population" / "metrics.jsonl"), pop_rows)
    _write(str(out / "population" / population.LINEAGE_FILE), [{"generation": 1, "member": 0}])
    for k, times in ((0, (40.0, 4.0, 5.0, 6.0)), (1, (40.0, 3.0, 3.0, 3.0))):
        rows = [{"step": i + 1, "step_time": t} for i, t in enumerate(times)]
        rows += [{"step": 0, "eval/accuracy": 0.1}, {"step": 4, "eval/accuracy": (0.2, 0.3)[k]}]
        _write(str(out / f"single{k}" / "metrics.jsonl"), rows)
    args = bench.parser().parse_args(["--config-arg", "tiny", "--out", str(out)])
    line = bench.report(args, 100.0, {0: 60.0, 1: 40.0})
    p = line["population"]
    assert p["step_s"] == 10.0 and p["elite"] == 0 and p["elite_accuracy"] == 0.4 and p["evolutions"] == 1
    assert p["accuracy_first"] == {"0": 0.1, "1": 0.1} and p["accuracy_last"] == {"0": 0.4, "1": 0.3}
    assert [s["step_s"] for s in line["singles"]] == [5.0, 3.0]
    assert [s["accuracy_last"] for s in line["singles"]] == [0.2, 0.3]
    assert line["single_step_s"] == 4.0 and line["step_ratio"] == 2.5 and line["wall_ratio"] == 1.0
