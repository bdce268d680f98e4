"""The device mesh from `config.mesh` and the logical-axis rules that place parameters and batches on it.

One mesh with three axes (MaxText / Flax partitioning style):

  data    pure data parallelism: the batch is split, parameters are replicated;
  fsdp    fully-sharded data parallelism (ZeRO-3): the batch is split AND parameters / optimizer state are sharded
          on their 'embed' dimension, gathered by XLA where a layer needs them;
  tensor  Megatron-style tensor parallelism (Shoeybi et al. 2019): attention heads, MLP hidden units and the
          vocabulary are split.

Parameters carry logical axis names (`models.param_logical_axes`); `LOGICAL_RULES` maps each name to a mesh axis.
A dimension is sharded only if its size divides by the mesh axis size; otherwise it stays replicated (so a tiny
test model or an odd vocabulary runs on any mesh). The same model runs on 1 CPU, 8 virtual CPU devices or a pod
slice by changing `mesh.*` only.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax.models.config import ModelConfig
from grpo_jax.models.transformer import param_logical_axes

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the leading (batch) dimension of every batch array is split over these

# logical axis name -> mesh axis (None = replicated). MaxText's table, reduced to what this decoder uses.
LOGICAL_RULES = (
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
    ("head_dim", None),
)


def mesh_config() -> ml_collections.ConfigDict:
    """The `mesh` ConfigDict: sizes of the (data, fsdp, tensor) axes; -1 = all remaining devices."""
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 and checks that data * fsdp * tensor equals the device count."""
    sizes = []
    for axis in MESH_AXES:
        value = mesh_cfg[axis]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (value < 1 and value != -1):
            raise ValueError(f"mesh.{axis} must be a positive integer or -1 (all remaining devices), got {value!r}")
        sizes.append(int(value))
    given = dict(zip(MESH_AXES, sizes))
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got mesh {given}")
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


def make_mesh(mesh_cfg, devices: Optional[Sequence] = None) -> Mesh:
    """A `Mesh` with axes ('data', 'fsdp', 'tensor') over `devices` (default: all of `jax.devices()`)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    try:  # topology-aware placement on TPU/GPU; a plain reshape elsewhere
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # noqa: BLE001 - any failure of the heuristic falls back to the plain order
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def logical_to_mesh_spec(logical: PartitionSpec, shape: Sequence[int], mesh: Mesh,
                         rules=LOGICAL_RULES) -> PartitionSpec:
    """Maps one logical spec (e.g. ('layers', 'embed', 'mlp')) to a mesh spec for an array of `shape`.

    A dimension goes to its rule's mesh axis only if that axis has size > 1, divides the dimension, and is not
    already used by an earlier dimension; otherwise it is replicated."""
    table = dict(rules)
    names = tuple(logical) + (None,) * (len(shape) - len(tuple(logical)))
    used, out = set(), []
    for name, size in zip(names, shape):
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
        axis = table.get(name) if name is not None else None
        if axis is None or axis in used or mesh.shape[axis] == 1 or size % mesh.shape[axis]:
            out.append(None)
        else:
            out.append(axis)
            used.add(axis)
    return PartitionSpec(*out)


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def shardings_from_logical(logical_tree, params_like, mesh: Mesh):
    """NamedShardings for a tree of arrays (or ShapeDtypeStructs) given a same-structured tree of logical specs."""
    return jax.tree.map(lambda spec, x: NamedSharding(mesh, logical_to_mesh_spec(spec, x.shape, mesh)),
                        logical_tree, params_like, is_leaf=_is_spec)


def param_shardings(model_config: ModelConfig, mesh: Mesh, params_like):
    """NamedShardings for the model's parameter tree (arrays or ShapeDtypeStructs), by `LOGICAL_RULES`."""
    return shardings_from_logical(param_logical_axes(model_config), params_like, mesh)


def shard_params(params, model_config: ModelConfig, mesh: Mesh):
    """Places the parameters on the mesh by the logical-axis rules."""
    return jax.device_put(params, param_shardings(model_config, mesh, params))


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
