"""Mesh construction (one slice and hybrid ICI x DCN), the logical-axis rules of params, activations and caches,
`constrain`, and the same train step on 1 device and on 8 virtual devices.

XLA fixes the number of CPU devices when jax is first imported, so the 8-device checks run in fresh interpreters:
tests/multidevice_train_check.py, and this file as a script (`python tests/test_sharding.py` with
XLA_FLAGS=--xla_force_host_platform_device_count=8), which prints one JSON line that
`test_constrain_on_eight_devices` reads.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
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
    with pytest.raises(ValueError, match=r"mesh.tensor must be a positive size or -1 .*got 0"):
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
    (full finetuning with a reference, 2 micro-batches, mu = 2, packed completions), with params and Adam moments
    really sharded; and the packed step equals the padded one."""
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
    packed = report["packed_vs_padded"]  # packed on 8 devices == packed on one == padded on one
    assert packed["loss_diff"] < 1e-6 and packed["params_diff"] < 1e-6, packed
    # what was sharded: q_proj [L, 16, 16] = (layers, embed, q_heads); lm_head [16, 64] = (embed, vocab)
    assert report["full"]["2,2,2"]["spec_q"] == "(None, 'fsdp', 'tensor')"
    assert report["full"]["2,4,1"]["spec_q"] == "(None, 'fsdp', None)"
    assert report["full"]["8,1,1"]["spec_q"] == "(None, None, None)"  # pure data parallelism: replicated
    assert report["full"]["2,2,2"]["spec_adam_mu_q"] == "(None, 'fsdp', 'tensor')"  # optimizer state too
    assert report["full"]["2,2,2"]["spec_lm_head"] == "('fsdp', 'tensor')"
    assert "3 x 1 x 1 = 3 devices, but 8 devices" in report["errors"]["mesh"]
    assert "= 4 is not divisible by the mesh's data x fsdp = 8 x 1 = 8" in report["errors"]["batch"]


# ------------------------------------------------------------------------------ mesh config and hybrid meshes


def test_validate_mesh_config_names_the_bad_key():
    sharding.validate_mesh_config(sharding.mesh_config())
    sharding.validate_mesh_config({"data": -1, "fsdp": 4, "tensor": 2, "dcn_fsdp": 2})
    sharding.validate_mesh_config({"data": 4, "fsdp": 1, "tensor": 1})  # no dcn keys: one slice
    cases = [({"dcn_data": 0}, r"mesh.dcn_data must be a positive size \(1 = within one slice\), got 0"),
             ({"dcn_tensor": -1}, "mesh.dcn_tensor must be a positive size .*got -1"),
             ({"dcn_fsdp": 1.0}, "mesh.dcn_fsdp must be a positive size .*got 1.0"),
             ({"data": 6, "dcn_data": 4}, "mesh.dcn_data = 4 does not divide mesh.data = 6"),
             ({"fsdp": True}, "mesh.fsdp must be a positive size or -1 .*got True")]
    for change, message in cases:
        cfg = dict(sharding.mesh_config(), **change)
        with pytest.raises(ValueError, match=message):
            sharding.validate_mesh_config(cfg)


class _Device:
    """Stands in for a device in `mesh_utils` (which reads .platform and .device_kind); `_SliceDevice` adds
    .slice_index as multi-slice TPU devices have it."""
    platform, device_kind = "cpu", "stand-in"

    def __init__(self, index):
        self.id = index

    def __repr__(self):
        return f"d{self.id}"


class _SliceDevice(_Device):
    def __init__(self, index, slice_index):
        super().__init__(index)
        self.slice_index = slice_index


def _slices(num_slices, per_slice):
    return [_SliceDevice(s * per_slice + i, s) for s in range(num_slices) for i in range(per_slice)]


def _slice_of(grid):
    return np.vectorize(lambda d: d.slice_index)(grid)


