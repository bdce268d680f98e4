"""The group sampler: G completions for each of P prompts in one compiled program, with exact log-probs.

    rollout = generate(config, params, prompt_tokens, prompt_mask, key, group_size=8, max_new_tokens=256,
                       temperature=1.0, stop_ids=config.eos_token_ids)

One call is one jitted program (compiled once per shapes and static settings):

  1. prefill: each prompt is run once (`logprobs.encode_prompt`, the trainer's function); its keys/values are read
     by all G completions of the group -- no G copies of the prompt cache;
  2. completion token 0 is drawn from the prompt's last hidden state (`models.unembed`, the trainer's head);
  3. `decode_loop.decode` runs `lax.while_loop`s that decode one token per step for the running rows until every
     row has emitted a stop token (or has max_new_tokens); no host round-trip per token. The rows' own
     keys/values live in the loop carry (`models.KVCache`, [L, rows, Hkv, slots, hd]), one slot written per step.
     The loop avoids work for finished rows three ways (see grpo_jax/decode_loop.py): its caches double in size
     (`cache_phases`: 64, 128, ... slots), so a step reads at most twice the slots written so far; with
     `compact` (default from 64 new tokens on) the running rows are gathered into a smaller batch (a ladder N, N/2, N/4, ... of at
     least `decode_loop.MIN_BUCKET` rows) each time at most half of the batch still runs; with
     `max_decode_rows` = B < N, only B rows decode at once and a finished row's slot takes the next waiting row,
     whose prompt keys/values come from the group's shared prefill.

The decode step is the model's own (`models.decode_step`): the same decoder, layers scanned, that the trainer's
`logprobs.completion_logprobs` runs over all completion tokens at once, on one token per row with a cache. The
sampler's log-probs therefore equal the trainer's (|difference| <= 1e-5 in float32, tested): GRPO's ratio is 1
at the first iteration and needs no sampler/trainer mismatch correction.

Log-probs are log softmax(logits / temperature) of the chosen token over the FULL vocabulary, even when top-k/top-p
truncate the distribution the token is drawn from; that is what the trainer computes. Greedy decoding reports
log-probs at temperature 1.

Randomness: row r (p-major, r = p * G + g) at its own step t uses fold_in(fold_in(key, r), t), so a row's draws do
not depend on the batch size, on other rows, on compaction or refill, or on how the batch is split over devices:
the same key gives the same rollout on 1 device and on 8, with or without compaction and refill (tested).

Population members (`generate(members=lora.Members(adapters [K, ...], alpha))`, params the shared LoRA base):
the K members' rows -- K * P * G, member-major -- are decoded in the same one program: each member's prompts are
prefilled with its adapters (K * P prefix rows), every matmul of the base runs over all rows at once and each row
adds its own member's unmerged low-rank update (`lora.MemberAdapters`, `layers.add_adapter`), temperature and
top-p are one value per member, and row (k, r) draws with the single policy's key of row r. Member k's rows
equal `generate` on the base merged with member k's adapters (tested), so members share random numbers.

Static (recompile when changed): config, group_size, max_new_tokens, top_k, greedy, stop_ids, pad_id, mesh,
compact, max_decode_rows, the number of members K and whether top-p is on (top_p < 1). Traced (free to change
between calls): temperature and the top-p value (per member with members), and the members' adapters.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax import decode_loop, partitioning
from grpo_jax.logprobs import encode_prompt
from grpo_jax.models import decoder, lora
from grpo_jax.models.config import ModelConfig


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

# The functions below take 2-D arrays with the vocabulary on `axis` (-1 / 1: [N, V], as the decode loop's head
# gives them; 0: [V, N]) and return one value per row [N].


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


# --------------------------------------------------------------------------------------------------------------
# The compiled program.
# --------------------------------------------------------------------------------------------------------------
cache_phases = decode_loop.cache_phases  # the decode loop's cache capacities, part of the sampler's API


def _data_axes(mesh: Optional[Mesh]) -> tuple:
    return tuple(a for a in ("data", "fsdp") if mesh is not None and a in mesh.axis_names)


def _decode_program(config: ModelConfig, group_size: int, max_new_tokens: int, top_k: int, use_top_p: bool,
                    greedy: bool, stop_ids: tuple, pad_id: int, mesh: Optional[Mesh], compact: bool = True,
                    max_decode_rows: int = 0, members: int = 0):
    """The traced function (params, prompt_tokens, prompt_mask, key, temperature, top_p[, members]) -> (Rollout,
    decode_loop.Outputs): prefill, token 0 of every row, then `decode_loop.decode`.

    members = K > 0: `members` is a `lora.Members` of K adapters over the base `params`, temperature and top_p are
    [K]; the rows are member-major (row = k * P * G + p * G + g): each member's prefill of the P prompts (K * P
    prefix rows, its adapted keys/values its own), each row decoded with its member's adapters and settings and
    the key of its row within the member (the single policy's key of that row)."""
    g, t_max = group_size, max_new_tokens
    axes = _data_axes(mesh)
    shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1

    def constrain(x, axis=0):  # keep the row axis split over the data axes inside the loop
        if not axes:
            return x
        spec = [None] * x.ndim
        spec[axis] = axes
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))

    def program(params, prompt_tokens, prompt_mask, key, temperature, top_p, member_adapters=None):
        p = prompt_tokens.shape[0]
        n = p * g
        adapters = None
        if not members:
            prompt = encode_prompt(config, params, prompt_tokens, prompt_mask)
            row_index = jnp.arange(n, dtype=jnp.int32)
        else:  # K members' rows, member-major
            ids = jnp.arange(members, dtype=jnp.int32)
            prompt = encode_prompt(config, params, jnp.tile(prompt_tokens, (members, 1)),
                                   jnp.tile(prompt_mask, (members, 1)),
                                   lora.member_adapters(member_adapters, jnp.repeat(ids, p)))
            adapters = lora.member_adapters(member_adapters, constrain(jnp.repeat(ids, n)))
            temperature, top_p = jnp.repeat(temperature, n), jnp.repeat(top_p, n)   # [K * N], per row
            row_index = jnp.arange(members * n, dtype=jnp.int32) % n                # the row within its member
            n = members * n
        row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, row_index)

        def draw(logits, u, rows):
            def per_row(x):
                return x if jnp.ndim(x) == 0 else x[rows]
            return sample_logits(logits, u, per_row(temperature), per_row(top_p), top_k=top_k, use_top_p=use_top_p,
                                 greedy=greedy)

        first_logits = jnp.repeat(decoder.unembed(config, params, prompt.last_hidden), g, axis=0)   # [N, V]
        params, prefix = decoder.for_decoding(config, params, prompt.prefix)
        adapters = decoder.adapters_for_decoding(config, adapters)
        tok0, lp0 = draw(constrain(first_logits), decode_loop.row_uniforms(row_keys, 0),
                         jnp.arange(n, dtype=jnp.int32))
        start = jnp.repeat(prompt.length, g)  # completion token j sits at position length + j
        problem = decode_loop.Problem(config, params, prefix, constrain(start), constrain(tok0), row_keys, draw, g,
                                      t_max, stop_ids, constrain, adapters)
        out = decode_loop.decode(problem, constrain(lp0), pad_id=pad_id, shards=shards, compact=compact,
                                 max_decode_rows=max_decode_rows)
        mask = (jnp.arange(t_max, dtype=jnp.int32)[None, :] < out.lengths[:, None]).astype(jnp.float32)
        return Rollout(out.tokens, mask, out.logps, out.lengths, ~out.stopped), out

    return program


