"""One Flax Linen decoder for the Llama family (Llama 2/3.x, SmolLM2, Qwen2/2.5, Qwen3).

Everything is a pure function of (config, params, inputs). Layers are stacked and scanned (`nn.scan`), so a
30-layer model compiles as one layer. Attention is written for the two shapes GRPO needs:

  * a plain causal pass over a left-padded batch (`forward`, prompt prefill), and
  * completions that attend to a *shared prefix*: G completions of a prompt read the prompt's keys/values
    [P, S, ...] broadcast over the group instead of G copies of it, both in the sampler (with a KV cache of the
    completions) and in the trainer (all completion tokens at once). Sampler and trainer share this code path, so
    the sampler's log-probs are the trainer's.

Parameters carry logical axis names (`nn.with_logical_partitioning`); `sharding.py` maps them onto a mesh.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from grpo_jax.models.config import ModelConfig

_NEG_INF = -1e30


class PrefixKV(NamedTuple):
    """Keys/values of a shared prefix (the prompt), one entry per layer when stacked: k, v [L, P, S, Hkv, hd]."""
    k: jax.Array
    v: jax.Array
    mask: jax.Array  # bool [P, S]: True on real (non-pad) prefix tokens


class KVCache(NamedTuple):
    """Self KV cache of the rows being decoded: k, v [L, B, S_max, Hkv, hd]; `index` = slots already written."""
    k: jax.Array
    v: jax.Array
    index: jax.Array  # int32 scalar


def _dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


# --------------------------------------------------------------------------------------------------------------
# Rotary position embedding (Su et al. 2021), HF's rotate-half layout, with Llama 3.1 frequency scaling.
# --------------------------------------------------------------------------------------------------------------
def rope_inv_freq(config: ModelConfig) -> jax.Array:
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    scaling = config.rope_scaling_dict
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = jnp.where(is_medium, smoothed, scaled)
    return inv_freq


def rope_cos_sin(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotation angles, float32 [B, T, 1, hd] for positions int [B, T]: the same for every layer,
    so a decoder may compute them once and `rotate` with them in each layer."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """x [B, T, H, hd], positions int [B, T]."""
    return rotate(x, *rope_cos_sin(positions, inv_freq))


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array, axis: int = -1) -> jax.Array:
    """x [B, T, H, hd] rotated by the angles of `rope_cos_sin` (HF's rotate-half layout); `axis` is x's head_dim
    axis, for layouts that keep it elsewhere (cos/sin broadcast against x)."""
    first, second = jnp.split(x, 2, axis=axis)
    rotated = jnp.concatenate([-second, first], axis=axis)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype, axis: int = -1) -> jax.Array:
    """RMS normalisation (Zhang & Sennrich 2019) along `axis` in float32, times `scale`, in `dtype`."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axis, keepdims=True) + eps)
    return (scale.astype(dtype) * x32.astype(dtype)).astype(dtype)


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), jnp.float32)
        return rms_norm(x, scale, self.eps, self.dtype)


def _dense(features, axes, name, dtype, use_bias=False):
    init = nn.initializers.normal(0.02)
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(init, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)))


