"""Orbax checkpoints: exact round trip, keep-last-k, atomicity under SIGKILL mid-save, the workdir's run record."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax import config as config_lib
from grpo_jax.checkpoint import Checkpointer, WorkdirMismatchError, check_workdir
from grpo_jax.train_step import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(seed: float) -> TrainState:
    params = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) * seed, "b": jnp.full((4,), seed, jnp.bfloat16)}
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * 0.1, params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-trivial moments and count
    return TrainState(params, opt_state, jnp.int32(int(seed)))


def _assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact_and_keeps_the_last_k(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    assert ckpt.latest_step() is None
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), jax.random.PRNGKey(7), data_position=step * 4)
    assert ckpt.all_steps() == [2, 3]
    ckpt.close()

    again = Checkpointer(str(tmp_path), keep=2)
    state, key, meta = again.restore(again.latest_step(), _state(0.0), jax.random.PRNGKey(0))
    again.close()
    _assert_same(state, _state(3))
    np.testing.assert_array_equal(np.asarray(key), np.asarray(jax.random.PRNGKey(7)))
    assert meta["step"] == 3 and meta["data_position"] == 12
    assert os.path.isdir(tmp_path / "checkpoints" / "3")


# A child process saves step 1, then dies by SIGKILL inside the save of step 2: after every file of step 2 is
# written to orbax's temporary dir, just before the rename that commits it.
_KILLED_MID_SAVE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from orbax.checkpoint._src.path import atomicity
    import test_checkpoint as t
    from grpo_jax.checkpoint import Checkpointer
    import jax
    ckpt = Checkpointer({workdir!r}, keep=3)
    ckpt.save(1, t._state(1.0), jax.random.PRNGKey(1), data_position=4)
    async def die(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    atomicity.AtomicRenameTemporaryPath.finalize = die
    ckpt.save(2, t._state(2.0), jax.random.PRNGKey(2), data_position=8)
    print("the save of step 2 returned", flush=True)
""")


def test_a_kill_during_a_save_leaves_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    code = _KILLED_MID_SAVE.format(tests=os.path.join(REPO, "tests"), workdir=workdir)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed, not finished
    assert "returned" not in proc.stdout
    entries = os.listdir(os.path.join(workdir, "checkpoints"))
    assert "1" in entries and "2" not in entries
    assert any(e.startswith("2.orbax-checkpoint-tmp") for e in entries), entries  # died mid-save of step 2

    ckpt = Checkpointer(workdir, keep=3)
    assert ckpt.latest_step() == 1
    state, key, meta = ckpt.restore(1, _state(0.0), jax.random.PRNGKey(0))
    _assert_same(state, _state(1.0))
    assert meta["data_position"] == 4
    ckpt.save(2, _state(2.0), jax.random.PRNGKey(2), data_position=8)  # the resumed run saves step 2 again
    assert ckpt.all_steps() == [1, 2]
    ckpt.close()
    assert not any("tmp" in e for e in os.listdir(os.path.join(workdir, "checkpoints")))


def test_workdir_of_another_config_is_refused_with_the_difference(tmp_path):
    config = config_lib.base_config()
    check_workdir(str(tmp_path), config)
    assert os.path.exists(tmp_path / "run.json") and os.path.exists(tmp_path / "config.json")
    check_workdir(str(tmp_path), config)  # same config: fine
    cadence = config_lib.base_config()
    cadence.checkpoint.every, cadence.logging.wandb = 3, "my-project"
    check_workdir(str(tmp_path), cadence)  # cadence / logging may change when resuming
    other = config_lib.base_config()
    other.rollout.group_size = 4
    with pytest.raises(WorkdirMismatchError, match=r"holds a run of a different config \(rollout.group_size: 8 -> 4\)"):
        check_workdir(str(tmp_path), other)


def test_checkpoints_without_a_run_record_are_refused(tmp_path):
    os.makedirs(tmp_path / "checkpoints" / "5")
    with pytest.raises(WorkdirMismatchError, match="has checkpoints but no run.json"):
        check_workdir(str(tmp_path), config_lib.base_config())
