"""Multi-host: two CPU processes with one device each (jax.distributed, gloo collectives, coordinator on
127.0.0.1) train exactly like one process with two devices: same metrics, checkpoints written once.

Both use the mesh data = 2, so the same programs run over the same global device layout; only the transport
differs (gloo between processes vs in-process). Each process samples the whole step's prompts, decodes and scores
only the completions it holds, and the rewards are gathered.
"""

import os
import socket
import subprocess

import numpy as np

from test_train_cli import checkpoint, cache, cli_env, train_command  # noqa: F401  (fixtures)

from grpo_jax.metrics import read_metrics, without_timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.mesh.data=2", "--config.total_steps=3", "--config.eval.every=3", "--config.eval.pass_k=0",
             "--config.eval.num_samples=0", "--config.checkpoint.every=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_with_two_devices(checkpoint, cache, tmp_path):  # noqa: F811
    one_dir, two_dir = str(tmp_path / "one"), str(tmp_path / "two")
    one = subprocess.Popen(train_command(checkpoint, one_dir, *OVERRIDES), cwd=REPO, env=cli_env(cache, devices=2),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = _free_port()
    procs = [subprocess.Popen(train_command(checkpoint, two_dir, *OVERRIDES, "--coordinator_address",
                                            f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)),
                              cwd=REPO, env=cli_env(cache, devices=1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    out, err = one.communicate(timeout=600)
    assert one.returncode == 0, err[-3000:]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "done: 3 steps" in outputs[0][0] and "done:" not in outputs[1][0]  # process 0 reports

    single, multi = without_timing(read_metrics(one_dir)), without_timing(read_metrics(two_dir))
    assert [r["step"] for r in multi] == [r["step"] for r in single] == [0, 1, 2, 3, 3]  # each row once
    for a, b in zip(single, multi):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=1e-6, atol=1e-7)
    assert any(r.get("frac_reward_zero_std", 1) < 1 for r in single)  # the updates were not all zero
    assert sorted(os.listdir(os.path.join(two_dir, "checkpoints"))) == ["2", "3"]
    assert os.path.exists(os.path.join(two_dir, "export", "model.safetensors"))
