"""The one decoder of every family (Llama, Qwen2/3, Gemma 2/3), built from `models.layers`.

Everything is a pure function of (config, params, inputs). Layers are stacked and scanned (`nn.scan`), so a
30-layer model compiles as one layer, in the trainer and in the sampler's decode step alike. One block covers
every family; `ModelConfig` switches its parts (see models/families/):

    h = x + out_norm?(attn(norm(x)))          out_norm: Gemma's sandwich norms
    y = h + out_norm?(mlp(norm(h)))

The same code runs the three shapes GRPO needs:
  * a plain causal pass over a left-padded batch (`forward`, prompt prefill),
  * completions attending to a shared prefix (`PrefixKV`: the G completions of a prompt read its keys/values
    [P, S, ...] broadcast over the group), the trainer's pass over all completion tokens at once,
  * the sampler's one-token step (`decode_step`) over the prefix and a KV cache of the tokens decoded so far.
Sampler and trainer therefore compute the same log-probs.

Parameters carry logical axis names (`nn.with_logical_partitioning`), activations and caches are constrained by
name (`partitioning.constrain`, a no-op without an active mesh); the rules tables map the names onto a mesh.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from grpo_jax import partitioning
from grpo_jax.models import layers
from grpo_jax.models.config import ModelConfig

BATCH, LENGTH, EMBED = "activation_batch", "activation_length", "activation_embed"
HEADS, KV_HEADS, HEAD_DIM = "activation_heads", "activation_kv_heads", "activation_head_dim"
CACHE_AXES = ("cache_layers", "cache_batch", "cache_kv_heads", "cache_length", "cache_head_dim")  # values
KEY_CACHE_AXES = ("cache_layers", "cache_batch", "cache_kv_heads", "cache_head_dim", "cache_length")


class PrefixKV(NamedTuple):
    """Keys/values of a shared prefix (the prompt), stacked over layers: k, v [L, P, S, Hkv, hd]."""
    k: jax.Array
    v: jax.Array
    mask: jax.Array       # bool [P, S]: True on real (non-pad) prefix tokens
    positions: jax.Array  # int32 [P, S]: their positions


class KVCache(NamedTuple):
    """The rows' own keys/values while decoding: keys [L, B, Hkv, hd, S], values [L, B, Hkv, S, hd] (see
    `layers.KVBlock.heads_first`), or tuples of L such buffers without the L axis (scan_layers False).

    Without `first` (None): slots [0, index) are written, and slot s of row b holds position start[b] + s.
    With `first` [B] (a ring, for rows that join the batch at different steps): every step writes slot
    index mod S of all rows; row b's own token j (j = 0, 1, ...) lies in slot (first[b] + j) mod S at position
    start[b] + j, and its written slots are those with (s - first[b]) mod S < index - first[b] (which must stay
    <= S); slots left by an earlier occupant of the row are masked. first = 0 is the plain layout.
    Without `first`, `index` may also be int32 [B], one fill per row (row b's slots [0, index[b]) are written):
    the model reads such a cache as any other, but `decode_step` writes only a scalar-index cache, so whoever
    builds one writes its slots itself (the multi-turn rollout, grpo_jax/rollout/multiturn.py)."""
    k: jax.Array
    v: jax.Array
    index: jax.Array  # int32 scalar: the step counter (the slot the next step writes, mod S with `first`); or [B]
    start: jax.Array  # int32 [B]
    first: Optional[jax.Array] = None  # int32 [B]: the index at which row b's own token 0 was (will be) written


def rope_tables(config: ModelConfig, positions: jax.Array) -> tuple:
    """(cos, sin) float32 [B, T, 1, hd] of the global layers, and those of the sliding layers (Gemma 3's own
    base; the same arrays when the model has one base)."""
    scaling = config.rope_scaling_dict
    glob = layers.rope_cos_sin(positions, layers.rope_inv_freq(config.head_dim, config.rope_theta, scaling))
    if config.rope_local_theta is None:
        return glob, glob
    local = layers.rope_cos_sin(positions, layers.rope_inv_freq(config.head_dim, config.rope_local_theta))
    return glob, local


class _Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, rope, sliding, own_mask, prefix, cache, adapters=None, rows=None):
        cfg = self.config
        dt = layers.compute_dtype(cfg.compute_dtype)
        h, hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        b, t, _ = x.shape
        bias = cfg.attention_bias

        def proj(features, axes, name, inp, use_bias):  # the kernel, plus each row's member adapter if any
            y = layers.dense(features, axes, name, dt, use_bias)(inp)
            return layers.add_adapter(y, inp, None if adapters is None else adapters.get(name), rows)
        q = proj(h * hd, ("embed", "q_heads"), "q_proj", x, bias).reshape(b, t, h, hd)
        k = proj(hkv * hd, ("embed", "kv_heads"), "k_proj", x, bias).reshape(b, t, hkv, hd)
        v = proj(hkv * hd, ("embed", "kv_heads"), "v_proj", x, bias).reshape(b, t, hkv, hd)
        if cfg.qk_norm:
            q = layers.RMSNorm(cfg.rms_norm_eps, dt, cfg.norm_offset, "head_dim", name="q_norm")(q)
            k = layers.RMSNorm(cfg.rms_norm_eps, dt, cfg.norm_offset, "head_dim", name="k_norm")(k)
        (cos, sin), (cos_l, sin_l) = rope
        if cfg.rope_local_theta is not None:
            cos, sin = jnp.where(sliding, cos_l, cos), jnp.where(sliding, sin_l, sin)
        q = partitioning.constrain(layers.rotate(q, cos, sin), (BATCH, LENGTH, HEADS, HEAD_DIM))
        k = partitioning.constrain(layers.rotate(k, cos, sin), (BATCH, LENGTH, KV_HEADS, HEAD_DIM))
        v = partitioning.constrain(v, (BATCH, LENGTH, KV_HEADS, HEAD_DIM))
        blocks = []
        if prefix is not None:
            pk, pv, pmask, ppos = prefix
            blocks.append(layers.KVBlock(pk.astype(dt), pv.astype(dt), pmask, ppos, shared=True))
        if cache is not None:
            ck, cv, cmask, cpos = cache
            blocks.append(layers.KVBlock(ck.astype(dt), cv.astype(dt), cmask, cpos, heads_first=True))
        blocks.append(layers.KVBlock(k, v, own_mask, positions))
        out = layers.attention(q, positions, blocks, scale=cfg.attention_scale, softcap=cfg.attn_softcap,
                               window=cfg.sliding_window, window_on=sliding, implementation=cfg.attention)
        out = proj(cfg.hidden_size, ("q_heads", "embed"), "o_proj", out.reshape(b, t, h * hd), False)
        return out, (k, v)


class DecoderLayer(nn.Module):
    """One block (see the module docstring). Scanned over layers: `layer_in` holds this layer's slice of the
    prefix and cache keys/values, whether it is a sliding-window layer, and this layer's members' adapters
    (`lora.MemberAdapters.layers`, or None); `adapter_rows` [B, K * r] is the one-hot of each row's member."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x, layer_in, positions, rope, own_mask, prefix_meta, cache_meta, adapter_rows=None):
        cfg = self.config
        dt = layers.compute_dtype(cfg.compute_dtype)
        prefix_kv, cache_kv, sliding, adapters = layer_in
        adapters = adapters or {}
        prefix = None if prefix_kv is None else (*prefix_kv, *prefix_meta)
        cache = None if cache_kv is None else (*cache_kv, *cache_meta)

        def norm(name):
            return layers.RMSNorm(cfg.rms_norm_eps, dt, cfg.norm_offset, "embed", name=name)

        y, kv = _Attention(cfg, name="attn")(norm("input_norm")(x), positions, rope, sliding, own_mask, prefix,
                                             cache, adapters.get("attn"), adapter_rows)
        if cfg.sandwich_norms:
            y = norm("attn_out_norm")(y)
        x = partitioning.constrain(x + y, (BATCH, LENGTH, EMBED))
        y = layers.GatedMlp(cfg.intermediate_size, cfg.hidden_size, cfg.activation, dt,
                            name="mlp")(norm("post_attn_norm")(x), adapters.get("mlp"), adapter_rows)
        if cfg.sandwich_norms:
            y = norm("mlp_out_norm")(y)
        return partitioning.constrain(x + y, (BATCH, LENGTH, EMBED)), kv


def embed_tokens(config: ModelConfig, table: jax.Array, tokens: jax.Array) -> jax.Array:
    """Rows of the embedding table [V, D] in the compute dtype, times sqrt(hidden_size) for Gemma (the scale in
    the compute dtype, as transformers rounds it to the weights' dtype)."""
    dt = layers.compute_dtype(config.compute_dtype)
    x = jnp.take(table.astype(dt), tokens, axis=0)
    if config.embed_scale:
        x = x * jnp.asarray(math.sqrt(config.hidden_size), dt)
    return partitioning.constrain(x, (BATCH, LENGTH, EMBED))


def _layer_inputs(rows: int, prefix: Optional[PrefixKV], cache: Optional[KVCache]):
    """(prefix k/v, (prefix mask, positions), cache k/v, (written-slot mask [B, S], slot positions [B, S]))."""
    prefix_kv = prefix_meta = cache_kv = cache_meta = None
    if prefix is not None:
        prefix_kv, prefix_meta = (prefix.k, prefix.v), (prefix.mask, prefix.positions)
    if cache is not None:
        slots = jax.tree.leaves(cache.v)[0].shape[-2]
        cache_kv = (cache.k, cache.v)
        if cache.first is None:
            written = jnp.broadcast_to(jnp.arange(slots)[None, :] < jnp.reshape(cache.index, (-1, 1)), (rows, slots))
            cache_meta = (written, cache.start[:, None] + jnp.arange(slots, dtype=jnp.int32)[None, :])
        else:  # a ring: slot s holds the row's own token (s - first) mod S
            own = jnp.mod(jnp.arange(slots, dtype=jnp.int32)[None, :] - cache.first[:, None], slots)
            cache_meta = (own < (cache.index - cache.first)[:, None], cache.start[:, None] + own)
    return prefix_kv, prefix_meta, cache_kv, cache_meta


def _unrolled_hidden_states(config: ModelConfig, params, tokens, positions, own_mask, prefix, cache, adapters):
    """`hidden_states` with the layers unrolled (config.scan_layers False): the same DecoderLayer on each layer's
    own weights, KV-cache buffer, prefix slice and adapters, with the embedding and final norm of `Decoder`."""
    cfg = config
    dt = layers.compute_dtype(cfg.compute_dtype)
    x = embed_tokens(cfg, params["embed"]["embedding"], tokens)
    prefix_kv, prefix_meta, cache_kv, cache_meta = _layer_inputs(tokens.shape[0], prefix, cache)
    adapter_layers, rows = _adapter_inputs(adapters)
    rope = rope_tables(cfg, positions)
    apply = DecoderLayer(cfg).apply
    if cfg.remat:
        apply = jax.checkpoint(apply, prevent_cse=False)
    kvs = []
    for i, sliding in enumerate(cfg.sliding_layers):
        layer_adapters = None if adapter_layers is None else _params_layer(adapter_layers, i)
        layer_in = (_kv_layer(prefix_kv, i), _kv_layer(cache_kv, i), jnp.asarray(sliding), layer_adapters)
        x, kv = apply({"params": _params_layer(params["layers"], i)}, x, layer_in, positions, rope, own_mask,
                      prefix_meta, cache_meta, rows)
        kvs.append(kv)
    x = layers.rms_norm(x, params["final_norm"]["scale"], cfg.rms_norm_eps, dt, cfg.norm_offset)
    return x, tuple(jnp.stack(parts) for parts in zip(*kvs))


def _adapter_inputs(adapters):
    """(the members' per-layer adapters, the rows' one-hot [B, K * r] over their columns), or (None, None)."""
    if adapters is None:
        return None, None
    return adapters.layers, adapters.member[:, None] == adapters.columns[None, :]


def _kv_layer(kv, i: int):
    """Layer i of a (k, v) pair, each stacked [L, ...] or a tuple of L arrays; None stays None."""
    return None if kv is None else tuple(part[i] for part in kv)


def _params_layer(stacked, i: int):
    """Layer i's params: from the stacked tree (leaves [L, ...]), or from a tuple of per-layer trees."""
    return stacked[i] if isinstance(stacked, tuple) else jax.tree.map(lambda a: a[i], stacked)


class Decoder(nn.Module):
    """Embedding -> scanned decoder layers -> final norm. Returns the final hidden states and the per-layer own
    keys/values of this call's tokens (stacked [L, B, T, Hkv, hd]); with `compute_logits` also the float32
    logits (used by `init` to create the head)."""
    config: ModelConfig

    @nn.compact
    def __call__(self, tokens, positions, own_mask, prefix: Optional[PrefixKV] = None,
                 cache: Optional[KVCache] = None, compute_logits: bool = False, adapters=None):
        cfg = self.config
        dt = layers.compute_dtype(cfg.compute_dtype)
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, name="embed",
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                     ("vocab", "embed")))
        x = embed_tokens(cfg, embed.embedding, tokens)
        layer = DecoderLayer
        if cfg.remat:
            layer = nn.remat(layer, prevent_cse=False)
        stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast,
                                 nn.broadcast),
                        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        prefix_kv, prefix_meta, cache_kv, cache_meta = _layer_inputs(tokens.shape[0], prefix, cache)
        sliding = jnp.asarray(cfg.sliding_layers, bool)
        adapter_layers, rows = _adapter_inputs(adapters)
        x, kv = stack(cfg, name="layers")(x, (prefix_kv, cache_kv, sliding, adapter_layers), positions,
                                          rope_tables(cfg, positions), own_mask, prefix_meta, cache_meta, rows)
        x = layers.RMSNorm(cfg.rms_norm_eps, dt, cfg.norm_offset, "embed", name="final_norm")(x)
        if not compute_logits:
            return x, kv
        if cfg.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = layers.dense(cfg.vocab_size, ("embed", "vocab"), "lm_head", dt)(x)
        return x, kv, logits.astype(jnp.float32)