def test_single_slice_grid_is_the_device_order():
    devices = [_Device(i) for i in range(8)]
    grid = sharding.device_grid({"data": 2, "fsdp": -1, "tensor": 2}, devices)
    assert grid.shape == (2, 2, 2)
    assert [d.id for d in grid.flat] == list(range(8))


def test_hybrid_grid_puts_each_dcn_way_on_its_own_slice():
    # 2 slices of 4: data = 2 over DCN (one slice per data shard), fsdp x tensor = 2 x 2 inside each slice
    grid = sharding.device_grid({"data": 2, "fsdp": 2, "tensor": 2, "dcn_data": 2}, _slices(2, 4))
    assert grid.shape == (2, 2, 2)
    np.testing.assert_array_equal(_slice_of(grid)[:, :, :], np.array([0, 1])[:, None, None] * np.ones((2, 2, 2)))
    # 4 slices of 2: fsdp = 4 of which 2 ways cross DCN, data = -1 -> 2 of which 2 cross DCN, tensor = 2 in-slice
    grid = sharding.device_grid({"data": -1, "fsdp": 4, "tensor": 1, "dcn_data": 2, "dcn_fsdp": 2}, _slices(4, 2))
    assert grid.shape == (2, 4, 1)
    # slices are outermost on each axis: fsdp positions 0-1 one slice, 2-3 the next; data 0 vs 1 differ by 2
    np.testing.assert_array_equal(_slice_of(grid)[:, :, 0], [[0, 0, 1, 1], [2, 2, 3, 3]])


def test_a_mesh_that_cannot_be_built_is_one_clear_error():
    cfg = {"data": 2, "fsdp": 2, "tensor": 2, "dcn_data": 2}
    with pytest.raises(ValueError, match=r"hybrid mesh data x fsdp x tensor = 2 x 2 x 2 with dcn_data x dcn_fsdp x "
                                         r"dcn_tensor = 2 x 1 x 1 \(2 slices of 1 x 2 x 2 devices\): the 8 cpu "
                                         r"devices have no slice_index"):
        sharding.device_grid(cfg, [_Device(i) for i in range(8)])
    with pytest.raises(ValueError, match=r"\(2 slices of 1 x 2 x 2 devices\), but the devices form 4 slices with "
                                         r"\[2, 2, 2, 2\] devices each"):
        sharding.device_grid(cfg, _slices(4, 2))
    with pytest.raises(ValueError, match=r"mesh.dcn_data = 3 does not divide the resolved mesh.data = 2"):
        sharding.device_grid({"data": -1, "fsdp": 2, "tensor": 2, "dcn_data": 3}, _slices(2, 4))
    with pytest.raises(ValueError, match=r"= 3 devices, but 8 devices are available"):
        sharding.device_grid({"data": 3, "fsdp": 1, "tensor": 1}, _slices(2, 4))


def test_a_library_failure_is_reraised_naming_the_sizes(monkeypatch):
    from jax.experimental import mesh_utils

    def refuse(*args, **kwargs):
        raise NotImplementedError("the physical topology cannot hold this shape")

    monkeypatch.setattr(mesh_utils, "create_device_mesh", refuse)
    with pytest.raises(ValueError, match=r"cannot build the mesh data x fsdp x tensor = 4 x 2 x 1 over 8 cpu devices: "
                                         r"NotImplementedError: the physical topology"):
        sharding.device_grid({"data": 4, "fsdp": 2, "tensor": 1}, [_Device(i) for i in range(8)])


# ------------------------------------------------------------------------- rules for activations and caches

