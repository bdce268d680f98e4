"""The device mesh from `config.mesh`, and the logical-axis rules that place parameters, activations and KV caches
on it.

One mesh with three axes (MaxText / Flax partitioning style):

  data    pure data parallelism: the batch is split, parameters are replicated;
  fsdp    fully-sharded data parallelism (ZeRO-3): the batch is split AND parameters / optimizer state are sharded
          on their 'embed' dimension, gathered by XLA where a layer needs them;
  tensor  Megatron-style tensor parallelism (Shoeybi et al. 2019): attention heads, MLP hidden units and the
          vocabulary are split.

The logical-axis rules tables, `constrain` and `activate` live in `grpo_jax.partitioning` (re-exported here).
Parameters are placed by a table (`shard_params`, `param_shardings`; default the trainer's, `LOGICAL_RULES`); the
train step is traced under the trainer's table and the sampler under its own (`SAMPLER_RULES`, which also places
the sampler's weights), so activations and KV caches follow the same names in both phases.

Hybrid (ICI x DCN) meshes for multi-slice TPU runs: `mesh.dcn_data`, `mesh.dcn_fsdp`, `mesh.dcn_tensor` (default 1
= one slice) say how many of each axis's ways cross the data-centre network, so `mesh.data` stays the size of the
data axis and mesh.data / mesh.dcn_data of it lie within a slice. With any dcn size > 1 the mesh is built by
`mesh_utils.create_hybrid_device_mesh`, otherwise by `mesh_utils.create_device_mesh`. A mesh that cannot be built
is a ValueError naming the sizes, never a fallback to another placement.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax.partitioning import (  # noqa: F401  (re-exported: the rules live with constrain)
    ACTIVATION_RULES, BATCH_AXES, CACHE_RULES, LOGICAL_RULES, MESH_AXES, PARAM_RULES, RULES_BY_PHASE, SAMPLER_RULES,
    activate, active_mesh, constrain, logical_to_mesh_spec, rules_for, with_rules)

if TYPE_CHECKING:
    from grpo_jax.models.config import ModelConfig

DCN_KEYS = tuple(f"dcn_{axis}" for axis in MESH_AXES)

# --------------------------------------------------------------------------------------------- mesh config


def mesh_config() -> ml_collections.ConfigDict:
    """The `mesh` ConfigDict: sizes of the (data, fsdp, tensor) axes (-1 = all remaining devices), and how many of
    each axis's ways cross slices over DCN (`dcn_*`, 1 = within one slice)."""
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": 1, "dcn_fsdp": 1,
                                      "dcn_tensor": 1})


def _get(mesh_cfg, key, default):
    try:
        return mesh_cfg[key]
    except (KeyError, AttributeError):
        return default


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def validate_mesh_config(mesh_cfg) -> None:
    """The checks that need no devices: each axis size a positive integer or -1 (at most one -1), each dcn size a
    positive integer dividing its axis size when that is fixed. ValueError naming the key and value."""
    sizes = {}
    for axis in MESH_AXES:
        value = _get(mesh_cfg, axis, None)
        if not _is_int(value) or (value < 1 and value != -1):
            raise ValueError(f"mesh.{axis} must be a positive size or -1 (use the remaining devices), got {value!r}")
        sizes[axis] = int(value)
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got mesh {sizes}")
    for axis, key in zip(MESH_AXES, DCN_KEYS):
        value = _get(mesh_cfg, key, 1)
        if not _is_int(value) or value < 1:
            raise ValueError(f"mesh.{key} must be a positive size (1 = within one slice), got {value!r}")
        if sizes[axis] != -1 and sizes[axis] % value:
            raise ValueError(f"mesh.{key} = {value} does not divide mesh.{axis} = {sizes[axis]}: the axis is "
                             f"split into {key} slices of mesh.{axis} / mesh.{key} devices each")