def _boxed_init(config: ModelConfig, key):
    tokens = jnp.zeros((1, 2), jnp.int32)
    positions = jnp.zeros((1, 2), jnp.int32)
    mask = jnp.ones((1, 2, 2), bool)
    return Decoder(config).init(key, tokens, positions, mask, compute_logits=True)["params"]


def init_params(config: ModelConfig, key, dtype: str = "float32"):
    """Random parameters (tests, LoRA shapes); real weights come from `models.load`."""
    params = nn.meta.unbox(_boxed_init(config, key))
    return jax.tree.map(lambda a: a.astype(layers.compute_dtype(dtype)), params)


def param_logical_axes(config: ModelConfig):
    """A pytree like params whose leaves are `PartitionSpec`s of logical axis names (e.g. ('layers', 'embed',
    'mlp')), mapped onto a mesh by `grpo_jax.sharding`."""
    boxed = jax.eval_shape(lambda: _boxed_init(config, jax.random.PRNGKey(0)))
    return nn.get_partition_spec(boxed)


def unembed(config: ModelConfig, params, hidden: jax.Array) -> jax.Array:
    """Final hidden states [..., D] -> float32 logits [..., V] (tied embedding or lm_head), soft-capped as
    c * tanh(logits / c) when the model has a final soft-cap (Gemma 2)."""
    dt = layers.compute_dtype(config.compute_dtype)
    if config.tie_word_embeddings:
        w = params["embed"]["embedding"].astype(dt)
        logits = jnp.einsum("...d,vd->...v", hidden.astype(dt), w, preferred_element_type=jnp.float32)
    else:
        w = params["lm_head"]["kernel"].astype(dt)
        logits = jnp.einsum("...d,dv->...v", hidden.astype(dt), w, preferred_element_type=jnp.float32)
    if config.final_softcap is not None:
        logits = config.final_softcap * jnp.tanh(logits / config.final_softcap)
    return logits