# The documented table (sharding.py's docstring), written out again by hand.
EXPECTED_TRAIN = {
    "layers": None, "embed": "fsdp", "mlp": "tensor", "q_heads": "tensor", "kv_heads": "tensor", "vocab": "tensor",
    "norm": None, "head_dim": None,
    "activation_batch": ("data", "fsdp"), "activation_length": None, "activation_kv_length": None,
    "activation_embed": None, "activation_heads": "tensor", "activation_kv_heads": "tensor",
    "activation_head_dim": None, "activation_mlp": "tensor", "activation_vocab": "tensor",
    "cache_layers": None, "cache_batch": ("data", "fsdp"), "cache_length": None, "cache_kv_heads": "tensor",
    "cache_head_dim": None,
}


def test_rules_tables_map_each_name_as_documented():
    train = sharding.rules_for("train")
    assert train is sharding.LOGICAL_RULES and dict(train) == EXPECTED_TRAIN
    assert len(train) == len(dict(train))  # no name twice
    sample = dict(sharding.rules_for("sample"))
    assert sample == dict(EXPECTED_TRAIN, embed=None)  # decode replicates 'embed' weights instead of fsdp
    with pytest.raises(ValueError, match=r"unknown sharding phase 'eval'; known: 'train', 'sample'"):
        sharding.rules_for("eval")


def test_a_tuple_rule_shards_over_the_longest_dividing_prefix():
    spec = sharding.logical_to_mesh_spec
    names = ("activation_batch", "activation_length", "activation_embed")
    assert spec(names, (8, 5, 16), _abstract(2, 2, 2)) == PartitionSpec(("data", "fsdp"), None, None)
    assert spec(names, (6, 5, 16), _abstract(2, 2, 2)) == PartitionSpec("data", None, None)  # 6 % 4 != 0
    assert spec(names, (3, 5, 16), _abstract(2, 2, 2)) == PartitionSpec(None, None, None)
    assert spec(names, (4, 5, 16), _abstract(1, 4, 2)) == PartitionSpec("fsdp", None, None)  # size-1 data skipped
    # k/v [B, S, Hkv, hd] with 3 kv heads on tensor = 2: heads replicated; q's 4 heads split
    kv = ("activation_batch", "activation_kv_length", "activation_kv_heads", "activation_head_dim")
    assert spec(kv, (8, 7, 3, 4), _abstract(2, 2, 2)) == PartitionSpec(("data", "fsdp"), None, None, None)
    q = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
    assert spec(q, (8, 7, 4, 4), _abstract(2, 2, 2)) == PartitionSpec(("data", "fsdp"), None, "tensor", None)
    # a variant that also puts embed on fsdp: fsdp is taken by the batch first, so embed stays replicated
    variant = tuple((n, "fsdp" if n == "activation_embed" else a) for n, a in sharding.LOGICAL_RULES)
    assert spec(names, (8, 5, 16), _abstract(2, 2, 2), variant) == PartitionSpec(("data", "fsdp"), None, None)
    # a mesh without a rule's axis counts it as size 1
    assert spec(names, (8, 5, 16), AbstractMesh((4,), ("data",))) == PartitionSpec("data", None, None)


def test_sampler_rules_replicate_embed_weights_but_keep_the_tensor_split():
    mesh = _abstract(2, 2, 2)
    q_proj = ("layers", "embed", "q_heads")
    assert sharding.logical_to_mesh_spec(q_proj, (2, 16, 16), mesh, sharding.rules_for("train")) == \
        PartitionSpec(None, "fsdp", "tensor")
    assert sharding.logical_to_mesh_spec(q_proj, (2, 16, 16), mesh, sharding.rules_for("sample")) == \
        PartitionSpec(None, None, "tensor")


def test_constrain_is_a_noop_with_nothing_active():
    import jax
    import jax.numpy as jnp

    x = jnp.ones((4, 3, 8))
    names = ("activation_batch", "activation_length", "activation_embed")
    assert sharding.active_mesh() is None and sharding.constrain(x, names) is x
    with sharding.activate(None, sharding.LOGICAL_RULES):
        assert sharding.constrain(x, names) is x
    hlo = jax.jit(lambda a: sharding.constrain(a * 2, names)).lower(x).as_text()
    assert "sharding_constraint" not in hlo and "mhlo.sharding" not in hlo
    # a wrong name or name count fails even with nothing active
    with pytest.raises(ValueError, match="constrain: logical axis 'activation_batchh' has no sharding rule"):
        sharding.constrain(x, ("activation_batchh", None, None))
    with pytest.raises(ValueError, match=r"constrain: 2 logical names .* for an array of shape \(4, 3, 8\)"):
        sharding.constrain(x, names[:2])