def _compiled(config: ModelConfig, group_size: int, max_new_tokens: int, top_k: int, use_top_p: bool, greedy: bool,
              stop_ids: tuple, pad_id: int, mesh: Optional[Mesh], compact: bool = True, max_decode_rows: int = 0,
              stats: bool = False, members: int = 0):
    """The jitted program (params, prompt_tokens, prompt_mask, key, temperature, top_p[, lora.Members]) -> Rollout
    (with `stats`: (Rollout, decode_loop.Outputs), for the loop's work counters); one per settings (arguments
    normalised, so a call with the defaults spelled out finds the same program). members: K (static), 0 = one
    policy."""
    return _jitted(config, int(group_size), int(max_new_tokens), int(top_k), bool(use_top_p), bool(greedy),
                   tuple(stop_ids), int(pad_id), mesh, bool(compact), int(max_decode_rows), bool(stats), int(members))


@functools.lru_cache(maxsize=64)
def _jitted(config, group_size, max_new_tokens, top_k, use_top_p, greedy, stop_ids, pad_id, mesh, compact,
            max_decode_rows, stats, members=0):
    program = _decode_program(config, group_size, max_new_tokens, top_k, use_top_p, greedy, stop_ids, pad_id, mesh,
                              compact, max_decode_rows, members)
    if not stats:
        with_stats = program

        def program(*args):
            return with_stats(*args)[0]
    if mesh is None:
        return jax.jit(program)
    rows = NamedSharding(mesh, PartitionSpec(_data_axes(mesh)))
    rows2 = NamedSharding(mesh, PartitionSpec(_data_axes(mesh), None))
    out_shardings = Rollout(rows2, rows2, rows2, rows, rows)
    if stats:
        replicated = NamedSharding(mesh, PartitionSpec())
        out_shardings = (out_shardings, decode_loop.Outputs(rows2, rows2, rows, rows, replicated, replicated))
    # The model's activations and caches are constrained by the sampler's rules table (see grpo_jax.partitioning).
    return jax.jit(partitioning.with_rules(program, mesh, partitioning.rules_for("sample")),
                   out_shardings=out_shardings)


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


