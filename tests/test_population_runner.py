"""The runner's population loop on a tiny random checkpoint (LoRA members), a few steps per run: members equal
their own single runs (identical settings; different learning rates; effective group size g = G), masked
completions change nothing and the reward statistics use only the kept ones, one evolution's lineage rows match
the fitness rows and the copied members, resume after preemption equals the straight run, bad settings are one
clear error.

Runs share compilations: the single step per learning rate (grpo_jax.experiment.cached_program) and one population step
for every population run (its cache key leaves out the population section); completions are not packed, since
each packed-row count R is another program (tests/test_population_train_step.py covers packing).
"""

import json
import os

import jax
import numpy as np
import pytest

import tiny_run_config
from tiny_tokenizer import make_run_checkpoint

from grpo_jax import experiment as shared, models, population, runner
from grpo_jax.metrics import read_metrics, without_timing
from grpo_jax.population import experiment

LR_A, LR_B = 1e-2, 3e-2
COMPARED = ("reward", "reward_std", "rewards/arithmetic/mean", "rewards/overlong/mean", "frac_reward_zero_std",
            "completions/mean_length", "completions/clipped_ratio", "loss", "kl", "entropy", "grad_norm",
            "learning_rate", "clip_ratio/region_mean", "train/tokens_computed", "logp_mismatch")
TOL = 1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_run_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _config(checkpoint, lr=LR_A, lora_rank=4, **population_fields):
    c = tiny_run_config.get_config()
    c.model.path = checkpoint
    c.model.lora_rank = lora_rank
    c.total_steps = 3
    c.optim.lr = lr
    c.optim.pack_completions = False  # one train program per run: a packing plan's row count R is a shape
    c.eval.every = c.eval.pass_k = 0
    c.eval.num_examples = 4
    c.checkpoint.every = 0
    c.checkpoint.export_hf = c.logging.plots = c.logging.tensorboard = False
    c.logging.num_samples = 0
    if population_fields:
        c.population.size = 2
        c.population.fitness_examples = 4
        c.population.evolve_every = 100  # none in the window unless a test asks
        c.population.mutate = ("lr",)
        c.population.ranges.lr = (1e-3, 1e-1)
        for key, value in population_fields.items():
            node = c.population
            *parents, leaf = key.split("__")
            for part in parents:
                node = node[part]
            node[leaf] = value
    return c


_SINGLE = {}


def _single_rows(checkpoint, tmp_path_factory, lr, lora_rank=4, **hyperparameters):
    """The single-policy run's training rows at this learning rate and these other hyperparameters (short names,
    population.with_hyperparameters), run once per module."""
    key = (lr, lora_rank, tuple(sorted(hyperparameters.items())))
    if key not in _SINGLE:
        workdir = str(tmp_path_factory.mktemp("single"))
        runner.run(population.with_hyperparameters(_config(checkpoint, lr, lora_rank), hyperparameters), workdir)
        _SINGLE[key] = [r for r in read_metrics(workdir) if "loss" in r]
    return _SINGLE[key]


def _member_rows(workdir, k):
    return [r for r in read_metrics(workdir) if r.get("member") == k and "loss" in r]


def _assert_same(got, want, keys=COMPARED, tol=TOL):
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3]
    for a, b in zip(got, want):
        for key in keys:
            assert abs(a[key] - b[key]) <= tol * max(1.0, abs(b[key])), (a["step"], key, a[key], b[key])


@pytest.mark.parametrize("lora_rank,size", [(4, 3), (0, 2)], ids=["lora", "full"])
def test_identical_members_each_equal_the_single_run(checkpoint, tmp_path, tmp_path_factory, lora_rank, size):
    """Full finetuning: the members' KL is to the shared reference (the loaded params)."""
    want = _single_rows(checkpoint, tmp_path_factory, LR_A, lora_rank)
    workdir = str(tmp_path / "pop")
    result = runner.run(_config(checkpoint, lora_rank=lora_rank, size=size), workdir)
    assert result.status == "completed" and result.population["generation"] == 0
    for k in range(size):
        rows = _member_rows(workdir, k)
        assert all(r["hp/lr"] == LR_A for r in rows)
        _assert_same(rows, want)
    assert want[-1]["grad_norm"] > 0 and any(r["frac_reward_zero_std"] < 1 for r in want)  # something is learnt