def test_activate_nests_and_restores():
    import flax.linen as nn
    import jax

    mesh = sharding.make_mesh(sharding.mesh_config(), devices=jax.devices()[:1])
    with sharding.activate(mesh, sharding.rules_for("train")):
        assert sharding.active_mesh() is mesh and nn.get_logical_axis_rules() == sharding.LOGICAL_RULES
        with sharding.activate(None, sharding.rules_for("sample")):
            assert sharding.active_mesh() is None and nn.get_logical_axis_rules() == sharding.SAMPLER_RULES
        assert sharding.active_mesh() is mesh and nn.get_logical_axis_rules() == sharding.LOGICAL_RULES
    assert sharding.active_mesh() is None and not nn.get_logical_axis_rules()


def test_with_rules_traces_the_function_under_its_mesh_and_rules():
    import jax
    import jax.numpy as jnp

    mesh = sharding.make_mesh(sharding.mesh_config(), devices=jax.devices()[:1])
    names = ("activation_batch", "activation_length", "activation_vocab")

    def logits(x):
        assert sharding.active_mesh() is mesh  # at trace time
        return sharding.constrain(x * 2.0, names)

    x = jnp.ones((2, 3, 4))
    hlo = jax.jit(sharding.with_rules(logits, mesh, sharding.rules_for("sample"))).lower(x).as_text()
    assert hlo.count("sharding_constraint") == 0  # a one-device mesh: constrain is a no-op (8 devices: below)
    assert sharding.active_mesh() is None
    np.testing.assert_array_equal(sharding.with_rules(logits, mesh)(x), np.full((2, 3, 4), 2.0))


def test_constrain_on_eight_devices():
    """The checks of `_eight_device_report` (below), run in a fresh interpreter with 8 virtual CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip())
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert report["mesh_order"] == list(range(8))  # CPU: create_device_mesh keeps the device order
    assert "the 8 cpu devices have no slice_index" in report["hybrid_error"]
    bf, t = '{"data", "fsdp"}', '{"tensor"}'
    expected = {  # name -> (shape, the HLO's one constraint, spec of the jitted function's output)
        "hidden": ([8, 5, 16], f"[{bf}, {{}}, {{}}]", "(('data', 'fsdp'), None, None)"),
        "q": ([8, 5, 4, 4], f"[{bf}, {{}}, {t}, {{}}]", "(('data', 'fsdp'), None, 'tensor', None)"),
        # 3 kv heads do not divide by tensor = 2: replicated
        "kv_3_heads": ([8, 7, 3, 4], f"[{bf}, {{}}, {{}}, {{}}]", "(('data', 'fsdp'), None, None, None)"),
        "cache": ([2, 8, 6, 4, 4], f"[{{}}, {bf}, {{}}, {t}, {{}}]", "(None, ('data', 'fsdp'), None, 'tensor', None)"),
        # 6 rows do not divide by data x fsdp = 4: split over data only
        "cache_6_rows": ([2, 6, 6, 4, 4], f'[{{}}, {{"data"}}, {{}}, {t}, {{}}]',
                         "(None, 'data', None, 'tensor', None)"),
        "logits": ([8, 5, 96], f"[{bf}, {{}}, {t}]", "(('data', 'fsdp'), None, 'tensor')"),
        "logits_odd_vocab": ([8, 5, 97], f"[{bf}, {{}}, {{}}]", "(('data', 'fsdp'), None, None)"),  # 97: replicated
    }
    for name, (shape, constraint, spec) in expected.items():
        got = report["constrained"][name]
        assert got["shape"] == shape and got["hlo_constraints"] == [constraint], (name, got)
        assert got["spec"] == spec and got["max_abs_diff"] == 0.0, (name, got)
    # the same program without `activate`: no constraint in the HLO, the output on one device as the input
    assert report["inactive"] == {"hlo_constraints": [], "devices": 1}
    assert report["sample_rules_q_proj"] == "(None, None, 'tensor')"
    assert report["train_rules_q_proj"] == "(None, 'fsdp', 'tensor')"


def _full_spec(x) -> str:
    """The array's PartitionSpec with one entry per dimension (jax drops trailing Nones)."""
    spec = tuple(x.sharding.spec)
    return str(spec + (None,) * (x.ndim - len(spec)))