def hidden_states(config: ModelConfig, params, tokens, positions, own_mask, prefix: Optional[PrefixKV] = None,
                  cache: Optional[KVCache] = None, adapters=None):
    """The decoder without the head: (hidden [B, T, D], (k, v) of this call's tokens, stacked [L, B, T, Hkv, hd]).
    `own_mask` bool [B, T, T] says which of this call's tokens each query may read; the prefix and the cache's
    written slots are read by every query (within the sliding window, on sliding layers).

    adapters: None (the params alone), or `lora.MemberAdapters`: row b's adapted projections add its own member's
    unmerged LoRA update (`layers.add_adapter`), so each row runs its member's policy over the shared `params`
    (equal to the merged kernels up to float rounding). None computes exactly what it did without the option."""
    if not config.scan_layers:
        return _unrolled_hidden_states(config, params, tokens, positions, own_mask, prefix, cache, adapters)
    if adapters is None:
        return Decoder(config).apply({"params": params}, tokens, positions, own_mask, prefix, cache)
    return Decoder(config).apply({"params": params}, tokens, positions, own_mask, prefix, cache, adapters=adapters)


def for_decoding(config: ModelConfig, params, prefix: Optional[PrefixKV]):
    """(params, prefix) laid out for a decode loop: unchanged with scan_layers; unrolled, each layer's weights and
    prefix keys/values sliced out once here, before the loop, so no step copies a slice of a stacked array."""
    if config.scan_layers:
        return params, prefix
    split = tuple(_params_layer(params["layers"], i) for i in range(config.num_layers))
    if prefix is not None:
        prefix = prefix._replace(k=tuple(prefix.k), v=tuple(prefix.v))
    return {**params, "layers": split}, prefix


