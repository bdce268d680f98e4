"""Every experiment a user may launch from the shipped configs trains: each file in configs/ablations/, and the demo
config (configs/default.py) with the overrides a researcher tries first (a KL term, the exact KL, an entropy bonus,
a population, another variant). Speed switches apply where exact and stand aside elsewhere, so none refuses them.

Each run is `python -m experiments.train --config <file> ...` on a tiny random checkpoint for one step (the sizes
shrunk on the command line; what the file sets otherwise is kept), sharing a persistent compilation cache.
"""

import glob
import json
import math
import os
import subprocess
import sys

import pytest

from test_train_cli import REPO, cache, checkpoint, cli_env  # noqa: F401  (the tiny checkpoint and compile cache)
from tiny_tokenizer import make_run_checkpoint


@pytest.fixture(scope="module")
def long_checkpoint(tmp_path_factory):
    """The tiny checkpoint with a context of 512 positions: the demo's system message makes prompts of ~300 tokens."""
    return make_run_checkpoint(tmp_path_factory.mktemp("ckpt512") / "tiny", max_position_embeddings=512)

ABLATIONS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "ablations", "*.py"))
                   if not p.endswith("__init__.py"))
DEMO_OVERRIDES = {
    "kl_beta": ["--config.loss.kl_beta=0.04"],
    "kl_full": ["--config.loss.kl_estimator=full", "--config.loss.kl_beta=0.05"],
    "entropy": ["--config.loss.entropy_coef=0.01"],
    "population": ["--config.population.size=3", "--config.population.fitness_examples=2",
                   "--config.population.evolve_every=1"],
    "sapo": ["--config.loss.variant=sapo"],
}
TINY = ["--config.total_steps=1", "--config.rollout.prompts_per_step=2", "--config.rollout.group_size=4",
        "--config.rollout.max_new_tokens=8", "--config.optim.micro_batch_size=0", "--config.eval.every=0",
        "--config.checkpoint.every=0", "--config.logging.progress=False", "--config.task.eval_size=8"]


def _train(config_file: str, checkpoint: str, cache: str, workdir: str, *overrides: str) -> list:
    command = [sys.executable, "-m", "experiments.train", "--config", os.path.join(REPO, config_file),
               "--workdir", workdir, f"--config.model.path={checkpoint}", *TINY, *overrides]
    proc = subprocess.run(command, cwd=REPO, env=cli_env(cache), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (config_file, overrides, proc.stderr[-3000:])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    trained = [r for r in rows if "loss" in r]
    assert trained and all(r["step"] == 1 for r in trained), rows
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in trained), trained
    return trained


@pytest.mark.parametrize("name", ABLATIONS)
def test_every_ablation_config_trains(name, checkpoint, cache, tmp_path):
    _train(f"configs/ablations/{name}.py", checkpoint, cache, str(tmp_path / name))


@pytest.mark.parametrize("name", sorted(DEMO_OVERRIDES))
def test_the_demo_config_trains_with_each_first_ablation(name, long_checkpoint, cache, tmp_path):
    rows = _train("configs/default.py", long_checkpoint, cache, str(tmp_path / name), *DEMO_OVERRIDES[name])
    assert all(r["env/observation_tokens"] >= 0 for r in rows)  # the demo plays calculator episodes
    if name == "population":
        assert sorted(r["member"] for r in rows) == [0, 1, 2]
    if name.startswith("kl"):
        assert all("kl" in r for r in rows)


def test_the_demo_config_skips_its_zero_advantage_groups():
    """'auto' is on for the demo as shipped (no KL, no entropy bonus, GRPO), and off for each override that adds a
    term alive at advantage 0."""
    sys.path.insert(0, REPO)
    from configs import default
    from grpo_jax import train_step
    from grpo_jax.population import train as population_train

    c = default.get_config()
    assert c.optim.skip_zero_advantage == "auto"
    assert train_step._settings(c).skip_zero_advantage
    for name, overrides in DEMO_OVERRIDES.items():
        c = default.get_config()
        for o in overrides:
            key, value = o[len("--config."):].split("=")
            section, field = key.split(".")
            c[section][field] = type(c[section][field])(value)
        traced = population_train.traced_loss_fields(c)
        on = train_step._settings(c, use_kl=population_train.reference_needed(c), traced=traced).skip_zero_advantage
        assert on == (name == "sapo"), name