def _eight_device_report() -> dict:
    import jax
    import jax.numpy as jnp

    assert jax.device_count() == 8, jax.devices()
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": -1})
    report = {"devices": jax.device_count(), "mesh": dict(mesh.shape),
              "mesh_order": [d.id for d in mesh.devices.flat]}
    try:
        sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2, "dcn_data": 2})
        report["hybrid_error"] = "built"
    except ValueError as err:
        report["hybrid_error"] = str(err)

    cases = {
        "hidden": ((8, 5, 16), ("activation_batch", "activation_length", "activation_embed")),
        "q": ((8, 5, 4, 4), ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")),
        "kv_3_heads": ((8, 7, 3, 4), ("activation_batch", "activation_kv_length", "activation_kv_heads",
                                      "activation_head_dim")),
        "cache": ((2, 8, 6, 4, 4), ("cache_layers", "cache_batch", "cache_length", "cache_kv_heads",
                                    "cache_head_dim")),
        "cache_6_rows": ((2, 6, 6, 4, 4), ("cache_layers", "cache_batch", "cache_length", "cache_kv_heads",
                                           "cache_head_dim")),
        "logits": ((8, 5, 96), ("activation_batch", "activation_length", "activation_vocab")),
        "logits_odd_vocab": ((8, 5, 97), ("activation_batch", "activation_length", "activation_vocab")),
    }
    report["constrained"] = {}
    for name, (shape, names) in cases.items():
        x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)

        def program(a, names=names):
            with sharding.activate(mesh, sharding.rules_for("train")):  # at trace time, inside the jitted fn
                return sharding.constrain(a * 2.0 + 1.0, names)

        fn = jax.jit(program)
        out = fn(x)
        report["constrained"][name] = {
            "shape": list(out.shape), "spec": _full_spec(out),
            "hlo_constraints": re.findall(r"sdy.sharding_constraint %\S+ <@mesh, (\[.*?\])>", fn.lower(x).as_text()),
            "max_abs_diff": float(np.max(np.abs(np.asarray(out) - (np.asarray(x) * 2.0 + 1.0))))}

    names = cases["hidden"][1]
    x = jnp.ones(cases["hidden"][0])
    fn = jax.jit(lambda a: sharding.constrain(a * 2.0, names))
    report["inactive"] = {"hlo_constraints": re.findall(r"sharding_constraint.*", fn.lower(x).as_text()),
                          "devices": len(fn(x).sharding.device_set)}

    logical = {"q_proj": PartitionSpec("layers", "embed", "q_heads")}
    like = {"q_proj": jax.ShapeDtypeStruct((2, 16, 16), jnp.float32)}
    for phase in ("train", "sample"):
        got = sharding.shardings_from_logical(logical, like, mesh, sharding.rules_for(phase))
        placed = jax.device_put(jnp.zeros((2, 16, 16)), got["q_proj"])
        report[f"{phase}_rules_q_proj"] = _full_spec(placed)
    return report


if __name__ == "__main__":
    print(json.dumps(_eight_device_report()))
