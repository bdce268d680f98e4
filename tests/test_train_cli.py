"""`python -m experiments.train` as a black box: one-line errors for bad inputs; SIGTERM saves, exits 0 and the
rerun resumes to exactly the metrics of an uninterrupted run.

Subprocesses share a persistent XLA compilation cache (cli_env), so a program compiled by one run is loaded by
the next instead of compiled again.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

import tiny_run_config
from tiny_tokenizer import make_run_checkpoint

from grpo_jax.checkpoint import check_workdir
from grpo_jax.metrics import read_metrics, without_timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "tiny_run_config.py")


def compilation_cache_dir(tmp_path_factory) -> str:
    """One cache per pytest session, shared by xdist workers."""
    base = tmp_path_factory.getbasetemp()
    base = base.parent if base.name.startswith("popen-gw") else base
    path = os.path.join(str(base), "jax_compilation_cache")
    os.makedirs(path, exist_ok=True)
    return path


def cli_env(cache_dir: str, devices: int = 1) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONPATH": REPO}
    env.pop("GRPO_JAX_TRACEBACK", None)
    inherited = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env["XLA_FLAGS"] = f"{inherited} --xla_force_host_platform_device_count={devices}".strip() if devices > 1 \
        else inherited
    return env


def train_command(checkpoint: str, workdir: str, *overrides: str) -> list:
    return [sys.executable, "-m", "experiments.train", "--config", CONFIG, "--workdir", workdir,
            f"--config.model.path={checkpoint}", *overrides]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_run_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return compilation_cache_dir(tmp_path_factory)


def test_bad_inputs_are_one_line_errors(checkpoint, cache, tmp_path):
    other = tiny_run_config.get_config()
    other.model.path = checkpoint
    other.optim.lr = 0.5
    check_workdir(str(tmp_path / "taken"), other)  # a workdir that holds a run of another config
    cases = {
        "unknown key": ([f"--config.rollout.nope=1"], 1, "unknown config key 'nope' in --config.rollout.nope"),
        "bad type": (["--config.rollout.group_size=abc"], 1, "--config.rollout.group_size=abc"),
        "bad value": (["--config.loss.variant=ppo"], 1, "unknown loss.variant 'ppo'"),
        "no model": (["--config.model.path=/no/such/model"], 1, "/no/such/model: no such file or directory"),
        "group of one": (["--config.rollout.group_size=1"], 1, "rollout.group_size must be >= 2"),
        "mesh": (["--config.mesh.data=2", "--config.rollout.prompts_per_step=3"], 2,
                 "rollout.prompts_per_step = 3 does not divide over the mesh's data x fsdp = 2 devices"),
        "taken workdir": ([], 1, "holds a run of a different config (optim.lr: 0.5 -> 0.01)"),
        "inexact skip": (["--config.optim.skip_zero_advantage=True"], 1,
                         "optim.skip_zero_advantage = True is not exact here: a completion whose advantage is 0 "
                         "still has a loss or gradient from the KL term (loss.kl_beta = 0.04)"),
    }
    procs = {}
    for name, (overrides, devices, _) in cases.items():
        workdir = str(tmp_path / ("taken" if name == "taken workdir" else name.replace(" ", "_")))
        command = train_command(checkpoint, workdir, *overrides)
        if name == "no model":
            command = [c for c in command if not c.startswith(f"--config.model.path={checkpoint}")]
        procs[name] = subprocess.Popen(command, cwd=REPO, env=cli_env(cache, devices), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (name, proc.returncode, err[-3000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err[-3000:])
        assert cases[name][2] in lines[0], (name, lines[0])
        assert "Traceback" not in err + out
    assert not os.path.exists(tmp_path / "no_model" / "run.json")  # a failed start leaves no run record


def _wait_for_row(path: str, proc, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                if '"reward"' in f.read():
                    return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its first step was logged: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError("no step logged in time")


def test_sigterm_saves_exits_zero_and_the_rerun_matches_an_uninterrupted_run(checkpoint, cache, tmp_path):
    overrides = ["--config.total_steps=60", "--config.eval.every=30", "--config.checkpoint.every=0"]
    straight_dir, preempted_dir = str(tmp_path / "straight"), str(tmp_path / "preempted")
    env = cli_env(cache)
    straight = subprocess.Popen(train_command(checkpoint, straight_dir, *overrides), cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = subprocess.Popen(train_command(checkpoint, preempted_dir, *overrides), cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_row(os.path.join(preempted_dir, "metrics.jsonl"), run)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    assert "preempted after step" in out
    saved = [int(s) for s in os.listdir(os.path.join(preempted_dir, "checkpoints")) if s.isdigit()]
    assert len(saved) == 1 and 1 <= saved[0] < 60, saved
    assert max(r["step"] for r in read_metrics(preempted_dir)) == saved[0]
    assert not os.path.exists(os.path.join(preempted_dir, "export"))

    again = subprocess.run(train_command(checkpoint, preempted_dir, *overrides), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from the checkpoint of step {saved[0]}" in again.stdout
    out, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err[-3000:]
    resumed = without_timing(read_metrics(preempted_dir))
    assert [r["step"] for r in resumed if "reward" in r] == list(range(1, 61))
    assert resumed == without_timing(read_metrics(straight_dir))
    assert os.path.exists(os.path.join(preempted_dir, "export", "config.json"))


def test_sharded_run_of_a_checkpoint_without_tokenizer_equals_the_single_device_run(cache, tmp_path):
    """A tiny random checkpoint as the factory writes it (no tokenizer files) trains with the byte-level fallback
    tokenizer; the mesh data = 2 run on two devices gives the single-device run's metrics."""
    from tiny_checkpoints import make_checkpoint

    bare = make_checkpoint("qwen2", tmp_path / "bare")
    assert not any("tokenizer" in f for f in os.listdir(bare))
    overrides = ["--config.total_steps=2", "--config.eval.every=2", "--config.eval.pass_k=0",
                 "--config.eval.num_samples=0", "--config.checkpoint.every=0"]
    runs = {}
    for devices in (1, 2):
        workdir = str(tmp_path / f"devices{devices}")
        command = train_command(bare, workdir, *overrides, f"--config.mesh.data={devices}")
        runs[devices] = (workdir, subprocess.Popen(command, cwd=REPO, env=cli_env(cache, devices),
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for workdir, proc in runs.values():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "no tokenizer files: using a byte-level tokenizer" in err
    single, sharded = (without_timing(read_metrics(runs[d][0])) for d in (1, 2))
    assert [r["step"] for r in sharded] == [r["step"] for r in single] == [0, 1, 2, 2]
    # Float32 rounding differs with the per-device shapes (the sampler's head and projections run on 32 rows per
    # device, not 64), and two Adam steps carry it into the metrics: 1.05e-5 relative at most, measured at b693079.
    # A sharding error (rows lost, duplicated or averaged wrongly) moves them by orders of magnitude more.
    for a, b in zip(single, sharded):
        assert a.keys() == b.keys()
        assert [b[k] for k in a] == pytest.approx([a[k] for k in a], rel=1e-4, abs=1e-6)