def test_members_with_their_own_learning_rate_and_temperature_each_equal_their_own_single_run(
        checkpoint, tmp_path, tmp_path_factory):
    """Member 0: lr 1e-2, temperature 1.0 (the config's); member 1: lr 3e-2, temperature 1.25 -- its mutated
    temperature reaches its sampling and its train step's log-probs (else logp_mismatch and the loss differ)."""
    workdir = str(tmp_path / "pop")
    runner.run(_config(checkpoint, init="spread", spread=("lr", "temperature"), ranges__lr=(LR_A, LR_B),
                       ranges__temperature=(1.0, 1.25)), workdir)
    for k, (lr, temperature) in enumerate(((LR_A, 1.0), (LR_B, 1.25))):
        rows = _member_rows(workdir, k)
        assert [r["hp/lr"] for r in rows] == pytest.approx([lr] * 3)
        assert [r["hp/temperature"] for r in rows] == pytest.approx([temperature] * 3)
        extra = {} if temperature == 1.0 else {"temperature": temperature}
        _assert_same(rows, _single_rows(checkpoint, tmp_path_factory, lr, **extra))
        assert all(r["logp_mismatch"] < 1e-4 for r in rows)
    a, b = _member_rows(workdir, 0), _member_rows(workdir, 1)
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) > 1e-4  # the members really differ


def _group_config(checkpoint):
    """Member 0: effective group size 2 of G = 4; member 1: 4 (= G)."""
    return _config(checkpoint, init="spread", spread=("group_size",), mutate=(), mutation__hyperparameter=0.0,
                   ranges__group_size=(2, 4))


def test_effective_group_size_masks_completions(checkpoint, tmp_path, tmp_path_factory, monkeypatch):
    scores = []  # [N, 3 + R] of every member_batch call: step by step, member 0 then member 1
    gather = shared._gather_scores
    monkeypatch.setattr(shared, "_gather_scores", lambda *a: scores.append(gather(*a)) or scores[-1])
    workdir = str(tmp_path / "pop")
    runner.run(_group_config(checkpoint), workdir)
    full = _single_rows(checkpoint, tmp_path_factory, LR_A)
    masked, whole = _member_rows(workdir, 0), _member_rows(workdir, 1)
    assert [r["hp/group_size"] for r in masked + whole] == [2] * 3 + [4] * 3
    _assert_same(whole, full)  # g = G: the unmasked run
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(masked, full)) > 1e-4
    for i, row in enumerate(masked):  # the statistics are over completions 0, 1 of each group only
        kept = scores[2 * i].reshape(2, 4, -1)[:, :2].reshape(4, -1)
        assert row["reward"] == pytest.approx(kept[:, 0].mean(), abs=1e-6)
        assert row["completions/mean_length"] == pytest.approx(kept[:, 1].mean(), abs=1e-6)
        assert row["train/tokens"] == pytest.approx(kept[:, 1].sum())
    assert any(abs(r["reward"] - s[:, 0].mean()) > 1e-6 for r, s in zip(masked, scores[::2]))

    # Scrambling member 0's masked completions (tokens, log-probs, texts, so also their rewards) changes none of
    # its metrics but the sampler-vs-trainer gap, which looks at every row.
    sample = experiment.sample_members

    def scrambled(*args, **kwargs):
        out = list(sample(*args, **kwargs))
        (tokens, mask), rollout, completions = out[0]
        rows = np.arange(rollout.tokens.shape[0]) % 4 >= 2
        rng = np.random.RandomState(0)
        new_tokens = np.where(rows[:, None], rng.randint(3, 20, rollout.tokens.shape), np.asarray(rollout.tokens))
        new_logps = np.where(rows[:, None], -rng.rand(*rollout.logps.shape), np.asarray(rollout.logps))
        texts = [("7" * 5 if rows[completions.start + i] else t) for i, t in enumerate(completions.texts)]
        out[0] = ((tokens, mask), rollout._replace(tokens=new_tokens.astype(np.int32),
                                                   logps=new_logps.astype(np.float32)),
                  type(completions)(completions.start, texts, completions.lengths, completions.truncated))
        return out

    monkeypatch.setattr(experiment, "sample_members", scrambled)
    other = str(tmp_path / "scrambled")
    runner.run(_group_config(checkpoint), other)
    _assert_same(_member_rows(other, 0), masked, keys=[k for k in COMPARED if k != "logp_mismatch"], tol=1e-6)
    _assert_same(_member_rows(other, 1), whole, tol=1e-6)


def _evolution_config(checkpoint):
    """K = 3, an evolution after steps 1 and 2 (fitness: held-out mean reward, which differs between members), the
    final fitness after step 3; eval every 2 steps; lr mutated by factors."""
    c = _config(checkpoint, size=3, evolve_every=1, fitness="eval/mean_reward",
                mutation__none=0.0, init="spread", spread=("lr",), ranges__lr=(3e-3, 3e-2))
    c.eval.every = 2
    c.checkpoint.export_hf = c.logging.plots = True
    return c