@functools.lru_cache(maxsize=16)
def _sampler_param_shardings(config: ModelConfig, mesh: Mesh):
    """NamedShardings of the model's params by the sampler's table (`partitioning.SAMPLER_RULES`)."""
    shapes = jax.eval_shape(lambda: decoder.init_params(config, jax.random.PRNGKey(0)))
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, partitioning.logical_to_mesh_spec(spec, x.shape, mesh,
                                                                              partitioning.SAMPLER_RULES)),
        decoder.param_logical_axes(config), shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def place_params(config: ModelConfig, params, mesh: Mesh):
    """The params placed on `mesh` by the sampler's table: weights keep their tensor split and are whole over
    fsdp (a no-op for params already so placed, e.g. the trainer's when mesh fsdp = 1)."""
    return jax.device_put(params, _sampler_param_shardings(config, mesh))


def _place(tree, sharding: NamedSharding):
    """Arrays already laid out on the mesh's devices stay as they are (e.g. params sharded by the caller); anything
    else (numpy, single-device arrays) is put with `sharding`."""
    devices = set(sharding.mesh.devices.flat)

    def put(x):
        if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
            return x
        return jax.device_put(x, sharding)
    return jax.tree.map(put, tree)


class DecodeStats(NamedTuple):
    """The decode loop's work (`generate_with_stats`): decode steps run at each batch size of the compaction
    ladder, and rows that took a slot another row had freed (refill)."""
    buckets: tuple       # the ladder's batch sizes (rows per decode step), largest first
    steps: np.ndarray    # int [len(buckets)]: decode steps run at each size
    refilled: int

    def tokens_computed(self, rows: int) -> int:
        """Token positions the call computed for `rows` rows: token 0 of each from the prefill, then every decode
        step's batch (finished rows' idle slots included)."""
        return int(rows + np.dot(np.asarray(self.buckets), np.asarray(self.steps)))


def generate(config: ModelConfig, params, prompt_tokens, prompt_mask, key, *, group_size: int, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             stop_ids: Sequence[int] = (), pad_id: int = 0, mesh: Optional[Mesh] = None, compact: Optional[bool] = None,
             max_decode_rows: int = 0, members: Optional[lora.Members] = None) -> Rollout:
    """G = group_size completions of each left-padded prompt (tokens/mask [P, S], see `batching.left_pad`).

    Rows of the result are p-major (row = p * G + g); T = max_new_tokens columns. A row ends at the first token in
    `stop_ids` (pass config.eos_token_ids plus any tokenizer extras; () never stops early); later columns hold
    `pad_id` with mask 0. With `mesh` (axes ('data', 'fsdp', 'tensor')), prompts and rows are split over
    ('data', 'fsdp'), the params are placed by the sampler's rules table (`place_params`: the trainer's fsdp
    split of 'embed' gathered once per call, the tensor split kept) and the program is traced under that table
    (`partitioning.rules_for('sample')`). P need not divide the number of data shards (the batch is padded and
    the padding dropped).

    compact: shrink the decode batch as rows finish (`decode_loop.buckets`); False decodes every row until all
    stop; None (default): compact when max_new_tokens >= `decode_loop.COMPACT_MIN_NEW_TOKENS` (64). max_decode_rows: decode at most this many rows at once (rounded up to a multiple of the data shards),
    refilling finished rows' slots with waiting ones; 0 (or >= N) = all rows at once. Neither changes the result
    (same tokens, log-probs within float rounding): only the work done.

    members: K population members' LoRA adapters over the base `params` (`lora.Members`), decoded together in the
    one loop: K * P * G rows, member-major (row = k * P * G + p * G + g); temperature and top_p are then K values,
    one per member (traced). Member k's rows are the rollout `generate` gives for params merged with member k's
    adapters, its temperature and top_p, and the same `key` (same tokens, log-probs within float rounding): each
    row draws with the key of its row within its member. The base matmuls run over all K members' rows at once;
    each row adds its own member's unmerged update (`lora.MemberAdapters`). K is static (one program per K)."""
    return _generate(config, params, prompt_tokens, prompt_mask, key, False, group_size=group_size,
                     max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                     stop_ids=stop_ids, pad_id=pad_id, mesh=mesh, compact=compact, max_decode_rows=max_decode_rows,
                     members=members)


def generate_with_stats(config: ModelConfig, params, prompt_tokens, prompt_mask, key, **settings):
    """`generate` (same arguments) -> (Rollout, DecodeStats): the rollout and the decode loop's work counters."""
    return _generate(config, params, prompt_tokens, prompt_mask, key, True, **settings)


