"""One decode step of the sampler: the decoder of `models.transformer` on one new token per row, feature-major.

The sampler's decode loop runs this once per generated token for all N = P * G rows. It computes what the trainer's
`transformer.hidden_states(..., prefix=...)` computes for that token (same norms, rope, grouped-query attention with
a float32 softmax over [prompt keys ++ own keys], SiLU MLP), so the sampler's log-probs are the trainer's; only
the layout differs, chosen for a batch of ~64 rows on CPU (measured on 2 cores, SmolLM2-135M, float32):

  * Feature-major activations: hidden states are [D, N] (one column per row) and every projection is
    W^T [out, in] @ x [in, N]. XLA:CPU runs [64, 576] x [576, 1536] at ~160 GFLOP/s and the same product as
    [1536, 576] x [576, 64] at ~185-195 GFLOP/s. The transposed weights are laid out once per call in
    `decode_state` (~0.2 s for SmolLM2-135M), not per step.
  * Attention row-major, the rows on the major axis (one small transpose of q/k/v each way): XLA:CPU ran the
    attention reductions ~4x slower with the rows on the minor axis.
  * Keys stored transposed, [N, Hkv, hd, S] (values [N, Hkv, S, hd]): both attention reductions (over hd for
    scores, over slots for outputs) run along a non-minor axis and vectorise over the minor one. With keys
    [N, Hkv, S, hd] the score reduction took ~0.7 ms a layer against ~0.25 ms.
  * q, k and v are one product with the weights stacked ([(H + 2 Hkv) hd, D]): as three dots they ran ~30%
    longer (568 vs 430 us a layer in a trace: the two threads split them unevenly).
  * The head is [V, D] x [D, N] (`vocab_logits`), the logits vocabulary-first [V, N]; the sampler draws along
    axis 0. As [N, D] x [D, V] it ran ~23 ms a step against ~19.5 ms.
  * Rope angles are computed once per call for every row and position (`rope_table`): inside the loop XLA fused
    cos and sin into each layer's rope and evaluated them for every head.

The prompt's keys/values are shared by the G completions of its group (read broadcast over G), never copied G times.
Each layer's cache buffers are updated in place, one slot per step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from grpo_jax.logprobs import Prompt
from grpo_jax.models.config import ModelConfig
from grpo_jax.models.transformer import _NEG_INF, _dtype, rms_norm, rope_cos_sin, rope_inv_freq, rotate


class DecodeState(NamedTuple):
    """What the decode loop reads, laid out once per call: transposed per-layer weights and the prompts' keys/values."""
    layers: tuple           # L dicts of feature-major weights (see `decode_state`)
    final_norm: jax.Array   # [D, 1]
    prefix: tuple           # L pairs: keys [P, Hkv, hd, S], values [P, Hkv, S, hd]
    prefix_mask: jax.Array  # bool [P, S]
    head: jax.Array         # [V, D]: the tied embedding, or lm_head's kernel transposed (see `_head_dtype`)


_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
_QKV = ("q", "k", "v")


def _column(a, dt):
    return a.astype(dt)[:, None]


