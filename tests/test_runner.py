"""The experiment loop on a tiny random checkpoint, in-process: outputs of a run, exact resume, refusal of a
workdir that holds another config's run.

One 4-step run (module fixture) is the reference; the resumed run uses the same config, so the jitted train step
is compiled once for the module (runner._cached_train_step) and the tests stay fast.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import tiny_run_config
from tiny_tokenizer import make_run_checkpoint

from grpo_jax import models, runner
from grpo_jax.checkpoint import WorkdirMismatchError
from grpo_jax.metrics import read_metrics, without_timing

TRL_KEYS = ("reward", "reward_std", "rewards/arithmetic/mean", "rewards/overlong/mean", "frac_reward_zero_std",
            "completions/mean_length", "completions/clipped_ratio", "kl", "entropy", "clip_ratio/region_mean",
            "loss", "grad_norm", "learning_rate", "step_time", "sampler/tokens_per_s", "logp_mismatch")
EVAL_KEYS = ("eval/accuracy", "eval/pass@2", "eval/format_rate", "eval/mean_reward")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_run_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _config(checkpoint):
    c = tiny_run_config.get_config()
    c.model.path = checkpoint
    return c


@pytest.fixture(scope="module")
def straight(checkpoint, tmp_path_factory):
    """An uninterrupted 4-step run: (workdir, result)."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    return workdir, runner.run(_config(checkpoint), workdir)


def test_a_run_writes_metrics_evals_checkpoints_export_and_plots(straight, checkpoint):
    workdir, result = straight
    assert result.status == "completed" and result.step == 4
    rows = read_metrics(workdir)
    train = [r for r in rows if "reward" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [r["step"] for r in evals] == [0, 2, 4]  # at the start, every eval.every = 2 steps, at the end
    for row in train:
        assert set(TRL_KEYS) <= set(row), set(TRL_KEYS) - set(row)
        assert all(np.isfinite(v) for v in row.values())
        assert row["logp_mismatch"] < 1e-4  # the sampler's log-probs are the trainer's
    for row in evals:
        assert set(EVAL_KEYS) <= set(row) and row["eval/num_examples"] == 8  # the whole eval split
    # The policy learns something: the advantages are not all zero and the params move away from the reference.
    assert any(r["frac_reward_zero_std"] < 1 for r in train)
    assert train[-1]["kl"] > 0 and all(r["grad_norm"] > 0 for r in train)
    assert result.first_eval == {k: v for k, v in evals[0].items() if k not in ("step", "eval/time")}

    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "4"]  # every step, keep 2
    assert json.load(open(os.path.join(workdir, "run.json")))["config"]["rollout"]["group_size"] == 4
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    for name in ("reward", "eval_accuracy", "kl", "completion_length", "summary"):
        assert os.path.getsize(os.path.join(workdir, "plots", f"{name}.png")) > 1000

    exported = models.load(result.export)  # the final policy as an HF checkpoint dir, with the tokenizer
    base = models.load(checkpoint)
    assert exported.tokenizer is not None
    assert jax.tree.structure(exported.params) == jax.tree.structure(base.params)
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(exported.params), jax.tree.leaves(base.params))]
    assert max(moved) > 0  # trained weights, not the initial ones


def test_resume_after_preemption_equals_the_uninterrupted_run(straight, checkpoint, tmp_path):
    workdir = str(tmp_path / "resumed")
    first = runner.run(_config(checkpoint), workdir, preempt_after=2)
    assert first.status == "preempted" and first.step == 2
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
    assert not os.path.exists(os.path.join(workdir, "export"))
    # A killed run may have logged rows after its last checkpoint: the resumed run recomputes them.
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 3, "reward": 123.0}) + "\n")
    second = runner.run(_config(checkpoint), workdir)
    assert second.status == "completed" and second.first_eval is None
    expected = without_timing(read_metrics(straight[0]))
    assert without_timing(read_metrics(workdir)) == expected  # bit-identical, not approximately
    # Running a finished run again changes nothing.
    runner.run(_config(checkpoint), workdir)
    assert without_timing(read_metrics(workdir)) == expected


def test_a_workdir_of_another_config_is_refused(straight, checkpoint, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(straight[0], workdir)
    other = _config(checkpoint)
    other.optim.lr = 0.5
    with pytest.raises(WorkdirMismatchError, match=r"optim.lr: 0.01 -> 0.5"):
        runner.run(other, workdir)
    cadence = _config(checkpoint)
    cadence.checkpoint.every = 2  # cadence may change between invocations: the finished run is accepted
    assert runner.run(cadence, workdir).status == "completed"