def dcn_shape(mesh_cfg) -> tuple[int, int, int]:
    """(dcn_data, dcn_fsdp, dcn_tensor); a config without the keys is one slice (1, 1, 1)."""
    return tuple(int(_get(mesh_cfg, key, 1)) for key in DCN_KEYS)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 and checks that data * fsdp * tensor equals the device count."""
    validate_mesh_config(mesh_cfg)
    sizes = [int(mesh_cfg[axis]) for axis in MESH_AXES]
    given = dict(zip(MESH_AXES, sizes))
    if -1 in sizes:
        rest = math.prod(s for s in sizes if s != -1)
        if num_devices % rest:
            raise ValueError(f"mesh {given}: the fixed axes' product {rest} does not divide the "
                             f"{num_devices} available devices")
        sizes[sizes.index(-1)] = num_devices // rest
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh data x fsdp x tensor = {' x '.join(map(str, sizes))} = {math.prod(sizes)} devices, "
                         f"but {num_devices} devices are available ({jax.default_backend()}); set mesh.* so the "
                         "product matches (or one axis to -1)")
    return tuple(sizes)


def device_grid(mesh_cfg, devices: Sequence) -> np.ndarray:
    """The devices arranged as a (data, fsdp, tensor) array by `mesh_utils`: `create_device_mesh` for one slice,
    `create_hybrid_device_mesh` (each axis = dcn x ici, slices outermost) when any `mesh.dcn_*` > 1."""
    from jax.experimental import mesh_utils

    devices = list(devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    dcn = dcn_shape(mesh_cfg)
    named = " x ".join(map(str, shape))
    if dcn == (1, 1, 1):
        try:
            return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except Exception as err:  # noqa: BLE001 - the library's reason, re-raised as one error naming the sizes
            raise ValueError(f"cannot build the mesh data x fsdp x tensor = {named} over {len(devices)} "
                             f"{devices[0].platform} devices: {type(err).__name__}: {err}") from err
    for axis, total, d in zip(MESH_AXES, shape, dcn):
        if total % d:
            raise ValueError(f"mesh.dcn_{axis} = {d} does not divide the resolved mesh.{axis} = {total}")
    ici = tuple(total // d for total, d in zip(shape, dcn))
    asked = (f"hybrid mesh data x fsdp x tensor = {named} with dcn_data x dcn_fsdp x dcn_tensor = "
             f"{' x '.join(map(str, dcn))} ({math.prod(dcn)} slices of {' x '.join(map(str, ici))} devices)")
    if not all(hasattr(d, "slice_index") for d in devices):
        raise ValueError(f"{asked}: the {len(devices)} {devices[0].platform} devices have no slice_index (only "
                         "multi-slice TPU devices do); set mesh.dcn_data = mesh.dcn_fsdp = mesh.dcn_tensor = 1")
    per_slice = {}
    for d in devices:
        per_slice[d.slice_index] = per_slice.get(d.slice_index, 0) + 1
    if len(per_slice) != math.prod(dcn) or set(per_slice.values()) != {math.prod(ici)}:
        raise ValueError(f"{asked}, but the devices form {len(per_slice)} slices with "
                         f"{sorted(per_slice.values())} devices each")
    try:
        return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"cannot build the {asked}: {type(err).__name__}: {err}") from err


def make_mesh(mesh_cfg, devices: Optional[Sequence] = None) -> Mesh:
    """A `Mesh` with axes ('data', 'fsdp', 'tensor') over `devices` (default: all of `jax.devices()`)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(device_grid(mesh_cfg, devices), MESH_AXES)


# ------------------------------------------------------------------------------------------ logical -> mesh


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def shardings_from_logical(logical_tree, params_like, mesh: Mesh, rules=LOGICAL_RULES):
    """NamedShardings for a tree of arrays (or ShapeDtypeStructs) given a same-structured tree of logical specs."""
    return jax.tree.map(lambda spec, x: NamedSharding(mesh, logical_to_mesh_spec(spec, x.shape, mesh, rules)),
                        logical_tree, params_like, is_leaf=_is_spec)


def param_shardings(model_config: "ModelConfig", mesh: Mesh, params_like, rules=LOGICAL_RULES):
    """NamedShardings for the model's parameter tree (arrays or ShapeDtypeStructs), by `rules`."""
    from grpo_jax.models import param_logical_axes  # here, not at the top: the model code imports this module

    return shardings_from_logical(param_logical_axes(model_config), params_like, mesh, rules)


def shard_params(params, model_config: "ModelConfig", mesh: Mesh, rules=LOGICAL_RULES):
    """Places the parameters on the mesh by `rules` (default the trainer's table; the sampler's is
    `SAMPLER_RULES`)."""
    return jax.device_put(params, param_shardings(model_config, mesh, params, rules))


# -------------------------------------------------------------------------- activations: activate / constrain

# ------------------------------------------------------------------------------------------------ batches


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) dimension split over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split: data x fsdp."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_divisible(rows: int, mesh: Mesh, what: str = "batch size") -> None:
    """ValueError naming the size and the mesh when `rows` cannot be split evenly over data x fsdp."""
    shards = batch_shards(mesh)
    if rows % shards:
        raise ValueError(f"{what} = {rows} is not divisible by the mesh's data x fsdp = "
                         f"{mesh.shape['data']} x {mesh.shape['fsdp']} = {shards} "
                         f"(mesh {dict(mesh.shape)}); choose a batch that is a multiple of {shards}")


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Places every array of the batch with its leading dimension over ('data', 'fsdp') (checked divisible)."""
    for name, x in batch.items():
        check_batch_divisible(np.shape(x)[0], mesh, f"batch size of batch['{name}']")
    return jax.device_put(batch, batch_sharding(mesh))
