"""The layers every decoder family is built from: RMSNorm, rotary embeddings, attention over key/value blocks, and
gated MLPs. Each is one implementation; what differs between families is a config value, not a copy of the code.

Attention reads a list of key/value *blocks* and takes one float32 softmax over all of them:
  * a block of the row's own keys (the tokens of this call: causal),
  * a *shared* block read by a group of rows: the prompt's keys/values [P, S, ...] broadcast over the G completions
    of its group (never G copies of it), for the trainer and the sampler alike,
  * the sampler's KV cache of the tokens decoded so far.
The same function serves a prefill, the trainer's pass over all completion tokens and the sampler's one-token
decode step, so the sampler's log-probs are the trainer's.

Parameters and activations carry logical axis names (`nn.with_logical_partitioning`, `partitioning.constrain`);
the rules tables of `grpo_jax.partitioning` map them onto a mesh. Without an active mesh the constraints do nothing.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from grpo_jax import partitioning
NEG_INF = -1e30
ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product", "cudnn")


def compute_dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


# --------------------------------------------------------------------------------------------------------------
# RMSNorm (Zhang & Sennrich 2019).
# --------------------------------------------------------------------------------------------------------------
def rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype, offset: float = 0.0, axis: int = -1) -> jax.Array:
    """x / rms(x) along `axis` (in float32), times the learned scale, in `dtype`.

    offset 0 (Llama, Qwen): the scale is the weight, applied in `dtype` after the normalised x is cast (HF
    LlamaRMSNorm). offset 1 (Gemma): the scale is (1 + weight), applied in float32 before the cast (HF
    Gemma*RMSNorm, whose weights are stored as w with the scale 1 + w)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axis, keepdims=True) + eps)
    if offset:
        return (x32 * (offset + scale.astype(jnp.float32))).astype(dtype)
    return (scale.astype(dtype) * x32.astype(dtype)).astype(dtype)


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype
    offset: float = 0.0
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.offset else nn.initializers.ones  # scale 1 at init either way
        scale = self.param("scale", nn.with_logical_partitioning(init, (self.axis_name,)), (x.shape[-1],),
                           jnp.float32)
        return rms_norm(x, scale, self.eps, self.dtype, self.offset)


# --------------------------------------------------------------------------------------------------------------
# Rotary position embedding (Su et al. 2021), HF's rotate-half layout.
# --------------------------------------------------------------------------------------------------------------
def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[dict] = None) -> jax.Array:
    """Inverse frequencies [head_dim / 2] with the optional rescaling of `scaling` (None or rope_type 'default';
    'linear': positions divided by `factor` (Chen et al. 2023, position interpolation); 'llama3': Llama 3.1's
    wavelength-dependent factor)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return jnp.where(is_medium, smoothed, scaled)
    return inv_freq


def rope_cos_sin(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotation angles, float32 [B, T, 1, hd], for positions int [B, T]."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb), jnp.sin(emb)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, H, hd] rotated by the angles of `rope_cos_sin` (rotate-half layout), in float32, cast back."""
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


# --------------------------------------------------------------------------------------------------------------
# Dense layers and gated MLPs (Shazeer 2020, "GLU Variants Improve Transformer").
# --------------------------------------------------------------------------------------------------------------
def dense(features: int, axes: tuple, name: str, dtype, use_bias: bool = False) -> nn.Dense:
    init = nn.initializers.normal(0.02)
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(init, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)))


def add_adapter(y: jax.Array, x: jax.Array, adapter: Optional[dict], rows: Optional[jax.Array]) -> jax.Array:
    """y + ((x @ A) * rows) @ B: a projection's output y [B, T, out] of input x [B, T, in] plus each row's own
    low-rank update (`lora.MemberAdapters`: A [in, K * r], B [K * r, out] with alpha / r folded in, rows
    [B, K * r] the one-hot of each row's member over the columns). adapter None: y itself, untouched."""
    if adapter is None:
        return y
    low = jnp.einsum("bti,ir->btr", x, adapter["a"].astype(x.dtype)) * rows[:, None, :].astype(x.dtype)
    return y + jnp.einsum("btr,ro->bto", low, adapter["b"].astype(x.dtype)).astype(y.dtype)