def adapters_for_decoding(config: ModelConfig, adapters):
    """`lora.MemberAdapters` laid out for a decode loop as `for_decoding` lays out the params: unchanged with
    scan_layers (or None); unrolled, each layer's adapters sliced out once, before the loop."""
    if adapters is None or config.scan_layers or isinstance(adapters.layers, tuple):
        return adapters
    return adapters._replace(layers=tuple(_params_layer(adapters.layers, i) for i in range(config.num_layers)))


def new_cache(config: ModelConfig, rows: int, slots: int, start: jax.Array) -> KVCache:
    """An empty cache of `slots` slots for `rows` rows whose slot 0 sits at position start [rows]."""
    dt = layers.compute_dtype(config.compute_dtype)
    hkv, hd = config.num_kv_heads, config.head_dim

    def zeros(shape, axes):
        if config.scan_layers:
            return partitioning.constrain(jnp.zeros((config.num_layers,) + shape, dt), axes)
        return tuple(partitioning.constrain(jnp.zeros(shape, dt), axes[1:]) for _ in range(config.num_layers))
    return KVCache(zeros((rows, hkv, hd, slots), KEY_CACHE_AXES), zeros((rows, hkv, slots, hd), CACHE_AXES),
                   jnp.int32(0), start.astype(jnp.int32))


