"""Logical axis names -> mesh axes: the rules tables, and `constrain` for activations and KV caches.

Imports nothing from grpo_jax, so the model code can constrain by name (`grpo_jax.sharding` builds meshes and
places params and batches with these rules).

Every array dimension that matters carries a *logical* axis name; a rules table maps each name to mesh axes.
Parameters get theirs from the model's initialisers (`models.param_logical_axes`); activations and KV caches get
theirs where the model computes them, through `constrain`:

    with partitioning.activate(mesh, partitioning.rules_for("train")):   # at trace time, inside the jitted fn
        h = partitioning.constrain(h, ("activation_batch", "activation_length", "activation_embed"))

`constrain` is a no-op when nothing is active (no mesh: eager code, a caller without a mesh) and on a one-device
mesh, so the model code is the same on 1 CPU, 8 virtual CPU devices or a pod slice; only `mesh.*` changes.

Where each table is active (on a mesh of more than one device; elsewhere the programs are unchanged):

  training  `train_step.build_program(...).step_fn` (the one step function: `make_train_step` jits it, the
            population's step maps it over members) and `make_grad_fn`'s function are traced under
            `rules_for("train")`; params and optimizer state are placed by the same table (`sharding.shard_params`).
  sampling  the sampler's program (`sampling.generate`: prefill, token 0, the decode loop with its KV caches) is
            traced under `rules_for("sample")`, and the jitted engine places the weights by `SAMPLER_RULES`
            (`rollout.jitted.place_params`) before each call on a mesh.

The rules (`LOGICAL_RULES`, the trainer's table):

  params       layers -, embed fsdp, mlp tensor, q_heads tensor, kv_heads tensor, vocab tensor, norm -, head_dim -
  activations  activation_batch (data, fsdp), activation_length -, activation_kv_length -, activation_embed -,
               activation_heads tensor, activation_kv_heads tensor, activation_head_dim -, activation_mlp tensor,
               activation_vocab tensor
  caches       cache_layers -, cache_batch (data, fsdp), cache_length -, cache_kv_heads tensor, cache_head_dim -

(- = replicated). One dimension is sharded over its rule's mesh axes that have size > 1 and are not already used
by an earlier dimension of the same array, taking the longest prefix of them whose product divides the dimension;
if none divides, the dimension stays replicated (so a tiny test model, an odd vocabulary or 2 KV heads on
tensor = 4 run on any mesh). This one function (`logical_to_mesh_spec`) serves params, activations and caches.
A mesh axis absent from the mesh counts as size 1.

The sampler's table (`SAMPLER_RULES`) may differ from the trainer's: a training step uses each weight for B x T
tokens, so all-gathering fsdp-sharded weights is amortised over them; a decode step uses every weight for one
token per row, so the same all-gather would be paid again at every decode step. The sampler's table therefore
replicates 'embed' over fsdp (weights keep their tensor split), at the cost of params / tensor bytes per device;
placing the weights by it is one reshard per rollout when fsdp > 1 (none when they already sit so, as the
trainer's do when fsdp = 1). Activation and cache names map alike in both tables. `rules_for(phase)` picks the
table: 'train' | 'sample'.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the leading (batch) dimension of every batch array is split over these

# logical axis name -> mesh axis, tuple of mesh axes, or None (replicated). MaxText's names, reduced to what this
# decoder uses. Shapes: hidden [B, T, D], q [B, T, H, hd], k/v [B, S, Hkv, hd], logits [B, T, V],
# KV cache [L, B, S, Hkv, hd].
PARAM_RULES = (
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
    ("head_dim", None),
)
ACTIVATION_RULES = (
    ("activation_batch", BATCH_AXES),      # B (rows; prompts P for a shared prefix)
    ("activation_length", None),           # T, the query positions
    ("activation_kv_length", None),        # S, the key positions of an attention pass
    ("activation_embed", None),            # D (sharding it over 'tensor' is sequence/feature parallelism: opt-in)
    ("activation_heads", "tensor"),        # H, query heads
    ("activation_kv_heads", "tensor"),     # Hkv, key/value heads
    ("activation_head_dim", None),         # hd
    ("activation_mlp", "tensor"),          # the MLP's hidden units
    ("activation_vocab", "tensor"),        # V, logits
)
CACHE_RULES = (
    ("cache_layers", None),                # L
    ("cache_batch", BATCH_AXES),           # B (rows being decoded; P for the prompt's prefix cache)
    ("cache_length", None),                # S, the cache slots
    ("cache_kv_heads", "tensor"),          # Hkv
    ("cache_head_dim", None),              # hd
)
LOGICAL_RULES = PARAM_RULES + ACTIVATION_RULES + CACHE_RULES  # the trainer's table
SAMPLER_RULES = tuple((name, None if name == "embed" else axes) for name, axes in LOGICAL_RULES)
RULES_BY_PHASE = {"train": LOGICAL_RULES, "sample": SAMPLER_RULES}


def rules_for(phase: str):
    """The rules table of a phase: 'train' (`LOGICAL_RULES`) or 'sample' (`SAMPLER_RULES`)."""
    if phase not in RULES_BY_PHASE:
        raise ValueError(f"unknown sharding phase {phase!r}; known: {', '.join(map(repr, RULES_BY_PHASE))}")
    return RULES_BY_PHASE[phase]


def logical_to_mesh_spec(logical, shape: Sequence[int], mesh, rules=LOGICAL_RULES) -> PartitionSpec:
    """Maps one logical spec (e.g. ('layers', 'embed', 'mlp')) to a mesh spec for an array of `shape`.

    A dimension goes to the longest prefix of its rule's mesh axes (those of size > 1, not used by an earlier
    dimension) whose product divides the dimension; otherwise it is replicated. Missing trailing names are
    replicated; an unknown name is a ValueError."""
    table = dict(rules)
    names = tuple(logical) + (None,) * (len(shape) - len(tuple(logical)))
    used, out = set(), []
    for name, size in zip(names, shape):
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
        axes = table.get(name) if name is not None else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes = [a for a in axes if a not in used and dict(mesh.shape).get(a, 1) > 1]
        while axes and size % math.prod(mesh.shape[a] for a in axes):
            axes.pop()
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
        used.update(axes)
    return PartitionSpec(*out)


# -------------------------------------------------------------------------- activations: activate / constrain

_ACTIVE = threading.local()  # .mesh: the Mesh that `constrain` places on (rules: Flax's logical_axis_rules)


@contextlib.contextmanager
def activate(mesh: Optional[Mesh], rules=LOGICAL_RULES):
    """Within this block `constrain` places activations on `mesh` by `rules` (Flax's `nn.logical_axis_rules` holds
    the rules). `mesh=None` keeps `constrain` a no-op. Python state read at trace time: enter it inside the function
    that `jax.jit` traces (or around its first call with the mesh and rules it keys on), since jit's cache does
    not see it (`with_rules` does this for a function); the block may be entered inside a trace (unlike
    `jax.set_mesh`)."""
    previous = getattr(_ACTIVE, "mesh", None)
    _ACTIVE.mesh = mesh
    try:
        with nn.logical_axis_rules(tuple(rules)):
            yield
    finally:
        _ACTIVE.mesh = previous


def with_rules(fn, mesh: Optional[Mesh], rules=LOGICAL_RULES):
    """`fn` running under `activate(mesh, rules)`: `jax.jit(with_rules(loss_fn, mesh, rules_for("train")))` traces
    `fn` with its mesh and rules, so a cached trace never holds another table's constraints."""
    @functools.wraps(fn)
    def under_rules(*args, **kwargs):
        with activate(mesh, rules):
            return fn(*args, **kwargs)
    return under_rules


