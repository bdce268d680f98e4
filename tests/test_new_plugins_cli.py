"""The three plug-ins that were each added as one file (loss variant 'sapo', advantage estimator 'gdpo', KL estimator
'full') train together through `python -m experiments.train`, set by `--config.loss.*` overrides only: their
metrics reach metrics.jsonl, and a bad value of a plug-in's own field is one line on stderr and exit 2."""

import math
import subprocess

from grpo_jax.metrics import read_metrics
from test_train_cli import REPO, cache, checkpoint, cli_env, train_command  # noqa: F401  (fixtures)

PLUGINS = ("--config.loss.variant=sapo", "--config.loss.advantage_estimator=gdpo",
           "--config.loss.kl_estimator=full", "--config.loss.sapo_tau_neg=1.2")


def test_sapo_gdpo_and_full_kl_train_through_the_cli(checkpoint, cache, tmp_path):
    workdir = str(tmp_path / "run")
    command = train_command(checkpoint, workdir, "--config.total_steps=2", "--config.eval.every=0", *PLUGINS)
    done = subprocess.run(command, cwd=REPO, env=cli_env(cache), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in read_metrics(workdir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert 0.0 < row["sapo/gate_weight_min"] <= 1.0  # SAPO's own metric, logged under its name
        assert math.isfinite(row["loss"]) and row["kl"] > -1e-6  # the exact KL is non-negative
    assert abs(rows[0]["kl"]) < 1e-5  # step 1: the policy is the reference
    assert rows[1]["kl"] > 1e-4  # after one update it is not


def test_a_bad_plugin_field_is_one_line_and_exit_2(checkpoint, cache, tmp_path):
    command = train_command(checkpoint, str(tmp_path / "bad"), *PLUGINS, "--config.loss.sapo_tau_pos=0.0")
    done = subprocess.run(command, cwd=REPO, env=cli_env(cache), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "loss.sapo_tau_pos must be > 0" in lines[0] and "0.0" in lines[0], done.stderr