def decode_state(config: ModelConfig, params, prompt: Prompt) -> DecodeState:
    """Per-layer transposed weights ([out, in]; biases and norm scales as [out, 1] columns) and the prompts' keys
    and values in the decode layout, computed once before the decode loop."""
    dt = _dtype(config.compute_dtype)
    stacked = params["layers"]
    layers = []
    for i in range(config.num_layers):
        lp = jax.tree.map(lambda a, i=i: a[i], stacked)
        dense = {**lp["attn"], **lp["mlp"]}
        layer = {name: dense[f"{name}_proj"]["kernel"].astype(dt).T for name in _PROJECTIONS}
        layer.update({f"{name}_bias": _column(dense[f"{name}_proj"]["bias"], dt)
                      for name in _PROJECTIONS if "bias" in dense[f"{name}_proj"]})
        # q, k and v as one [(H + 2 Hkv) hd, D] product (see the module docstring).
        layer["qkv"] = jnp.concatenate([layer.pop(name) for name in _QKV], axis=0)
        if "q_bias" in layer:
            layer["qkv_bias"] = jnp.concatenate([layer.pop(f"{name}_bias") for name in _QKV], axis=0)
        layer["input_norm"] = _column(lp["input_norm"]["scale"], dt)
        layer["post_attn_norm"] = _column(lp["post_attn_norm"]["scale"], dt)
        if config.qk_norm:
            layer["q_norm"] = _column(lp["attn"]["q_norm"]["scale"], dt)
            layer["k_norm"] = _column(lp["attn"]["k_norm"]["scale"], dt)
        layers.append(layer)
    pk = prompt.prefix.k.transpose(0, 1, 3, 4, 2).astype(dt)   # [L, P, S, Hkv, hd] -> [L, P, Hkv, hd, S]
    pv = prompt.prefix.v.transpose(0, 1, 3, 2, 4).astype(dt)   # -> [L, P, Hkv, S, hd]
    prefix = tuple((pk[i], pv[i]) for i in range(config.num_layers))
    head = params["embed"]["embedding"] if config.tie_word_embeddings else params["lm_head"]["kernel"].T
    head = head.astype(dt).astype(_head_dtype(dt))  # rounded to the compute dtype first, as `transformer.unembed`
    return DecodeState(tuple(layers), _column(params["final_norm"]["scale"], dt), prefix, prompt.prefix.mask, head)


def _head_dtype(dt):
    """The head's operand dtype: the compute dtype, except bfloat16 on CPU, which runs the head in float32.
    XLA:CPU (jaxlib 0.10.2) has no fallback kernel for a bfloat16 x bfloat16 -> float32 dot: when YNNPACK does not
    take the head (small vocabularies, e.g. with top-k, where XLA folds the logits' transpose into the dot) the
    program fails with "Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32". Products of bfloat16
    values are exact in float32, so the logits are the same up to summation order."""
    return jnp.float32 if dt != jnp.float32 and jax.default_backend() == "cpu" else dt


def vocab_logits(state: DecodeState, x: jax.Array) -> jax.Array:
    """`transformer.unembed` on feature-major final hidden states x [D, N] -> float32 logits [V, N], vocabulary
    first. XLA:CPU runs the head as [V, D] x [D, 64] at ~190 GFLOP/s and as [64, D] x [D, V] at ~155 (SmolLM2,
    ~19 vs ~23 ms a step), and the sampler's reductions over the vocabulary vectorise over the rows."""
    return jnp.matmul(state.head, x.astype(state.head.dtype), preferred_element_type=jnp.float32)


def new_cache(config: ModelConfig, rows: int, slots: int) -> tuple:
    """The rows' own keys/values: L pairs of zeros, keys [N, Hkv, hd, slots] and values [N, Hkv, slots, hd]. One
    buffer per layer (not a stacked [L, ...] array) so that each layer's one-slot write is in place and its read
    needs no slice copy."""
    hkv, hd = config.num_kv_heads, config.head_dim
    dt = _dtype(config.compute_dtype)
    return tuple((jnp.zeros((rows, hkv, hd, slots), dt), jnp.zeros((rows, hkv, slots, hd), dt))
                 for _ in range(config.num_layers))


def grow_cache(cache: tuple, slots: int) -> tuple:
    """`cache` (from `new_cache`) padded with zero slots at the end to `slots` slots; what was written stays put."""
    def pad(a, axis):
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, slots - a.shape[axis])
        return jnp.pad(a, widths)
    return tuple((pad(k, 3), pad(v, 2)) for k, v in cache)


def rope_table(config: ModelConfig, positions: jax.Array) -> tuple:
    """cos and sin for positions int32 [N, T]: two float32 [T, hd, N] tables, indexed by step in the loop."""
    cos, sin = rope_cos_sin(positions, rope_inv_freq(config))     # [N, T, 1, hd]
    return cos[:, :, 0].transpose(1, 2, 0), sin[:, :, 0].transpose(1, 2, 0)


def _project(layer, name, x):
    """The projection `name` of a layer on feature-major x [in, N] -> [out, N] (nn.Dense, transposed)."""
    out = layer[name] @ x
    return out + layer[f"{name}_bias"] if f"{name}_bias" in layer else out


