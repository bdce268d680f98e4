"""The group sampler: G completions for each of P prompts in one compiled program, with exact log-probs.

    rollout = generate(config, params, prompt_tokens, prompt_mask, key, group_size=8, max_new_tokens=256,
                       temperature=1.0, stop_ids=config.eos_token_ids)

One call is one jitted program (compiled once per shapes and static settings):

  1. prefill: each prompt is run once (`logprobs.encode_prompt`, the trainer's function); its keys/values are read
     by all G completions of the group -- no G copies of the prompt cache;
  2. completion token 0 is drawn from the prompt's last hidden state (`unembed`);
  3. a `lax.while_loop` decodes one token per step for all N = P * G rows and stops as soon as every row has
     emitted a stop token (or after `max_new_tokens`); no host round-trip per token. The rows' own keys/values live
     in the loop carry, one [N, Hkv, T, hd] buffer per layer, each updated in place at one slot per step.

The decode step (`decode_step`) is `transformer.hidden_states(..., prefix=prompt.prefix, cache=...)` -- the
computation of the trainer's `logprobs.completion_logprobs` -- laid out for one token per row: the same modules
for norms and MLP, the same rope, the same float32 softmax over [prompt keys ++ own keys], with layers unrolled over
weights sliced once per call (XLA:CPU copies each layer's weights when a scan slices them, every step) and
attention as multiply-reduce fusions that read the caches where they lie. The sampler's log-probs therefore equal
the trainer's (|difference| <= 1e-5 in float32, tested): GRPO's ratio is 1 at the first iteration and needs no
sampler/trainer mismatch correction.

Log-probs are log softmax(logits / temperature) of the chosen token over the FULL vocabulary, even when top-k/top-p
truncate the distribution the token is drawn from; that is what the trainer computes. Greedy decoding reports
log-probs at temperature 1.

Randomness: row r (p-major, r = p * G + g) at step t uses fold_in(fold_in(key, r), t), so a row's draws do not
depend on the batch size, on other rows or on how the batch is split over devices: the same key gives the same
rollout on 1 device and on 8.

Static (recompile when changed): config, group_size, max_new_tokens, top_k, greedy, stop_ids, pad_id, mesh and
whether top-p is on (top_p < 1). Traced (free to change between calls): temperature and the top-p value.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax.logprobs import Prompt, encode_prompt
from grpo_jax.models.config import ModelConfig
from grpo_jax.models.transformer import _NEG_INF, RMSNorm, _dtype, _Mlp, apply_rope, rope_inv_freq, unembed


class Rollout(NamedTuple):
    tokens: jax.Array     # int32 [N, T] completion tokens (T = max_new_tokens), pad_id after the end
    mask: jax.Array       # float32 [N, T] 1.0 on generated tokens up to and including the stop token
    logps: jax.Array      # float32 [N, T] log p under softmax(logits / temperature), 0 where mask is 0
    lengths: jax.Array    # int32 [N] generated tokens per row (stop token included)
    truncated: jax.Array  # bool [N] reached max_new_tokens without a stop token


# --------------------------------------------------------------------------------------------------------------
# Drawing one token per row from logits.
# --------------------------------------------------------------------------------------------------------------
_BLOCK = 256  # vocabulary block of the two-level inverse CDF


def _first_true(cond: jax.Array) -> jax.Array:
    """Index of the first True along the last axis (its size if none); two plain reductions, not a variadic
    argmax, which XLA:CPU runs slowly on [N, V]."""
    m = cond.shape[-1]
    return jnp.min(jnp.where(cond, jnp.arange(m, dtype=jnp.int32), m), axis=-1)


def _argmax(z: jax.Array) -> jax.Array:
    """First index of the maximum along the last axis (as jnp.argmax), via max + min."""
    return _first_true(z == jnp.max(z, axis=-1, keepdims=True))


def _draw_index(p: jax.Array, target: jax.Array) -> jax.Array:
    """First index i with cumsum(p)[i] > target [N] for non-negative p [N, M]; if rounding leaves none, the last
    index with p > 0 (never an index of probability 0)."""
    m = p.shape[-1]
    cdf = jnp.cumsum(p, axis=-1)
    i = _first_true(cdf > target[:, None])
    last = jnp.max(jnp.where(p > 0, jnp.arange(m, dtype=jnp.int32), -1), axis=-1)
    return jnp.minimum(i, last)


def _inverse_cdf(p: jax.Array, u: jax.Array) -> jax.Array:
    """Index drawn with probability proportional to p [N, M] (non-negative, unnormalised; entries 0 never drawn)
    with one uniform u [N] per row.

    Two-level inverse CDF: pick a block of _BLOCK entries by its mass, then an entry inside it; exact up to float32
    rounding, one uniform per row (no [N, V] Gumbel noise), and no [N, V] cumulative sum."""
    n, m = p.shape
    if m <= 2 * _BLOCK:
        return _draw_index(p, u * jnp.sum(p, axis=-1))
    nb = -(-m // _BLOCK)
    pb = jnp.pad(p, ((0, 0), (0, nb * _BLOCK - m))).reshape(n, nb, _BLOCK)
    mass = jnp.sum(pb, axis=-1)                                          # [N, nb]
    target = u * jnp.sum(mass, axis=-1)
    b = _draw_index(mass, target)
    below = jnp.sum(jnp.where(jnp.arange(nb)[None, :] < b[:, None], mass, 0.0), axis=-1)
    block = jnp.take_along_axis(pb, b[:, None, None], axis=1)[:, 0]      # [N, _BLOCK]
    return b * _BLOCK + _draw_index(block, target - below)


def _nucleus_sorted(cand: jax.Array, top_p: jax.Array) -> jax.Array:
    """Top-p (Holtzman et al. 2020) on candidate logits sorted in descending order [N, M]: keep the shortest prefix
    whose probability (renormalised over the candidates) reaches top_p -- always the first -- plus any ties with
    its last member; the rest become -inf."""
    probs = jax.nn.softmax(cand, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = (before < top_p).at[:, 0].set(True)
    threshold = jnp.min(jnp.where(keep, cand, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(cand >= threshold, cand, -jnp.inf)


def _ordered_bits(z: jax.Array) -> jax.Array:
    """uint32 keys with the order of the float32 values z (-inf < ... < +inf)."""
    i = jax.lax.bitcast_convert_type(z, jnp.int32)
    i = jnp.where(i < 0, i ^ jnp.int32(0x7FFFFFFF), i)
    return jax.lax.bitcast_convert_type(i, jnp.uint32) ^ jnp.uint32(0x80000000)


def _nucleus_unsorted(z: jax.Array, p: jax.Array, top_p: jax.Array) -> jax.Array:
    """Top-p on unsorted logits z [N, V] with p = exp(z - max z): True on the tokens `_nucleus_sorted` keeps,
    without sorting the vocabulary. Token i is kept iff the mass of tokens with strictly larger logits is
    < top_p; that predicate is monotone in the logit, so the smallest kept key is found by bisection on the 32-bit
    order-preserving key (32 masked sums)."""
    key = _ordered_bits(z)
    budget = top_p * jnp.sum(p, axis=-1)

    def step(_, lohi):
        lo, hi = lohi  # the smallest key with mass(key > k) < top_p lies in [lo, hi]
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(jnp.where(key > mid[:, None], p, 0.0), axis=-1) < budget
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    n = z.shape[0]
    lo, _ = jax.lax.fori_loop(0, 32, step, (jnp.zeros((n,), jnp.uint32), jnp.full((n,), 0xFFFFFFFF, jnp.uint32)))
    return key >= lo[:, None]


def sample_logits(logits: jax.Array, u: jax.Array, temperature, top_p, *, top_k: int = 0, use_top_p: bool = False,
                  greedy: bool = False) -> tuple[jax.Array, jax.Array]:
    """One token per row from float32 logits [N, V] and uniforms u [N] -> (tokens int32 [N], logps float32 [N]).

    Order as in transformers: logits / temperature, then top-k, then top-p on the top-k renormalised distribution.
    The log-prob is of the full (untruncated) softmax(logits / temperature); greedy: argmax, log-prob at T = 1."""
    if greedy:
        tok = _argmax(logits)
        lse = jax.nn.logsumexp(logits, axis=-1)
        return tok, jnp.take_along_axis(logits, tok[:, None], axis=-1)[:, 0] - lse
    scaled = logits / temperature
    if 0 < top_k < scaled.shape[-1]:
        lse = jax.nn.logsumexp(scaled, axis=-1)
        cand, idx = jax.lax.top_k(scaled, top_k)          # sorted, descending
        if use_top_p:
            cand = _nucleus_sorted(cand, top_p)
        choice = _inverse_cdf(jnp.exp(cand - cand[:, :1]), u)
        tok = jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0]
    else:  # one exp pass serves the normaliser (as jax.nn.logsumexp computes it) and the draw
        top = jnp.max(scaled, axis=-1, keepdims=True)
        p = jnp.exp(scaled - top)
        lse = top[:, 0] + jnp.log(jnp.sum(p, axis=-1))
        if use_top_p:
            p = jnp.where(_nucleus_unsorted(scaled, p, top_p), p, 0.0)
        tok = _inverse_cdf(p, u)
    return tok, jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0] - lse


def _uniforms(row_keys: jax.Array, step) -> jax.Array:
    """One uniform per row for decode step `step`: fold_in(row_key, step)."""
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step), (), jnp.float32))(row_keys)


def _is_stop(tok: jax.Array, stop_ids: tuple) -> jax.Array:
    if not stop_ids:
        return jnp.zeros(tok.shape, bool)
    return jnp.any(tok[:, None] == jnp.asarray(stop_ids, jnp.int32)[None, :], axis=-1)


# --------------------------------------------------------------------------------------------------------------
# One decode step: the decoder of transformer.py specialised to one new token per row.
# --------------------------------------------------------------------------------------------------------------
class DecodeState(NamedTuple):
    """What the decode loop reads, laid out once per call: per-layer weights and per-layer prompt keys/values."""
    layers: tuple         # L per-layer param trees, sliced once per call (not per step) from params["layers"]
    prefix: tuple         # L pairs (k, v) [P, Hkv, S, hd]: head-major, read by attention without transposes
    prefix_mask: jax.Array  # bool [P, S]


def decode_state(config: ModelConfig, params, prompt: Prompt) -> DecodeState:
    """Per-layer weights and head-major prompt keys/values, computed once before the decode loop."""
    dt = _dtype(config.compute_dtype)
    pk = prompt.prefix.k.transpose(0, 1, 3, 2, 4).astype(dt)
    pv = prompt.prefix.v.transpose(0, 1, 3, 2, 4).astype(dt)
    layers = tuple(jax.tree.map(lambda a, i=i: a[i], params["layers"]) for i in range(config.num_layers))
    return DecodeState(layers, tuple((pk[i], pv[i]) for i in range(config.num_layers)), prompt.prefix.mask)


def new_cache(config: ModelConfig, rows: int, slots: int) -> tuple:
    """The rows' own keys/values: L pairs (k, v) of zeros [N, Hkv, slots, hd]. One buffer per layer (not a
    stacked [L, ...] array) so that each layer's one-slot write is in place and its read needs no slice copy."""
    shape = (rows, config.num_kv_heads, slots, config.head_dim)
    dt = _dtype(config.compute_dtype)
    return tuple((jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in range(config.num_layers))


def _scores(q, k, mask):
    """Attention scores as a fused multiply-reduce (tiny FLOPs) that reads k [.., Hkv, S, hd] where it lies:
    q [.., Hkv, r, hd] -> float32 [.., Hkv, r, S], masked to -1e30 where `mask` (broadcast) is False."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = jnp.sum(q[..., :, None, :].astype(jnp.float32) * k[..., None, :, :].astype(jnp.float32), axis=-1) * scale
    return jnp.where(mask, s, _NEG_INF)


def decode_step(config: ModelConfig, params, state: DecodeState, cache: tuple, tokens, positions, slot):
    """The decoder on one token per row: tokens/positions int32 [N]; each row's new key/value is written at cache
    slot `slot` and the row reads its prompt and its slots <= slot. Returns (final hidden [N, D], updated cache).

    The same computation as `transformer.hidden_states(..., prefix=..., cache=...)` (the trainer's path: same
    modules for norms and MLP, same rope, float32 softmax over [prompt keys ++ own keys]), laid out for decoding:
    layers unrolled over weights sliced once per call, one in-place one-slot write per layer and buffer, and
    attention as multiply-reduce fusions that read keys/values where they lie (no per-step copies)."""
    cfg = config
    dt = _dtype(cfg.compute_dtype)
    n = tokens.shape[0]
    p, s = state.prefix_mask.shape
    g = n // p
    h, hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    r = h // hkv
    inv_freq = rope_inv_freq(cfg)
    pos = positions[:, None]
    x = jnp.take(params["embed"]["embedding"].astype(dt), tokens, axis=0)[:, None, :]      # [N, 1, D]
    slots = cache[0][0].shape[2]
    own_mask = (jnp.arange(slots) <= slot)[None, None, None, :]
    pre_mask = state.prefix_mask[:, None, None, None, :]

    def dense(y, w):
        out = jnp.einsum("btd,df->btf", y, w["kernel"].astype(dt))
        return out + w["bias"].astype(dt) if "bias" in w else out

    new_cache = []
    for lp, (pk, pv), (ck, cv) in zip(state.layers, state.prefix, cache):
        a = lp["attn"]
        y = RMSNorm(cfg.rms_norm_eps, dt, "embed").apply({"params": lp["input_norm"]}, x)
        q = dense(y, a["q_proj"]).reshape(n, 1, h, hd)
        k = dense(y, a["k_proj"]).reshape(n, 1, hkv, hd)
        v = dense(y, a["v_proj"]).reshape(n, 1, hkv, hd)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, dt, "head_dim").apply({"params": a["q_norm"]}, q)
            k = RMSNorm(cfg.rms_norm_eps, dt, "head_dim").apply({"params": a["k_norm"]}, k)
        q = apply_rope(q, pos, inv_freq).reshape(n, hkv, r, hd)
        k = apply_rope(k, pos, inv_freq).astype(ck.dtype).transpose(0, 2, 1, 3)             # [N, Hkv, 1, hd]
        v = v.astype(cv.dtype).transpose(0, 2, 1, 3)
        # Write first, then read: with that data dependency XLA updates each cache buffer in place (reading before
        # an independent write made it copy both buffers of every layer every step).
        ck = jax.lax.dynamic_update_slice(ck, k, (0, 0, slot, 0))
        cv = jax.lax.dynamic_update_slice(cv, v, (0, 0, slot, 0))
        new_cache.append((ck, cv))
        pk, pv = pk[:, None], pv[:, None]                                                     # [P, 1, Hkv, S, hd]
        pre = _scores(q.reshape(p, g, hkv, r, hd), pk, pre_mask).reshape(n, hkv, r, s)
        own = _scores(q, ck, own_mask)
        w = jax.nn.softmax(jnp.concatenate([pre, own], axis=-1), axis=-1)
        w = w.astype(dt).astype(jnp.float32)  # as the trainer, which casts the weights to the values' dtype
        w_pre = w[..., :s].reshape(p, g, hkv, r, s)
        out = jnp.sum(w_pre[..., None] * pv[:, :, :, None].astype(jnp.float32), axis=-2).reshape(n, hkv, r, hd)
        out = out + jnp.sum(w[..., s:, None] * cv[:, :, None].astype(jnp.float32), axis=-2)
        x = x + dense(out.astype(dt).reshape(n, 1, h * hd), a["o_proj"])
        y = RMSNorm(cfg.rms_norm_eps, dt, "embed").apply({"params": lp["post_attn_norm"]}, x)
        x = x + _Mlp(cfg).apply({"params": lp["mlp"]}, y)
    x = RMSNorm(cfg.rms_norm_eps, dt, "embed").apply({"params": params["final_norm"]}, x)
    return x[:, 0], tuple(new_cache)


# --------------------------------------------------------------------------------------------------------------
# The compiled program.
# --------------------------------------------------------------------------------------------------------------
def _data_axes(mesh: Optional[Mesh]) -> tuple:
    return tuple(a for a in ("data", "fsdp") if mesh is not None and a in mesh.axis_names)


def _decode_program(config: ModelConfig, group_size: int, max_new_tokens: int, top_k: int, use_top_p: bool,
                    greedy: bool, stop_ids: tuple, pad_id: int, mesh: Optional[Mesh]):
    """The traced function (params, prompt_tokens, prompt_mask, key, temperature, top_p) -> Rollout."""
    g, t_max = group_size, max_new_tokens
    axes = _data_axes(mesh)

    def constrain(x, axis=0):  # keep the row axis split over the data axes inside the loop
        if not axes:
            return x
        spec = [None] * x.ndim
        spec[axis] = axes
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))

    def program(params, prompt_tokens, prompt_mask, key, temperature, top_p):
        p = prompt_tokens.shape[0]
        n = p * g
        prompt = encode_prompt(config, params, prompt_tokens, prompt_mask)
        state = decode_state(config, params, prompt)
        row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n, dtype=jnp.int32))
        draw = functools.partial(sample_logits, temperature=temperature, top_p=top_p, top_k=top_k,
                                 use_top_p=use_top_p, greedy=greedy)

        first_logits = jnp.repeat(unembed(config, params, prompt.last_hidden), g, axis=0)
        tok0, lp0 = draw(constrain(first_logits), _uniforms(row_keys, 0))
        tokens = jnp.full((n, t_max), pad_id, jnp.int32).at[:, 0].set(tok0)
        logps = jnp.zeros((n, t_max), jnp.float32).at[:, 0].set(lp0)
        done = _is_stop(tok0, stop_ids)
        lengths = jnp.ones((n,), jnp.int32)
        cache = new_cache(config, n, max(t_max - 1, 1))  # the last token is never fed back
        start = jnp.repeat(prompt.length, g)

        def cond(carry):
            t, _, _, done, _, _ = carry
            return (t < t_max) & ~jnp.all(done)

        def body(carry):
            t, tokens, logps, done, lengths, cache = carry
            prev = jax.lax.dynamic_index_in_dim(tokens, t - 1, axis=1, keepdims=False)
            prev = jnp.where(done, 0, prev)  # finished rows feed a valid id (pad_id may be outside the vocab)
            hidden, cache = decode_step(config, params, state, cache, prev, start + t - 1, t - 1)
            tok, lp = draw(unembed(config, params, hidden), _uniforms(row_keys, t))
            tok = jnp.where(done, pad_id, tok)
            lp = jnp.where(done, 0.0, lp)
            tokens = jax.lax.dynamic_update_slice_in_dim(tokens, tok[:, None], t, axis=1)
            logps = jax.lax.dynamic_update_slice_in_dim(logps, lp[:, None], t, axis=1)
            lengths = lengths + (~done).astype(jnp.int32)
            done = done | _is_stop(tok, stop_ids)
            return (t + 1, constrain(tokens), constrain(logps), constrain(done), constrain(lengths),
                    jax.tree.map(constrain, cache))

        carry = (jnp.int32(1), tokens, logps, done, lengths, jax.tree.map(constrain, cache))
        _, tokens, logps, done, lengths, _ = jax.lax.while_loop(cond, body, carry)
        mask = (jnp.arange(t_max, dtype=jnp.int32)[None, :] < lengths[:, None]).astype(jnp.float32)
        return Rollout(tokens, mask, logps, lengths, ~done)

    return program


@functools.lru_cache(maxsize=64)
def _compiled(config: ModelConfig, group_size: int, max_new_tokens: int, top_k: int, use_top_p: bool, greedy: bool,
              stop_ids: tuple, pad_id: int, mesh: Optional[Mesh]):
    program = _decode_program(config, group_size, max_new_tokens, top_k, use_top_p, greedy, stop_ids, pad_id, mesh)
    if mesh is None:
        return jax.jit(program)
    rows = NamedSharding(mesh, PartitionSpec(_data_axes(mesh)))
    rows2 = NamedSharding(mesh, PartitionSpec(_data_axes(mesh), None))
    return jax.jit(program, out_shardings=Rollout(rows2, rows2, rows2, rows, rows))


# --------------------------------------------------------------------------------------------------------------
# Public entry point: validation, placement on the mesh, the call.
# --------------------------------------------------------------------------------------------------------------
def _validate(config: ModelConfig, mask: np.ndarray, group_size, max_new_tokens, temperature, top_k, top_p, greedy,
              stop_ids):
    if mask.ndim != 2 or mask.shape[0] == 0:
        raise ValueError(f"generate: empty prompt list (prompt_mask has shape {mask.shape}; need [P >= 1, S])")
    if not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"generate: group_size must be an integer >= 1, got {group_size!r}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"generate: top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not (0.0 < float(top_p) <= 1.0):
        raise ValueError(f"generate: top_p must be in (0, 1] (1 = off), got {top_p!r}")
    if float(temperature) < 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature!r}")
    if float(temperature) == 0 and not greedy:
        raise ValueError("generate: temperature 0 is undefined for sampling; pass greedy=True for argmax decoding")
    for s in stop_ids:
        if not 0 <= int(s) < config.vocab_size:
            raise ValueError(f"generate: stop id {s} is outside the vocabulary [0, {config.vocab_size})")
    lengths = mask.sum(axis=-1)
    for i in range(mask.shape[0]):
        if lengths[i] == 0:
            raise ValueError(f"generate: prompt {i} is empty (its mask has no real token)")
        if np.any(np.diff(mask[i].astype(np.int8)) < 0):
            raise ValueError(f"generate: prompt {i} is not left-padded (mask must be 0...0 1...1); "
                             "use batching.left_pad")
    longest = int(lengths.max())
    if longest + max_new_tokens > config.max_position_embeddings:
        i = int(lengths.argmax())
        raise ValueError(f"generate: prompt {i} has {longest} tokens; with max_new_tokens={max_new_tokens} that is "
                         f"{longest + max_new_tokens} positions, more than the model's context of "
                         f"{config.max_position_embeddings}")


def _place(tree, sharding: NamedSharding):
    """Arrays already laid out on the mesh's devices stay as they are (e.g. params sharded by the caller); anything
    else (numpy, single-device arrays) is put with `sharding`."""
    devices = set(sharding.mesh.devices.flat)

    def put(x):
        if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
            return x
        return jax.device_put(x, sharding)
    return jax.tree.map(put, tree)


def generate(config: ModelConfig, params, prompt_tokens, prompt_mask, key, *, group_size: int, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             stop_ids: Sequence[int] = (), pad_id: int = 0, mesh: Optional[Mesh] = None) -> Rollout:
    """G = group_size completions of each left-padded prompt (tokens/mask [P, S], see `batching.left_pad`).

    Rows of the result are p-major (row = p * G + g); T = max_new_tokens columns. A row ends at the first token in
    `stop_ids` (pass config.eos_token_ids plus any tokenizer extras; () never stops early); later columns hold
    `pad_id` with mask 0. With `mesh` (axes ('data', 'fsdp', 'tensor')), prompts and rows are split over
    ('data', 'fsdp'); params already on the mesh keep their sharding, others are replicated. P need not divide
    the number of data shards (the batch is padded and the padding dropped)."""
    mask = np.asarray(prompt_mask).astype(bool)
    stop_ids = tuple(int(s) for s in stop_ids)
    _validate(config, mask, group_size, max_new_tokens, temperature, top_k, top_p, greedy, stop_ids)
    tokens = np.asarray(prompt_tokens).astype(np.int32)
    if tokens.shape != mask.shape:
        raise ValueError(f"generate: prompt_tokens {tokens.shape} and prompt_mask {mask.shape} differ in shape")
    bad = mask & ((tokens < 0) | (tokens >= config.vocab_size))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"generate: prompt {i} holds token id {tokens[i, j]} outside the vocabulary "
                         f"[0, {config.vocab_size})")
    top_k = int(min(top_k, config.vocab_size))
    fn = _compiled(config, int(group_size), int(max_new_tokens), top_k, float(top_p) < 1.0, bool(greedy), stop_ids,
                   int(pad_id), mesh)
    temperature = jnp.float32(1.0 if greedy else temperature)
    top_p = jnp.float32(top_p)
    p = tokens.shape[0]
    if mesh is None:
        return fn(params, tokens, mask, key, temperature, top_p)
    shards = int(np.prod([mesh.shape[a] for a in _data_axes(mesh)]))
    extra = -p % shards
    if extra:  # pad with copies of the last prompt; their rows are dropped below
        tokens = np.concatenate([tokens, np.repeat(tokens[-1:], extra, 0)])
        mask = np.concatenate([mask, np.repeat(mask[-1:], extra, 0)])
    rows = NamedSharding(mesh, PartitionSpec(_data_axes(mesh), None))
    replicated = NamedSharding(mesh, PartitionSpec())
    out = fn(_place(params, replicated), jax.device_put(tokens, rows), jax.device_put(mask, rows),
             jax.device_put(key, replicated), temperature, top_p)
    if extra:
        out = Rollout(*(x[: p * group_size] for x in out))
    return out