def _generate(config: ModelConfig, params, prompt_tokens, prompt_mask, key, stats: bool, *, group_size: int,
              max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              greedy: bool = False, stop_ids: Sequence[int] = (), pad_id: int = 0, mesh: Optional[Mesh] = None,
              compact: Optional[bool] = None, max_decode_rows: int = 0, members: Optional[lora.Members] = None):
    if compact is None:
        compact = int(max_new_tokens) >= decode_loop.COMPACT_MIN_NEW_TOKENS
    compact = bool(compact)
    mask = np.asarray(prompt_mask).astype(bool)
    stop_ids = tuple(int(s) for s in stop_ids)
    k = 0 if members is None else lora.num_members(members)
    if members is not None:
        temperature, top_p = (_member_values(name, v, k) for name, v in (("temperature", temperature),
                                                                          ("top_p", top_p)))
        for t_k, p_k in zip(temperature, top_p):
            _validate(config, mask, group_size, max_new_tokens, t_k, top_k, p_k, greedy, stop_ids)
    else:
        _validate(config, mask, group_size, max_new_tokens, temperature, top_k, top_p, greedy, stop_ids)
    if not isinstance(max_decode_rows, (int, np.integer)) or max_decode_rows < 0:
        raise ValueError(f"generate: max_decode_rows must be an integer >= 0 (0 = all rows), got {max_decode_rows!r}")
    tokens = np.asarray(prompt_tokens).astype(np.int32)
    if tokens.shape != mask.shape:
        raise ValueError(f"generate: prompt_tokens {tokens.shape} and prompt_mask {mask.shape} differ in shape")
    bad = mask & ((tokens < 0) | (tokens >= config.vocab_size))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"generate: prompt {i} holds token id {tokens[i, j]} outside the vocabulary "
                         f"[0, {config.vocab_size})")
    top_k = int(min(top_k, config.vocab_size))
    use_top_p = bool(np.any(np.asarray(top_p, np.float64) < 1.0))
    fn = _compiled(config, group_size, max_new_tokens, top_k, use_top_p, greedy, stop_ids, pad_id, mesh,
                   compact, max_decode_rows, stats, k)
    if members is None:
        temperature = jnp.float32(1.0 if greedy else temperature)
        top_p = jnp.float32(top_p)
        extra_args = ()
    else:
        temperature = jnp.asarray([1.0] * k if greedy else temperature, jnp.float32)
        top_p = jnp.asarray(top_p, jnp.float32)
        extra_args = (members,)
    p = tokens.shape[0]
    per_member = max(k, 1)
    if mesh is None:
        return _with_stats(fn(params, tokens, mask, key, temperature, top_p, *extra_args), stats,
                           per_member * mask.shape[0] * group_size, 1, compact, max_decode_rows)
    shards = int(np.prod([mesh.shape[a] for a in _data_axes(mesh)]))
    extra = -p % shards
    if extra:  # pad with copies of the last prompt; their rows are dropped below
        tokens = np.concatenate([tokens, np.repeat(tokens[-1:], extra, 0)])
        mask = np.concatenate([mask, np.repeat(mask[-1:], extra, 0)])
    rows = NamedSharding(mesh, PartitionSpec(_data_axes(mesh), None))
    replicated = NamedSharding(mesh, PartitionSpec())
    out = fn(place_params(config, params, mesh), jax.device_put(tokens, rows), jax.device_put(mask, rows),
             jax.device_put(key, replicated), temperature, top_p, *_place(extra_args, replicated))
    rollout = out[0] if stats else out
    if extra and not k:
        rollout = Rollout(*(x[: p * group_size] for x in rollout))
    elif extra:  # each member's rows of the real prompts
        rollout = Rollout(*(x.reshape(per_member, (p + extra) * group_size, *x.shape[1:])[:, : p * group_size]
                            .reshape(per_member * p * group_size, *x.shape[1:]) for x in rollout))
    return _with_stats((rollout, out[1]) if stats else rollout, stats, per_member * (p + extra) * group_size, shards,
                       compact, max_decode_rows)


def _member_values(name: str, values, k: int) -> tuple:
    """One float per member, from a sequence of K values (or one value for all)."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, k)
    if v.size != k:
        raise ValueError(f"generate: {name} must hold one value per member ({k}), got {v.size}")
    return tuple(float(x) for x in v)


def _with_stats(out, stats: bool, rows: int, shards: int, compact: bool, max_decode_rows: int):
    """The rollout, or (rollout, DecodeStats) from the program's (Rollout, decode_loop.Outputs)."""
    if not stats:
        return out
    rollout, loop = out
    b = -(-max_decode_rows // shards) * shards if max_decode_rows > 0 else rows
    sizes = decode_loop.buckets(min(b, rows), shards, compact)
    return rollout, DecodeStats(sizes, np.asarray(loop.steps), int(loop.refilled))
