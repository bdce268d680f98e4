"""`make demo` = `python -m experiments.demo`: it runs configs/default.py into runs/demo unless told otherwise,
accepts the same overrides as experiments.train and prints held-out accuracy before and after."""

import os
import subprocess
import sys

from experiments import demo
from test_train_cli import CONFIG, REPO, cache, checkpoint, cli_env  # noqa: F401  (fixtures)


def test_defaults_go_in_front_unless_given():
    default = [f"--config={demo.DEFAULT_CONFIG}", f"--workdir={demo.DEFAULT_WORKDIR}"]
    assert demo.with_defaults(["demo"]) == ["demo", *default]
    assert demo.with_defaults(["demo", "--config.seed=1"]) == ["demo", *default, "--config.seed=1"]
    assert demo.with_defaults(["demo", "--workdir", "w"]) == ["demo", default[0], "--workdir", "w"]
    assert demo.with_defaults(["demo", "--config=c.py:tiny"]) == ["demo", default[1], "--config=c.py:tiny"]


def test_an_override_of_the_default_config_is_checked(cache, tmp_path):
    # No --config: configs/default.py is loaded, and a bad value for one of its keys is a one-line error.
    proc = subprocess.run([sys.executable, "-m", "experiments.demo", "--workdir", str(tmp_path / "w"),
                           "--config.rollout.group_size=abc"], cwd=REPO, env=cli_env(cache),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().startswith("error: ") and "--config.rollout.group_size=abc" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_prints_accuracy_before_and_after(checkpoint, cache, tmp_path):
    workdir = str(tmp_path / "demo")
    proc = subprocess.run([sys.executable, "-m", "experiments.demo", "--config", CONFIG, "--workdir", workdir,
                           f"--config.model.path={checkpoint}", "--config.total_steps=2"], cwd=REPO,
                          env=cli_env(cache), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out accuracy (greedy, 8 problems): before" in proc.stdout, proc.stdout[-3000:]
    assert "(step 0) -> after" in proc.stdout and "(step 2)" in proc.stdout
    assert os.path.exists(os.path.join(workdir, "plots", "summary.png"))