ACTIVATIONS = {
    "silu": jax.nn.silu,                                          # SwiGLU (Llama, Qwen)
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),      # GeGLU with tanh-approximated GELU (Gemma)
}


class GatedMlp(nn.Module):
    """down(act(gate(x)) * up(x))."""
    hidden: int
    features: int
    activation: str
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, adapters: Optional[dict] = None, rows: Optional[jax.Array] = None):
        """adapters: None, or this block's members' adapters {module name: {'a', 'b'}} and their row one-hot
        `rows` (see `add_adapter`)."""
        def proj(features, axes, name, inp):
            y = dense(features, axes, name, self.dtype)(inp)
            return add_adapter(y, inp, None if adapters is None else adapters.get(name), rows)
        gate = proj(self.hidden, ("embed", "mlp"), "gate_proj", x)
        up = proj(self.hidden, ("embed", "mlp"), "up_proj", x)
        y = partitioning.constrain(ACTIVATIONS[self.activation](gate) * up,
                                       ("activation_batch", "activation_length", "activation_mlp"))
        return proj(self.features, ("mlp", "embed"), "down_proj", y)


# --------------------------------------------------------------------------------------------------------------
# Attention.
# --------------------------------------------------------------------------------------------------------------
class KVBlock(NamedTuple):
    """Keys/values one attention call reads. Per-row: k, v [B, S, Hkv, hd], mask bool [B, T, S] or [B, S].
    Shared (`shared=True`): k, v [P, S, Hkv, hd] read by G = B / P consecutive rows, mask [P, S].
    `heads_first`: the decode cache's layout instead, keys [B, Hkv, hd, S] and values [B, Hkv, S, hd]: a one-token
    query reads them as elementwise products reduced over a non-minor axis (hd for scores, S for outputs), which
    vectorise over the minor one and read the cache where it lies, with no transposed or sliced copy.
    `positions` int [B or P, S] are the keys' positions (for a sliding window)."""
    k: jax.Array
    v: jax.Array
    mask: jax.Array
    positions: jax.Array
    shared: bool = False
    heads_first: bool = False

    def seq_major(self) -> "KVBlock":
        """The block with k, v as [B, S, Hkv, hd]."""
        if not self.heads_first:
            return self
        return self._replace(k=self.k.transpose(0, 3, 1, 2), v=self.v.swapaxes(1, 2), heads_first=False)


