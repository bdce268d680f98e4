"""The experiment loop on a tiny random checkpoint, in-process: outputs of a run, exact resume, refusal of a
workdir that holds another config's run.

One 4-step run is the reference; the resumed run uses the same config, so the jitted train step is compiled once
(grpo_jax.experiment.cached_program) and the test stays fast.
"""

import json
import os

import jax
import numpy as np
import pytest

import tiny_run_config
from tiny_tokenizer import make_run_checkpoint

from grpo_jax import experiment, models, runner
from grpo_jax.checkpoint import WorkdirMismatchError, check_workdir
from grpo_jax.metrics import read_metrics, without_timing

TRL_KEYS = ("reward", "reward_std", "rewards/arithmetic/mean", "rewards/overlong/mean", "frac_reward_zero_std",
            "completions/mean_length", "completions/clipped_ratio", "kl", "entropy", "clip_ratio/region_mean",
            "loss", "grad_norm", "learning_rate", "step_time", "sampler/tokens_per_s", "logp_mismatch")
EVAL_KEYS = ("eval/accuracy", "eval/pass@2", "eval/answer_rate", "eval/mean_reward")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_run_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _config(checkpoint):
    c = tiny_run_config.get_config()
    c.model.path = checkpoint
    return c


def test_a_run_writes_everything_and_a_preempted_run_resumes_bit_identically(checkpoint, tmp_path):
    # One test, so that pytest-xdist does not run the reference run once per worker.
    straight_dir, workdir = str(tmp_path / "straight"), str(tmp_path / "resumed")
    result = runner.run(_config(checkpoint), straight_dir)
    _check_outputs(straight_dir, result, checkpoint)

    first = runner.run(_config(checkpoint), workdir, preempt_after=2)  # as if SIGTERM came during step 2
    assert first.status == "preempted" and first.step == 2
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
    assert not os.path.exists(os.path.join(workdir, "export"))
    # A killed run may have logged rows after its last checkpoint: the resumed run recomputes them.
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 3, "reward": 123.0}) + "\n")
    second = runner.run(_config(checkpoint), workdir)
    assert second.status == "completed" and second.step == 4 and second.first_eval is None
    expected = without_timing(read_metrics(straight_dir))
    assert without_timing(read_metrics(workdir)) == expected  # bit-identical, not approximately
    samples = [open(os.path.join(d, "eval_samples.jsonl")).read() for d in (workdir, straight_dir)]
    assert samples[0] == samples[1] and samples[0].count('"step": 0,') >= 1  # the full completions, resumed too
    # Running a finished run again changes nothing; a cadence change (checkpoint.every) is accepted.
    again = _config(checkpoint)
    again.checkpoint.every = 2
    assert runner.run(again, workdir).status == "completed"
    assert without_timing(read_metrics(workdir)) == expected


def _check_outputs(workdir, result, checkpoint):
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
        assert "eval/format_rate" not in row  # arithmetic's prompt asks for <answer> tags, not the R1 format
    # The policy learns something: the advantages are not all zero and the params move away from the reference.
    assert any(r["frac_reward_zero_std"] < 1 for r in train)
    assert train[-1]["kl"] > 0 and all(r["grad_norm"] > 0 for r in train)
    assert result.first_eval == {k: v for k, v in evals[0].items() if k not in ("step", "eval/time")}

    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "4"]  # every step, keep 2
    with open(os.path.join(workdir, "run.json")) as f:
        assert json.load(f)["config"]["rollout"]["group_size"] == 4
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


def test_a_workdir_of_another_config_is_refused_before_loading_anything(checkpoint, tmp_path):
    workdir = str(tmp_path / "taken")
    check_workdir(workdir, _config(checkpoint))
    other = _config(checkpoint)
    other.optim.lr = 0.5
    other.model.path = str(tmp_path / "not-loaded")  # the refusal comes first
    with pytest.raises(WorkdirMismatchError, match=r"optim.lr: 0.01 -> 0.5"):
        runner.run(other, workdir)
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))


def test_trained_on_the_needed_columns_only_the_run_is_the_same(checkpoint, tmp_path, monkeypatch):
    """The runner trims the completion columns to `completion_width`; forcing the tightest width (the longest
    completion exactly) on every step, with packed completions, gives the metrics of the untrimmed padded run."""
    config = _config(checkpoint)
    config.total_steps, config.eval.every, config.checkpoint.every = 2, 0, 0
    config.rollout.max_new_tokens = 12
    config.checkpoint.export_hf = config.logging.plots = config.logging.tensorboard = False
    padded = config.copy_and_resolve_references()
    padded.optim.pack_completions = False
    monkeypatch.setattr(experiment, "completion_width", lambda longest, t, packed: t)
    runner.run(padded, str(tmp_path / "full"))
    monkeypatch.setattr(experiment, "completion_width", lambda longest, t, packed: int(min(t, max(longest, 1))))
    runner.run(config, str(tmp_path / "trimmed"))
    full, trimmed = ([r for r in read_metrics(str(tmp_path / d)) if "loss" in r] for d in ("full", "trimmed"))
    assert [r["train/completion_width"] for r in full] == [12, 12]
    assert any(r["train/completion_width"] < 12 for r in trimmed), trimmed
    assert [r["train/tokens_computed"] for r in full] == [8 * 12] * 2  # padded: 2 x 4 rows at the full width
    assert all(r["train/tokens"] <= r["train/tokens_computed"] <= 8 * r["train/completion_width"] for r in trimmed)
    for a, b in zip(full, trimmed):
        for k in ("loss", "kl", "entropy", "grad_norm", "reward"):
            assert abs(a[k] - b[k]) < 1e-5, (k, a[k], b[k])


def test_a_checkpoint_holding_another_data_position_is_refused():
    """experiment.restore_checkpoint (the single and the population loop's restore) checks the data position."""
    class Checkpoint:
        def restore(self, step, state, key):
            return state, key, {"data_position": 16}

    assert experiment.restore_checkpoint(Checkpoint(), 2, "state", "key", 16, "/w") == \
        ("state", "key", {"data_position": 16})
    with pytest.raises(ValueError, match="checkpoint 2 in /w holds data position 16, expected 24; the workdir is "
                                         "inconsistent"):
        experiment.restore_checkpoint(Checkpoint(), 2, "state", "key", 24, "/w")


def test_sampling_unrolled_while_training_scanned_gives_the_same_run(checkpoint, tmp_path):
    """rollout.unrolled_decode: the sampler decodes with the layers unrolled (its model config says so), the train
    step still scans them, and the run's rollouts and metrics are the scanned run's."""
    rows = {}
    for unrolled in (False, True):
        config = _config(checkpoint)
        config.total_steps, config.eval.every, config.checkpoint.every = 2, 0, 0
        config.checkpoint.export_hf = config.logging.plots = config.logging.tensorboard = False
        config.rollout.unrolled_decode = unrolled
        exp = experiment.Experiment(config, str(tmp_path / f"probe_{unrolled}"))
        assert exp.sampler.model_config.scan_layers is (not unrolled)
        runner.run(config, str(tmp_path / str(unrolled)))
        rows[unrolled] = [r for r in read_metrics(str(tmp_path / str(unrolled))) if "loss" in r]
    assert len(rows[False]) == len(rows[True]) == 2
    for a, b in zip(rows[False], rows[True]):
        assert a["completions/mean_length"] == b["completions/mean_length"]
        for k in ("reward", "loss", "entropy", "grad_norm", "logp_mismatch/max"):
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])