def attention(q, k, v, mask, prefix: Optional[tuple] = None):
    """Grouped-query attention of q [B, T, H, hd] over own keys k, v [B, S, Hkv, hd] (mask bool [B, T, S]) and,
    optionally, a shared prefix (pk, pv [P, Sp, Hkv, hd], pmask bool [P, Sp]) with B = P * G: row b reads prefix
    b // G. Softmax in float32 over the concatenation of prefix and own keys."""
    b, t, h, hd = q.shape
    hkv = k.shape[2]
    r = h // hkv
    scale = 1.0 / math.sqrt(hd)
    qg = q.reshape(b, t, hkv, r, hd)
    own = jnp.einsum("btkrd,bskd->bkrts", qg, k, preferred_element_type=jnp.float32) * scale
    own = jnp.where(mask[:, None, None, :, :], own, _NEG_INF)
    if prefix is None:
        w = jax.nn.softmax(own, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkrts,bskd->btkrd", w, v)
        return out.reshape(b, t, h, hd)
    pk, pv, pmask = prefix
    p, sp = pk.shape[0], pk.shape[1]
    g = b // p
    qpg = qg.reshape(p, g, t, hkv, r, hd)
    pre = jnp.einsum("pgtkrd,pskd->pgkrts", qpg, pk, preferred_element_type=jnp.float32) * scale
    pre = jnp.where(pmask[:, None, None, None, None, :], pre, _NEG_INF).reshape(b, hkv, r, t, sp)
    w = jax.nn.softmax(jnp.concatenate([pre, own], axis=-1), axis=-1).astype(v.dtype)
    w_pre = w[..., :sp].reshape(p, g, hkv, r, t, sp)
    out = jnp.einsum("pgkrts,pskd->pgtkrd", w_pre, pv).reshape(b, t, hkv, r, hd)
    out = out + jnp.einsum("bkrts,bskd->btkrd", w[..., sp:], v)
    return out.reshape(b, t, h, hd)


class DecoderLayer(nn.Module):
    """Pre-norm decoder block. Scanned over layers: `layer_in` holds this layer's slice of the prefix and cache."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x, layer_in, positions, self_mask, prefix_mask, cache_index):
        cfg = self.config
        dt = _dtype(cfg.compute_dtype)
        prefix_kv, cache = layer_in
        prefix = None if prefix_kv is None else (prefix_kv[0].astype(dt), prefix_kv[1].astype(dt), prefix_mask)
        y = RMSNorm(cfg.rms_norm_eps, dt, "embed", name="input_norm")(x)
        y, kv = _Attention(cfg, name="attn")(y, positions, self_mask, prefix, cache, cache_index)
        x = x + y
        y = RMSNorm(cfg.rms_norm_eps, dt, "embed", name="post_attn_norm")(x)
        y = _Mlp(cfg, name="mlp")(y)
        return x + y, kv


class _Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, self_mask, prefix, cache, cache_index):
        cfg = self.config
        dt = _dtype(cfg.compute_dtype)
        h, hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        b, t, _ = x.shape
        bias = cfg.attention_bias
        q = _dense(h * hd, ("embed", "q_heads"), "q_proj", dt, bias)(x).reshape(b, t, h, hd)
        k = _dense(hkv * hd, ("embed", "kv_heads"), "k_proj", dt, bias)(x).reshape(b, t, hkv, hd)
        v = _dense(hkv * hd, ("embed", "kv_heads"), "v_proj", dt, bias)(x).reshape(b, t, hkv, hd)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, dt, "head_dim", name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, dt, "head_dim", name="k_norm")(k)
        inv_freq = rope_inv_freq(cfg)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        if cache is not None:
            ck, cv = cache
            k_all = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
            v_all = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
            new_kv = (k_all, v_all)
            k_use, v_use = k_all.astype(dt), v_all.astype(dt)
        else:
            new_kv = (k, v)
            k_use, v_use = k, v
        out = attention(q, k_use, v_use, self_mask, prefix)
        out = _dense(cfg.hidden_size, ("q_heads", "embed"), "o_proj", dt)(out.reshape(b, t, h * hd))
        return out, new_kv


class _Mlp(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dt = _dtype(cfg.compute_dtype)
        gate = _dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj", dt)(x)
        up = _dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj", dt)(x)
        return _dense(cfg.hidden_size, ("mlp", "embed"), "down_proj", dt)(nn.silu(gate) * up)


class Decoder(nn.Module):
    """Embedding -> scanned decoder layers -> final norm. Returns final hidden states and per-layer keys/values
    (stacked [L, ...]); with `compute_logits` also the float32 logits (used by `init` to create the head)."""
    config: ModelConfig

    @nn.compact
    def __call__(self, tokens, positions, self_mask, prefix: Optional[PrefixKV] = None,
                 cache: Optional[KVCache] = None, compute_logits: bool = False):
        cfg = self.config
        dt = _dtype(cfg.compute_dtype)
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, name="embed",
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                     ("vocab", "embed")))
        x = embed(tokens)
        layer = DecoderLayer
        if cfg.remat:
            layer = nn.remat(layer, prevent_cse=False)
        stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        prefix_kv = None if prefix is None else (prefix.k, prefix.v)
        prefix_mask = None if prefix is None else prefix.mask
        cache_kv = None if cache is None else (cache.k, cache.v)
        cache_index = None if cache is None else cache.index
        x, kv = stack(cfg, name="layers")(x, (prefix_kv, cache_kv), positions, self_mask, prefix_mask, cache_index)
        x = RMSNorm(cfg.rms_norm_eps, dt, "embed", name="final_norm")(x)
        if not compute_logits:
            return x, kv
        if cfg.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = _dense(cfg.vocab_size, ("embed", "vocab"), "lm_head", dt)(x)
        return x, kv, logits.astype(jnp.float32)


def _boxed_init(config: ModelConfig, key):
    tokens = jnp.zeros((1, 2), jnp.int32)
    positions = jnp.zeros((1, 2), jnp.int32)
    mask = jnp.ones((1, 2, 2), bool)
    return Decoder(config).init(key, tokens, positions, mask, compute_logits=True)["params"]


def init_params(config: ModelConfig, key, dtype: str = "float32"):
    """Random parameters (tests, LoRA shapes); real weights come from `models.load`."""
    params = nn.meta.unbox(_boxed_init(config, key))
    return jax.tree.map(lambda a: a.astype(_dtype(dtype)), params)


def param_logical_axes(config: ModelConfig):
    """A pytree like params whose leaves are `PartitionSpec`s of logical axis names (e.g. ('layers', 'embed',
    'mlp')), mapped onto a mesh by `grpo_jax.sharding`."""
    boxed = jax.eval_shape(lambda: _boxed_init(config, jax.random.PRNGKey(0)))
    return nn.get_partition_spec(boxed)


def unembed(config: ModelConfig, params, hidden: jax.Array) -> jax.Array:
    """Final hidden states [..., D] -> float32 logits [..., V] (tied embedding or lm_head)."""
    dt = _dtype(config.compute_dtype)
    if config.tie_word_embeddings:
        w = params["embed"]["embedding"].astype(dt)
        return jnp.einsum("...d,vd->...v", hidden.astype(dt), w, preferred_element_type=jnp.float32)
    w = params["lm_head"]["kernel"].astype(dt)
    return jnp.einsum("...d,dv->...v", hidden.astype(dt), w, preferred_element_type=jnp.float32)


def hidden_states(config: ModelConfig, params, tokens, positions, self_mask, prefix: Optional[PrefixKV] = None,
                  cache: Optional[KVCache] = None):
    """The decoder without the head: (hidden [B, T, D], kv). `self_mask` bool [B, T, S] says which of the row's
    own keys (S = T, or the cache length) each query may read. kv = (k, v) stacked [L, B, T, Hkv, hd] without a
    cache, the updated cache arrays with one."""
    return Decoder(config).apply({"params": params}, tokens, positions, self_mask, prefix, cache)


def padded_positions(mask: jax.Array) -> jax.Array:
    """Position ids for a left-padded batch: 0 at each row's first real token (pads get 0)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_mask(mask: jax.Array) -> jax.Array:
    """bool [B, T, T]: query i reads key j <= i when key j is a real token."""
    t = mask.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    return causal[None] & mask[:, None, :].astype(bool)


def forward(config: ModelConfig, params, tokens: jax.Array, attention_mask: Optional[jax.Array] = None):
    """Causal LM logits: int32 tokens [B, T] (left-padded if `attention_mask` is given) -> float32 [B, T, V]."""
    tokens = jnp.asarray(tokens, jnp.int32)
    mask = jnp.ones(tokens.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
    hidden, _ = hidden_states(config, params, tokens, padded_positions(mask), causal_mask(mask))
    return unembed(config, params, hidden)