def _block_scores(qg: jax.Array, block: KVBlock) -> jax.Array:
    """q [B, T, Hkv, r, hd] . keys -> float32 [B, Hkv, r, T, S]."""
    b, t, hkv, r, hd = qg.shape
    if block.heads_first:
        if t == 1:  # one query per row: a matrix-vector product per (row, head), as a multiply-reduce over hd
            s = jnp.sum(qg[:, 0, :, :, :, None].astype(jnp.float32) * block.k[:, :, None].astype(jnp.float32),
                        axis=-2)
            return s[:, :, :, None, :]
        # queries batch-major ([B, Hkv, r, T, hd]) first: XLA:CPU has no bfloat16 x bfloat16 -> float32 dot for
        # "btkrd,bkds" (batch dims not leading in the lhs), and the same contraction otherwise
        return jnp.einsum("bkrtd,bkds->bkrts", qg.transpose(0, 2, 3, 1, 4), block.k,
                          preferred_element_type=jnp.float32)
    if not block.shared:
        return jnp.einsum("btkrd,bskd->bkrts", qg, block.k, preferred_element_type=jnp.float32)
    p = block.k.shape[0]
    s = jnp.einsum("pgtkrd,pskd->pgkrts", qg.reshape(p, b // p, t, hkv, r, hd), block.k,
                   preferred_element_type=jnp.float32)
    return s.reshape(b, hkv, r, t, -1)


def _block_output(w: jax.Array, block: KVBlock) -> jax.Array:
    """weights [B, Hkv, r, T, S] . values -> [B, T, Hkv, r, hd]."""
    if block.heads_first:
        if w.shape[3] == 1:  # one query per row: a multiply-reduce over the slots
            out = jnp.sum(w[:, :, :, 0, :, None].astype(jnp.float32) * block.v[:, :, None].astype(jnp.float32),
                          axis=-2)
            return out[:, None].astype(block.v.dtype)
        return jnp.einsum("bkrts,bksd->btkrd", w, block.v)
    if not block.shared:
        return jnp.einsum("bkrts,bskd->btkrd", w, block.v)
    p = block.v.shape[0]
    b = w.shape[0]
    out = jnp.einsum("pgkrts,pskd->pgtkrd", w.reshape(p, b // p, *w.shape[1:]), block.v)
    return out.reshape(b, *out.shape[2:])


def _grouped_mask(block: KVBlock, q_positions, window, window_on) -> jax.Array:
    """The block's mask per row, bool [B, 1, 1, T or 1, S] (broadcast over heads; a shared block's mask repeated over
    its group), with the sliding window applied when `window_on`."""
    b, t = q_positions.shape
    mask = block.mask if block.mask.ndim == 3 else block.mask[:, None, :]     # [X, T or 1, S]
    if block.shared:
        p = block.k.shape[0]
        mask = jnp.repeat(mask, b // p, axis=0) if mask.shape[0] != b else mask
    if window is not None:
        kpos = block.positions
        if block.shared:
            kpos = jnp.repeat(kpos, b // kpos.shape[0], axis=0)
        near = (q_positions[:, :, None] - kpos[:, None, :]) < window
        mask = mask & (near | ~window_on)
    return mask[:, None, None]                                                  # [B, 1, 1, T, S]


def attention(q: jax.Array, q_positions: jax.Array, blocks: Sequence[KVBlock], *, scale: float,
              softcap: Optional[float] = None, window: Optional[int] = None, window_on=True,
              implementation: str = "xla") -> jax.Array:
    """Grouped-query attention of q [B, T, H, hd] (at positions [B, T]) over the concatenation of `blocks`, with
    one float32 softmax over all their keys. Scores are q.k * scale, soft-capped as cap * tanh(s / cap) when
    `softcap` is set (Gemma 2), and a query reads only keys within `window` positions when `window_on` (a traced
    bool per layer, for models that alternate sliding and global layers).

    implementation 'xla': the einsum path above (shared blocks read broadcast over their group).
    'dot_product' / 'cudnn': `jax.nn.dot_product_attention` (library kernel; cuDNN flash attention on GPU) on
    the blocks concatenated per row (shared blocks repeated over their group)."""
    b, t, h, hd = q.shape
    hkv = blocks[0].k.shape[1 if blocks[0].heads_first else 2]
    r = h // hkv
    masks = [_grouped_mask(blk, q_positions, window, window_on) for blk in blocks]
    if implementation == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(f"model.attention='cudnn' needs a CUDA GPU; this backend is {jax.default_backend()!r} "
                         "(use 'xla' or 'dot_product')")
    if implementation != "xla":
        if softcap is not None:
            raise ValueError(f"attention implementation {implementation!r} has no logit soft-capping; "
                             "use model.attention='xla' for this model")
        ks, vs = [], []
        for blk in blocks:
            k, v = blk.seq_major()[:2]
            if blk.shared:
                k, v = (jnp.repeat(a, b // a.shape[0], axis=0) for a in (k, v))
            ks.append(k.astype(q.dtype))
            vs.append(v.astype(q.dtype))
        mask = jnp.concatenate([jnp.broadcast_to(m[:, 0, 0], (b, t, m.shape[-1])) for m in masks], axis=-1)
        out = jax.nn.dot_product_attention(
            q, jnp.concatenate(ks, axis=1), jnp.concatenate(vs, axis=1), mask=mask[:, None], scale=scale,
            implementation=None if implementation == "dot_product" else implementation)
        return out.astype(q.dtype)
    qg = q.reshape(b, t, hkv, r, hd)
    scores = []
    for blk, m in zip(blocks, masks):
        s = _block_scores(qg, blk) * scale
        if softcap is not None:
            s = softcap * jnp.tanh(s / softcap)
        scores.append(jnp.where(m, s, NEG_INF))
    sizes = [s.shape[-1] for s in scores]
    w = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
    out = 0
    start = 0
    for blk, size in zip(blocks, sizes):
        out = out + _block_output(w[..., start:start + size].astype(blk.v.dtype), blk)
        start += size
    return out.reshape(b, t, h, hd).astype(q.dtype)
