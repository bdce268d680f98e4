"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") as a separate parameter tree.

For a kernel W [in, out] (Flax layout: y = x @ W) the adapted kernel is

    W' = W + (alpha / rank) * A @ B,    A [in, rank] random, B [rank, out] zero at init,

so W' = W at initialisation (Hu et al. sec. 4.1: one factor Gaussian/random, the other zero, scaled by
alpha / r). In the paper's notation h = W0 x + B A x, their A (r x k, random) is our A^T and their B (d x r, zero)
our B^T. Layers are stacked [L, ...], so each adapter is too: A [L, in, r], B [L, r, out].

The adapters live in their own tree (mirroring the paths of the kernels they adapt) and are merged functionally
(`merge`) wherever the model runs: only they are trained and held in the optimizer, and the frozen base with the
adapters off *is* the reference policy, so no second copy of the weights exists. A population's members
(`Members`: adapters with a leading member axis) can also run unmerged, all in one batch over the one base
(`MemberAdapters`, read by `decoder.hidden_states(adapters=)`; see the section at the end).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

# Attention q/k/v/o and MLP gate/up/down projections: every linear layer of a decoder block (QLoRA's choice).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _targets(params, targets: Sequence[str]) -> dict:
    """{module name: (path tuple of the module dict)} for each stacked target kernel under params['layers']."""
    found = {}
    for group, modules in params["layers"].items():
        if not isinstance(modules, dict):
            continue
        for name, leaves in modules.items():
            if name in targets and isinstance(leaves, dict) and "kernel" in leaves:
                found[name] = ("layers", group, name)
    missing = sorted(set(targets) - set(found))
    if missing:
        raise ValueError(f"LoRA targets {missing} are not kernels of this model; available: {sorted(found)} "
                         f"(from {sorted(DEFAULT_TARGETS)})")
    return found


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def init_lora(params, rank: int, key: jax.Array, targets: Sequence[str] = DEFAULT_TARGETS) -> dict:
    """Adapter tree {'layers': {group: {module: {'a': [L, in, r], 'b': [L, r, out]}}}} in float32.

    A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5)) of Hu et al.'s random factor), B = 0."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    lora: dict = {}
    found = _targets(params, tuple(targets))
    keys = jax.random.split(key, len(found))
    for k, (name, path) in zip(keys, sorted(found.items())):
        kernel = _get(params, path)["kernel"]
        layers, d_in, d_out = kernel.shape
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(k, (layers, d_in, rank), jnp.float32, -bound, bound)
        b = jnp.zeros((layers, rank, d_out), jnp.float32)
        _set(lora, path, {"a": a, "b": b})
    return lora


def lora_rank(lora) -> int:
    """The rank of an adapter tree (the last dim of any A)."""
    return int(jax.tree.leaves(lora)[0].shape[-1])


def delta(a: jax.Array, b: jax.Array, alpha: float, rank: int) -> jax.Array:
    """(alpha / rank) * A @ B per stacked layer: [L, in, r] x [L, r, out] -> [L, in, out], float32."""
    return (alpha / rank) * jnp.einsum("lir,lro->lio", a.astype(jnp.float32), b.astype(jnp.float32))


def merge(params, lora, alpha: float, rank: int):
    """Base params with each adapted kernel replaced by W + (alpha / rank) * A @ B (in W's dtype). Pure: `params`
    is not modified, and untouched leaves are shared, not copied."""
    out = jax.tree.map(lambda x: x, params)  # new containers, same leaves
    for group, modules in lora["layers"].items():
        for name, ab in modules.items():
            module = dict(out["layers"][group][name])
            w = module["kernel"]
            module["kernel"] = (w.astype(jnp.float32) + delta(ab["a"], ab["b"], alpha, rank)).astype(w.dtype)
            out["layers"][group][name] = module
    return out


def lora_logical_axes(base_logical, lora) -> dict:
    """Logical axis names for the adapters: A gets the kernel's (layers, in, -), B its (layers, -, out), so the
    adapters shard like the kernels they adapt (rank replicated)."""
    from jax.sharding import PartitionSpec

    out: dict = {}
    for group, modules in lora["layers"].items():
        for name in modules:
            spec = tuple(base_logical["layers"][group][name]["kernel"])
            _set(out, ("layers", group, name), {"a": PartitionSpec(spec[0], spec[1], None),
                                                "b": PartitionSpec(spec[0], None, spec[2])})
    return out


# ------------------------------------------------------------------------------------------------ members' adapters
# A population's K members share one frozen base and each has its own adapters (a tree like `init_lora`'s with a
# leading member axis [K, ...]). The sampler decodes all members' rows in one batch: the base matmuls are batched
# over every row, and each row adds its own member's low-rank update, unmerged:
#
#     y = x @ W + (x @ concat_k(A_k)) * onehot(member of the row) @ concat_k((alpha / r) * B_k)
#
# x @ concat_k(A_k) is [B, T, K * r]; the one-hot over K * r columns zeroes the columns of the other members, so a
# row's result is x @ W + (alpha / r) * (x @ A_k) @ B_k, whatever order the rows are in and whichever members sit
# next to it (the decode loop reorders rows). Extra work per row and projection: K * r * (in + out) multiply-adds
# beside the base's in * out. Equal to the merged kernel W + (alpha / r) A_k B_k up to float rounding.


class Members(NamedTuple):
    """K members' adapters over one base: `adapters` like `init_lora`'s tree with a leading member axis [K, ...]
    (a population TrainState's params), and their LoRA alpha."""
    adapters: dict
    alpha: float


class MemberAdapters(NamedTuple):
    """What the decoder reads to apply each row's own member's adapters (`decoder.hidden_states(adapters=)`).

    layers: {group: {module: {'a': [L, in, K * r], 'b': [L, K * r, out]}}}, member k's columns k * r .. k * r + r - 1,
      B already scaled by alpha / r; or a tuple of L such trees without the L axis (unrolled layers, for a decode
      loop: `decoder.adapters_for_decoding`).
    columns: int32 [K * r], the member of each column.
    member: int32 [B], the member of each row of the decoder's batch."""
    layers: Any
    columns: jax.Array
    member: jax.Array


def num_members(members: Members) -> int:
    return int(jax.tree.leaves(members.adapters)[0].shape[0])


def member_adapters(members: Members, member: jax.Array) -> MemberAdapters:
    """The decoder's view of `members` for a batch whose row b belongs to member member[b] (int32 [B])."""
    k = num_members(members)
    r = int(jax.tree.leaves(members.adapters)[0].shape[-1])
    scale = members.alpha / r

    def cat(ab):
        a, b = ab["a"].astype(jnp.float32), ab["b"].astype(jnp.float32)      # [K, L, in, r], [K, L, r, out]
        _, n_layers, d_in, _ = a.shape
        return {"a": a.transpose(1, 2, 0, 3).reshape(n_layers, d_in, k * r),
                "b": scale * b.transpose(1, 0, 2, 3).reshape(n_layers, k * r, b.shape[-1])}

    layers = {group: {name: cat(ab) for name, ab in modules.items()}
              for group, modules in members.adapters["layers"].items()}
    columns = jnp.repeat(jnp.arange(k, dtype=jnp.int32), r)
    return MemberAdapters(layers, columns, jnp.asarray(member, jnp.int32))