def test_evolution_lineage_and_exact_resume_after_preemption(checkpoint, tmp_path):
    straight = str(tmp_path / "straight")
    result = runner.run(_evolution_config(checkpoint), straight)
    assert result.status == "completed" and result.population["generation"] == 2
    rows = read_metrics(straight)
    lineage = population.read_lineage(straight)
    assert [r["generation"] for r in lineage] == [0] * 3 + [1] * 3 + [2] * 3
    fitness = {(r["step"], r["member"]): r["population/fitness"] for r in rows if "population/fitness" in r}
    assert sorted(fitness) == [(s, k) for s in (1, 2, 3) for k in range(3)]
    train = {(r["step"], r["member"]): r for r in rows if "loss" in r}
    copied = 0
    for r in lineage[3:]:
        s, j, parent = r["step"], r["member"], r["parent"]
        assert r["fitness"] == pytest.approx(fitness[(s, j)]) and r["parent_fitness"] == fitness[(s, parent)]
        assert train[(s + 1, j)]["hp/lr"] == r["hyperparameters"]["lr"]  # the next step trains with them
        # The copy took the parent's params: sampled with the same key, slot j's next completions are the
        # parent's (only lr mutates, and the next rollout is drawn before the next update).
        assert train[(s + 1, j)]["reward"] == train[(s + 1, parent)]["reward"]
        assert train[(s + 1, j)]["completions/mean_length"] == train[(s + 1, parent)]["completions/mean_length"]
        copied += parent != j
    assert copied and any(r["mutation"]["kind"] == "hyperparameter" for r in lineage[3:])
    assert result.population["elite"] == int(np.argmax([fitness[(3, k)] for k in range(3)]))
    evals = [r for r in rows if "eval/accuracy" in r]
    assert sorted((r["step"], r["member"]) for r in evals) == [(s, k) for s in (0, 2, 3) for k in range(3)]
    for name in ("fitness", "hp_lr", "reward", "summary"):
        assert os.path.getsize(os.path.join(straight, "plots", f"{name}.png")) > 1000

    resumed = str(tmp_path / "resumed")
    # Preempted after the first evolution: the second one draws from the restored selection generator.
    first = runner.run(_evolution_config(checkpoint), resumed, preempt_after=1)
    assert first.status == "preempted" and first.step == 1
    assert [r["generation"] for r in population.read_lineage(resumed)] == [0] * 3 + [1] * 3
    # A killed run may have written rows after its last checkpoint: the resumed run drops and recomputes them.
    with open(os.path.join(resumed, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 2, "member": 0, "reward": 123.0}) + "\n")
    population.append_rows(resumed, lineage[-3:])
    second = runner.run(_evolution_config(checkpoint), resumed)
    assert second.status == "completed" and second.population == result.population
    assert without_timing(read_metrics(resumed)) == without_timing(rows)
    assert population.read_lineage(resumed) == lineage
    a, b = models.load(result.export), models.load(second.export)
    assert max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params))) == 0.0


@pytest.mark.parametrize("change,match", [
    (dict(fitness="eval/pass@4"), "population.fitness = 'eval/pass@4' is not a metric"),
    (dict(fitness_examples=9), "population.fitness_examples = 9 but task 'arithmetic' has 8"),
    (dict(mutate=("group_size",), ranges__group_size=(2, 6)), "max must be <= rollout.group_size = 4"),
    (dict(tournament_size=3), "tournament_size must be in 1..population.size = 2"),
])
def test_bad_population_settings_are_one_clear_error_before_loading(checkpoint, tmp_path, change, match):
    config = _config(checkpoint, **change)
    config.model.path = str(tmp_path / "not-loaded")
    with pytest.raises(ValueError, match=match):
        runner.run(config, str(tmp_path / "w"))


def test_a_population_on_several_processes_is_refused(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    config = _config(checkpoint, size=2)
    with pytest.raises(ValueError, match="a population runs in one process for now"):
        runner.run(config, str(tmp_path / "w"))


def test_members_with_the_same_params_are_evaluated_once(checkpoint, tmp_path, monkeypatch):
    """At the fresh start every member is a clone of one policy: one evaluation serves them all (eval/time 0 for
    the others), and its rows equal those of evaluating each member; after training each member is evaluated."""
    def config():
        c = _config(checkpoint, init="spread", spread=("lr",), ranges__lr=(LR_A, LR_B))
        c.eval.every = c.total_steps
        return c

    calls, evaluate = [], shared.evaluate_params
    monkeypatch.setattr(shared, "evaluate_params",
                        lambda exp, step, params: calls.append(step) or evaluate(exp, step, params))
    runner.run(config(), str(tmp_path / "once"))
    assert calls == [0, 3, 3]
    monkeypatch.setattr(experiment, "_same_params", lambda states, j, k: False)
    runner.run(config(), str(tmp_path / "each"))
    assert calls == [0, 3, 3, 0, 0, 3, 3]
    once, each = (without_timing([r for r in read_metrics(str(tmp_path / d)) if "eval/accuracy" in r])
                  for d in ("once", "each"))
    assert once == each and len(once) == 4
    rows = [r for r in read_metrics(str(tmp_path / "once")) if "eval/accuracy" in r]
    assert [r["eval/time"] > 0 for r in rows] == [True, False, True, True]
