"""Drawing one token per row from logits: temperature, top-k, top-p (transformers' order), greedy; the log-prob
of the drawn token under the full softmax(logits / temperature), as the trainer computes it.

    tokens, logps = sample_logits(logits [N, V], u [N], temperature, top_p, top_k=0, use_top_p=False)

One uniform u per row decides the draw (a two-level inverse CDF, no [N, V] noise), so a row's token depends only on
its logits, its settings and its own uniform. The functions take 2-D arrays with the vocabulary on `axis`
(-1 / 1: [N, V], as the decode loop's head gives them; 0: [V, N]) and return one value per row [N].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_BLOCK = 256  # vocabulary block of the two-level inverse CDF


def _iota(shape: tuple, axis: int) -> jax.Array:
    return jax.lax.broadcasted_iota(jnp.int32, shape, axis % len(shape))


def _pick(z: jax.Array, idx: jax.Array, axis: int) -> jax.Array:
    """z[idx[n], n] (axis 0) or z[n, idx[n]] (axis -1): one entry per row."""
    return jnp.take_along_axis(z, jnp.expand_dims(idx, axis), axis=axis).squeeze(axis)


def _first_true(cond: jax.Array, axis: int = -1) -> jax.Array:
    """Index of the first True along `axis` (its size if none); two plain reductions, not a variadic argmax,
    which XLA:CPU runs slowly on [N, V]."""
    return jnp.min(jnp.where(cond, _iota(cond.shape, axis), cond.shape[axis]), axis=axis)


def _argmax(z: jax.Array, axis: int = -1) -> jax.Array:
    """First index of the maximum along `axis` (as jnp.argmax), via max + min."""
    return _first_true(z == jnp.max(z, axis=axis, keepdims=True), axis)


def _draw_index(p: jax.Array, target: jax.Array, axis: int = -1) -> jax.Array:
    """First index i with cumsum(p)[i] > target [N] for non-negative p; if rounding leaves none, the last index
    with p > 0 (never an index of probability 0)."""
    cdf = jnp.cumsum(p, axis=axis)
    i = _first_true(cdf > jnp.expand_dims(target, axis), axis)
    last = jnp.max(jnp.where(p > 0, _iota(p.shape, axis), -1), axis=axis)
    return jnp.minimum(i, last)


def _inverse_cdf(p: jax.Array, u: jax.Array, axis: int = -1) -> jax.Array:
    """Index drawn with probability proportional to p (non-negative, unnormalised; entries 0 never drawn; the
    vocabulary on `axis`) with one uniform u [N] per row.

    Two-level inverse CDF: pick a block of _BLOCK entries by its mass, then an entry inside it; exact up to float32
    rounding, one uniform per row (no [N, V] Gumbel noise), and no [N, V] cumulative sum."""
    axis = axis % 2
    m = p.shape[axis]
    if m <= 2 * _BLOCK:
        return _draw_index(p, u * jnp.sum(p, axis=axis), axis)
    nb = -(-m // _BLOCK)
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, nb * _BLOCK - m)
    blocked = list(p.shape)
    blocked[axis:axis + 1] = [nb, _BLOCK]
    pb = jnp.pad(p, pad).reshape(blocked)                                    # [N, nb, B] or [nb, B, N]
    mass = jnp.sum(pb, axis=axis + 1)                                        # [N, nb] or [nb, N]
    target = u * jnp.sum(mass, axis=axis)
    b = _draw_index(mass, target, axis)
    below = jnp.sum(jnp.where(_iota(mass.shape, axis) < jnp.expand_dims(b, axis), mass, 0.0), axis=axis)
    chosen = jnp.expand_dims(jnp.expand_dims(b, axis), axis + 1)             # [N, 1, 1] or [1, 1, N]
    block = jnp.take_along_axis(pb, chosen, axis=axis).squeeze(axis)         # [N, B] or [B, N]
    return b * _BLOCK + _draw_index(block, target - below, axis)


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


def _nucleus_unsorted(z: jax.Array, p: jax.Array, top_p: jax.Array, axis: int = -1) -> jax.Array:
    """Top-p on unsorted logits z (the vocabulary on `axis`) with p = exp(z - max z): True on the tokens
    `_nucleus_sorted` keeps, without sorting the vocabulary. Token i is kept iff the mass of tokens with strictly
    larger logits is < top_p; that predicate is monotone in the logit, so the smallest kept key is found by
    bisection on the 32-bit order-preserving key (32 masked sums)."""
    key = _ordered_bits(z)
    budget = top_p * jnp.sum(p, axis=axis)

    def step(_, lohi):
        lo, hi = lohi  # the smallest key with mass(key > k) < top_p lies in [lo, hi]
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(jnp.where(key > jnp.expand_dims(mid, axis), p, 0.0), axis=axis) < budget
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    n = budget.shape[0]
    lo, _ = jax.lax.fori_loop(0, 32, step, (jnp.zeros((n,), jnp.uint32), jnp.full((n,), 0xFFFFFFFF, jnp.uint32)))
    return key >= jnp.expand_dims(lo, axis)


def sample_logits(logits: jax.Array, u: jax.Array, temperature, top_p, *, top_k: int = 0, use_top_p: bool = False,
                  greedy: bool = False, axis: int = -1) -> tuple[jax.Array, jax.Array]:
    """One token per row from float32 logits and uniforms u [N] -> (tokens int32 [N], logps float32 [N]). The
    vocabulary is on `axis`: [N, V] (-1, the decode loop's) or [V, N] (0, for vocabulary-first logits).

    Order as in transformers: logits / temperature, then top-k, then top-p on the top-k renormalised distribution.
    The log-prob is of the full (untruncated) softmax(logits / temperature); greedy: argmax, log-prob at T = 1.
    temperature, top_p: scalars, or one value per row [N] (a population's members' own settings)."""
    axis = axis % 2
    if greedy:
        tok = _argmax(logits, axis)
        return tok, _pick(logits, tok, axis) - jax.nn.logsumexp(logits, axis=axis)
    vocab = logits.shape[axis]
    if 0 < top_k < vocab and axis == 0:  # lax.top_k works on the last axis
        return sample_logits(logits.T, u, temperature, top_p, top_k=top_k, use_top_p=use_top_p)
    if jnp.ndim(temperature):  # one per row: broadcast over the vocabulary
        temperature = jnp.expand_dims(temperature, axis)
    scaled = logits / temperature
    if 0 < top_k < vocab:
        lse = jax.nn.logsumexp(scaled, axis=-1)
        cand, idx = jax.lax.top_k(scaled, top_k)          # sorted, descending
        if use_top_p:
            cand = _nucleus_sorted(cand, top_p[:, None] if jnp.ndim(top_p) else top_p)
        choice = _inverse_cdf(jnp.exp(cand - cand[:, :1]), u)
        tok = _pick(idx, choice, -1)
    else:  # one exp pass serves the normaliser (as jax.nn.logsumexp computes it) and the draw
        top = jnp.max(scaled, axis=axis, keepdims=True)
        p = jnp.exp(scaled - top)
        lse = top.squeeze(axis) + jnp.log(jnp.sum(p, axis=axis))
        if use_top_p:
            p = jnp.where(_nucleus_unsorted(scaled, p, top_p, axis), p, 0.0)
        tok = _inverse_cdf(p, u, axis)
    return tok, _pick(scaled, tok, axis) - lse