def active_mesh() -> Optional[Mesh]:
    """The mesh `constrain` places on now, or None (then it is a no-op)."""
    return getattr(_ACTIVE, "mesh", None)


def constrain(x: jax.Array, logical_names: Sequence[Optional[str]]) -> jax.Array:
    """`x` with a sharding constraint from its logical axis names (one per dimension; None = replicated), by the
    active mesh and rules (`activate`); `x` itself when none are active or the mesh has one device. Dimensions
    that do not divide stay replicated (`logical_to_mesh_spec`). A name count that differs from `x.ndim`, or a
    name without a rule, is a ValueError whether or not a mesh is active."""
    mesh, rules = active_mesh(), nn.get_logical_axis_rules()
    names = tuple(logical_names)
    if len(names) != np.ndim(x):
        raise ValueError(f"constrain: {len(names)} logical names {names} for an array of shape {np.shape(x)}")
    unknown = [n for n in names if n is not None and n not in dict(rules or LOGICAL_RULES)]
    if unknown:  # checked with nothing active too, so a misspelt name fails on one CPU device
        raise ValueError(f"constrain: logical axis {unknown[0]!r} has no sharding rule; "
                         f"known: {sorted(dict(rules or LOGICAL_RULES))}")
    if mesh is None or not rules or mesh.size == 1:
        return x
    spec = logical_to_mesh_spec(names, np.shape(x), mesh, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