def grow_cache(cache: KVCache, slots: int) -> KVCache:
    """`cache` padded with empty slots at the end to `slots` slots; what was written stays put."""
    def pad(a, axis, axes):
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, slots - a.shape[axis])
        return partitioning.constrain(jnp.pad(a, widths), axes[-a.ndim:])
    return cache._replace(k=jax.tree.map(lambda a: pad(a, -1, KEY_CACHE_AXES), cache.k),
                          v=jax.tree.map(lambda a: pad(a, -2, CACHE_AXES), cache.v))


def decode_step(config: ModelConfig, params, tokens: jax.Array, prefix: Optional[PrefixKV], cache: KVCache,
                adapters=None):
    """The decoder on one new token per row, tokens int32 [N] at positions cache.start + cache.index (minus
    cache.first with a ring): each row reads its prefix (if any), its cache's written slots and itself (with its
    member's adapters: `adapters`, see `hidden_states`; adapters.member [N] the rows' members). Returns
    (final hidden states [N, D], the cache with the new keys/values written at slot `index` (mod S with a ring),
    index + 1)."""
    n = tokens.shape[0]
    own = cache.index if cache.first is None else cache.index - cache.first
    positions = (cache.start + own)[:, None]
    hidden, (k, v) = hidden_states(config, params, tokens[:, None], positions, jnp.ones((n, 1, 1), bool), prefix,
                                   cache, adapters)
    k = k.transpose(0, 1, 3, 4, 2)  # [L, N, 1, Hkv, hd] -> the key cache's [L, N, Hkv, hd, 1]
    v = v.swapaxes(2, 3)            # -> the value cache's [L, N, Hkv, 1, hd]
    i = cache.index
    if cache.first is not None:
        i = jnp.mod(i, jax.tree.leaves(cache.v)[0].shape[-2])
    if isinstance(cache.k, tuple):  # per-layer buffers
        def write(buffers, new, at):
            return tuple(jax.lax.dynamic_update_slice(b, new[l].astype(b.dtype), at) for l, b in enumerate(buffers))
        return hidden[:, 0], cache._replace(k=write(cache.k, k, (0, 0, 0, i)), v=write(cache.v, v, (0, 0, i, 0)),
                                            index=cache.index + 1)
    ck = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, 0, 0, 0, i))
    cv = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, 0, 0, i, 0))
    return hidden[:, 0], cache._replace(k=ck, v=cv, index=cache.index + 1)


