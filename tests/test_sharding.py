"""Mesh construction, the logical-axis rules, and the same train step on 1 device and on 8 virtual devices."""

import json
import os
import subprocess
import sys

import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from grpo_jax import sharding

HERE = os.path.dirname(os.path.abspath(__file__))


def _abstract(data, fsdp, tensor):
    return AbstractMesh((data, fsdp, tensor), sharding.MESH_AXES)


def test_mesh_shape_resolves_minus_one_and_checks_the_device_count():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.mesh_shape(sharding.mesh_config(), 8) == (8, 1, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": 4, "tensor": 1}, 8) == (2, 4, 1)
    with pytest.raises(ValueError, match=r"mesh data x fsdp x tensor = 2 x 2 x 1 = 4 devices, but 8 devices"):
        sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ValueError, match=r"fixed axes' product 3 does not divide the 8 available devices"):
        sharding.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match=r"mesh.tensor must be a positive integer or -1 .*got 0"):
        sharding.mesh_shape({"data": 1, "fsdp": 1, "tensor": 0}, 8)


def test_make_mesh_on_this_process():
    mesh = sharding.make_mesh(sharding.mesh_config())
    assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.devices.size == len(mesh.devices.flat)
    with pytest.raises(ValueError, match=r"= 3 devices, but \d+ devices are available"):
        sharding.make_mesh({"data": 3, "fsdp": 1, "tensor": 1}, devices=mesh.devices.flat[:1])


def test_logical_rules_shard_only_dimensions_that_divide():
    mesh = _abstract(2, 2, 2)
    spec = sharding.logical_to_mesh_spec
    assert spec(PartitionSpec("layers", "embed", "mlp"), (3, 16, 32), mesh) == PartitionSpec(None, "fsdp", "tensor")
    assert spec(PartitionSpec("layers", "q_heads", "embed"), (3, 16, 16), mesh) == PartitionSpec(None, "tensor", "fsdp")
    # vocab 97 does not divide by tensor = 2: replicated; embed 15 does not divide by fsdp = 2
    assert spec(PartitionSpec("vocab", "embed"), (97, 16), mesh) == PartitionSpec(None, "fsdp")
    assert spec(PartitionSpec("embed", "vocab"), (15, 98), mesh) == PartitionSpec(None, "tensor")
    # an axis of size 1 shards nothing; a mesh axis is never used twice in one spec; norms are replicated
    assert spec(PartitionSpec("embed", "mlp"), (16, 32), _abstract(8, 1, 1)) == PartitionSpec(None, None)
    assert spec(PartitionSpec("mlp", "q_heads"), (32, 32), mesh) == PartitionSpec("tensor", None)
    assert spec(PartitionSpec("layers", "norm"), (3, 8), mesh) == PartitionSpec(None, None)
    with pytest.raises(ValueError, match="logical axis 'experts' has no sharding rule"):
        spec(PartitionSpec("experts"), (4,), mesh)


def test_lora_adapters_shard_like_the_kernels_they_adapt():
    import jax

    from grpo_jax.models import lora, param_logical_axes
    from train_fixtures import CFG, params

    mesh = _abstract(2, 2, 2)
    base = params(0)  # outside the trace: params() is cached, and a cached tracer would leak into later tests
    adapters = jax.eval_shape(lambda: lora.init_lora(base, 4, jax.random.PRNGKey(0)))
    logical = lora.lora_logical_axes(param_logical_axes(CFG), adapters)
    q = logical["layers"]["attn"]["q_proj"]
    assert (q["a"], q["b"]) == (PartitionSpec("layers", "embed", None), PartitionSpec("layers", None, "q_heads"))
    got = sharding.shardings_from_logical(logical, adapters, mesh)
    assert got["layers"]["mlp"]["down_proj"]["a"].spec == PartitionSpec(None, "tensor", None)  # A [L, mlp, r]
    assert got["layers"]["mlp"]["down_proj"]["b"].spec == PartitionSpec(None, None, "fsdp")  # B [L, r, embed]


def test_batch_must_divide_over_data_and_fsdp():
    mesh = _abstract(2, 4, 1)
    sharding.check_batch_divisible(16, mesh)
    with pytest.raises(ValueError, match=r"batch size = 12 is not divisible by the mesh's data x fsdp = 2 x 4 = 8"):
        sharding.check_batch_divisible(12, mesh)
    assert sharding.batch_sharding(sharding.make_mesh(sharding.mesh_config())).spec == PartitionSpec(("data", "fsdp"))


def test_same_step_on_one_and_eight_devices():
    """Meshes (8,1,1), (2,4,1), (2,2,2) of 8 virtual CPU devices give the single device's loss and updated params
    (full finetuning with a reference, 2 micro-batches, mu = 2), with params and Adam moments really sharded."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip())
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_train_check.py")], env=env, cwd=root,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("8,1,1", "2,4,1", "2,2,2"):
        full = report["full"][name]
        assert full["loss_diff"] < 1e-5 and full["params_diff"] < 1e-5, (name, full)
        assert full["moved"] > 1e-4
    assert report["full"]["single"]["kl"] > 0  # the reference was used
    # what was sharded: q_proj [L, 16, 16] = (layers, embed, q_heads); lm_head [16, 64] = (embed, vocab)
    assert report["full"]["2,2,2"]["spec_q"] == "(None, 'fsdp', 'tensor')"
    assert report["full"]["2,4,1"]["spec_q"] == "(None, 'fsdp', None)"
    assert report["full"]["8,1,1"]["spec_q"] == "(None, None, None)"  # pure data parallelism: replicated
    assert report["full"]["2,2,2"]["spec_adam_mu_q"] == "(None, 'fsdp', 'tensor')"  # optimizer state too
    assert report["full"]["2,2,2"]["spec_lm_head"] == "('fsdp', 'tensor')"
    assert "3 x 1 x 1 = 3 devices, but 8 devices" in report["errors"]["mesh"]
    assert "= 4 is not divisible by the mesh's data x fsdp = 8 x 1 = 8" in report["errors"]["batch"]