def _masked_scores(q, k_t, mask, scale):
    """float32 attention scores as a multiply-reduce over hd (a non-minor axis, so it vectorises over keys):
    q [.., Hkv, r, hd], transposed keys k_t [.., Hkv, hd, S] -> [.., Hkv, r, S], -1e30 where `mask` is False."""
    s = jnp.sum(q[..., :, :, None].astype(jnp.float32) * k_t[..., None, :, :].astype(jnp.float32), axis=-2)
    return jnp.where(mask, s * scale, _NEG_INF)


def decode_step(config: ModelConfig, params, state: DecodeState, cache: tuple, tokens, rope: tuple, slot):
    """The decoder on one token per row: tokens int32 [N]; `rope` = (cos, sin) [hd, N] of the rows' positions (a
    step of `rope_table`). Each row's new key/value is written at cache slot `slot` and the row reads its prompt and
    its own slots <= slot. Returns (final hidden states [D, N], normed, for `vocab_logits`; updated cache)."""
    cfg = config
    dt = _dtype(cfg.compute_dtype)
    n = tokens.shape[0]
    p, s = state.prefix_mask.shape
    g = n // p
    h, hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    r = h // hkv
    eps = cfg.rms_norm_eps
    scale = 1.0 / math.sqrt(hd)
    cos, sin = rope
    x = jnp.take(params["embed"]["embedding"].astype(dt), tokens, axis=0).T              # [D, N]
    slots = cache[0][1].shape[2]
    own_mask = (jnp.arange(slots) <= slot)[None, None, None, :]
    pre_mask = state.prefix_mask[:, None, None, None, :]

    new_cache = []
    for lw, (pk, pv), (ck, cv) in zip(state.layers, state.prefix, cache):
        y = rms_norm(x, lw["input_norm"], eps, dt, axis=0)
        qkv = _project(lw, "qkv", y)
        q = qkv[:h * hd].reshape(h, hd, n)
        k = qkv[h * hd:(h + hkv) * hd].reshape(hkv, hd, n)
        v = qkv[(h + hkv) * hd:].reshape(hkv, hd, n)
        if cfg.qk_norm:
            q = rms_norm(q, lw["q_norm"], eps, dt, axis=1)
            k = rms_norm(k, lw["k_norm"], eps, dt, axis=1)
        # Attention row-major (see the module docstring).
        q = rotate(q, cos, sin, axis=1).transpose(2, 0, 1).reshape(n, hkv, r, hd)
        k = rotate(k, cos, sin, axis=1).astype(ck.dtype).transpose(2, 0, 1)[..., None]           # [N, Hkv, hd, 1]
        v = v.astype(cv.dtype).transpose(2, 0, 1)[:, :, None, :]                            # [N, Hkv, 1, hd]
        # Write first, then read: with that data dependency XLA updates each cache buffer in place.
        ck = jax.lax.dynamic_update_slice(ck, k, (0, 0, 0, slot))
        cv = jax.lax.dynamic_update_slice(cv, v, (0, 0, slot, 0))
        new_cache.append((ck, cv))
        pre = _masked_scores(q.reshape(p, g, hkv, r, hd), pk[:, None], pre_mask, scale).reshape(n, hkv, r, s)
        own = _masked_scores(q, ck, own_mask, scale)
        w = jax.nn.softmax(jnp.concatenate([pre, own], axis=-1), axis=-1)
        w = w.astype(dt).astype(jnp.float32)  # as the trainer, which casts the weights to the values' dtype
        w_pre = w[..., :s].reshape(p, g, hkv, r, s)
        out = jnp.sum(w_pre[..., None] * pv[:, None, :, None].astype(jnp.float32), axis=-2).reshape(n, hkv, r, hd)
        out = out + jnp.sum(w[..., s:, None] * cv[:, :, None].astype(jnp.float32), axis=-2)
        x = x + _project(lw, "o", out.astype(dt).reshape(n, h * hd).T)
        y = rms_norm(x, lw["post_attn_norm"], eps, dt, axis=0)
        x = x + _project(lw, "down", jax.nn.silu(_project(lw, "gate", y)) * _project(lw, "up", y))
    return rms_norm(x, state.final_norm, eps, dt, axis=0), tuple(new_cache)