def _row_axis(buffers) -> int:
    """The row axis of a cache / prefix buffer: 1 in a stacked [L, rows, ...] array, 0 in a tuple of per-layer
    [rows, ...] arrays."""
    return 0 if isinstance(buffers, tuple) else 1


def take_rows(cache: KVCache, rows: jax.Array) -> KVCache:
    """The cache of rows `rows` [B'] (int32 indices in [0, B) into the cache's B rows), in that order; `index`
    kept."""
    def take(buffers):
        return jax.tree.map(lambda a: jnp.take(a, rows, axis=_row_axis(buffers)), buffers)
    first = None if cache.first is None else cache.first[rows]
    return cache._replace(k=take(cache.k), v=take(cache.v), start=cache.start[rows], first=first)


def put_rows(cache: KVCache, rows: jax.Array, part: KVCache) -> KVCache:
    """`cache` with its rows `rows` [B'] (distinct) replaced by the rows of `part` (B' rows), and part's index:
    the inverse of `take_rows` on those rows."""
    def put(buffers, new):
        def one(a, b):
            idx = (slice(None), rows) if _row_axis(buffers) else (rows,)
            return a.at[idx].set(b)
        return jax.tree.map(one, buffers, new)
    first = None if cache.first is None else cache.first.at[rows].set(part.first)
    return cache._replace(k=put(cache.k, part.k), v=put(cache.v, part.v), index=part.index,
                          start=cache.start.at[rows].set(part.start), first=first)


def prefix_rows(prefix: PrefixKV, prompts: jax.Array) -> PrefixKV:
    """The prefix of prompts `prompts` [B] (int32 indices in [0, P)): one prompt per row, a PrefixKV of
    B "groups" of one row each, for a batch whose rows no longer come in whole groups."""
    def take(buffers):
        return jax.tree.map(lambda a: jnp.take(a, prompts, axis=_row_axis(buffers)), buffers)
    return PrefixKV(take(prefix.k), take(prefix.v), prefix.mask[prompts], prefix.positions[prompts])


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
