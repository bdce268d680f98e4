"""The jitted engine's decode loop: one token per step for every running row, inside the one compiled program.

The compiled program (grpo_jax/rollout/program.py) prefills the prompts and draws every row's token 0; `decode`
then runs the rest. The loop works on a decode batch of B *slots*; each slot holds one output row (`Slots.row`,
p-major row = p * G + g) and its own KV cache. Every step feeds each slot's last token (`models.decode_step`),
draws the next one and scatters it to (row, the row's own step) of the [N, T] outputs. Rows never share state, so
which slot a row sits in, and next to which other rows, changes nothing it computes: row r at its own step t draws
with fold_in(row_keys[r], t) (the program's row key; population members' rows also carry their member's adapters,
`Problem.adapters`, looked up by row, so reordering never mixes members).

Three ways the loop avoids paying for rows that are done, none with a host round-trip:

  * cache phases (`cache_phases`): the loop's caches start at 64 slots and double, so an early step reads at most
    twice the slots written so far; a phase's loop exits when its cache is full and the next phase pads it;
  * compaction (`buckets`): the batch sizes form a ladder B, ~B/2, ~B/4, ... (multiples of the data shards, no
    smaller than MIN_BUCKET rows); the batch moves down the ladder once at most the next size of rows runs (half
    the batch or more has stopped), and the running slots -- rows, last tokens, cache rows, and their prompts'
    keys/values, one copy per slot since the rows no longer come in whole groups -- are gathered into it;
  * refill (max_decode_rows = B < N rows): the rows that still need decoding queue up in row order; whenever a
    slot's row ends and rows wait, the slot takes the next one: its token 0 was drawn with all N rows' at the
    start, its prompt keys/values are gathered from the group's shared prefill, and its cache is a ring
    (`KVCache.first`: the earlier occupant's slots are masked), so a slot is reused without clearing it. A
    refilled slot can start at any step, so the refill loop uses one cache of T - 1 slots (no phases); once no
    row waits, compaction shrinks the batch as above.

Program structure (all static Python around `lax` control flow, traced once):

    all rows at once:  run_phase(0) = ladder(phase 0); cond(rows run) -> grow cache, run_phase(1) = ...
    refill:            ladder with the refill queue on its first segment, one ring cache, no phases
    ladder(phase):     segment 0 on the whole batch (while > sizes[1] rows run, or rows wait, and the cache has
                       room), then for k = 1, 2, ...: cond(more than sizes[k + 1] rows run and room) ->
                       gather the running slots into sizes[k] slots, while_loop, scatter them back

Segments run in sequence because after segment 0 (no row waits) the running count only falls, so the batch
between segments keeps one shape (all B slots) and each (phase, bucket) loop is traced once: a rollout compiles
len(phases) * len(buckets) loop bodies at most. A compaction copies the running rows' caches twice (gather,
scatter back) and a phase change pads all B rows' caches: per compaction, never per token.

Rows whose token 0 is already a stop token never take a slot in a compacted or refilled batch.

Invariants: the output rows, their tokens, log-probs, lengths and stop flags do not depend on B, on compaction
or on the number of devices (up to float rounding of batched matmuls); a slot that is not `live` writes
nothing; every live row's cache holds exactly its own tokens 0 .. t - 1 at positions prompt_length + j.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from grpo_jax import partitioning
from grpo_jax.models import decoder
from grpo_jax.models.config import ModelConfig

MIN_BUCKET = 8            # the smallest compacted batch (rows); never below the number of data shards
# Settings.compact = None compacts only from this many new tokens on: each rung of the ladder is one more compiled
# loop body, which a rollout of fewer decode steps does not win back (compacting can skip at most half of its steps;
# docs/performance.md has the compile-time measurement).
COMPACT_MIN_NEW_TOKENS = 64
_FIRST_PHASE_SLOTS = 64   # cache slots of the decode loop's first phase (see `cache_phases`)


def cache_phases(max_new_tokens: int, first: int = _FIRST_PHASE_SLOTS) -> tuple:
    """Cache capacities (slots) of the decode loop's phases: `first`, doubling, then all T - 1 slots (the last token
    is never fed back), each a multiple of 16 (whole, aligned slot rows).

    Every step reads each row's whole own cache, so with one cache of T - 1 slots the step at t would read T - 1
    slots where t are written. Phase k runs the steps that write slots [phases[k-1], phases[k]) with a cache of
    phases[k] slots (the previous one padded once), so a step reads at most twice the slots it needs, and a run
    that ends early never allocates the larger caches. Each phase is one more compiled loop body; a last phase
    shorter than a quarter of the one before is merged into it. (docs/performance.md: what this saves.)"""
    def up16(x):
        return -(-x // 16) * 16
    total = up16(max(max_new_tokens - 1, 1))
    caps = []
    c = min(up16(first), total)
    while c < total:
        caps.append(c)
        c *= 2
    if caps and total - caps[-1] < caps[-1] // 4:
        caps.pop()
    return tuple(caps) + (total,)


def buckets(rows: int, shards: int = 1, compact: bool = True, floor: int = MIN_BUCKET) -> tuple:
    """Decode-batch sizes of the compaction ladder for a batch of `rows` slots: rows, then halving (rounded up to
    a multiple of `shards`) while the half is at least max(floor, shards) and smaller than the size before.
    (rows,) without compaction. The loop moves to size k + 1 once at most that many rows are running."""
    def up(x, m):
        return -(-x // m) * m
    sizes = [rows]
    while compact:
        half = up(up(sizes[-1], 2) // 2, shards)
        if half < max(floor, shards) or half >= sizes[-1]:
            break
        sizes.append(half)
    return tuple(sizes)


def row_uniforms(row_keys: jax.Array, steps) -> jax.Array:
    """One uniform per row for its own decode step: fold_in(row_key, step), steps a scalar or int32 [B]."""
    steps = jnp.broadcast_to(jnp.asarray(steps, jnp.int32), row_keys.shape[:1])
    return jax.vmap(lambda k, t: jax.random.uniform(jax.random.fold_in(k, t), (), jnp.float32))(row_keys, steps)


def is_stop(tok: jax.Array, stop_ids: tuple) -> jax.Array:
    if not stop_ids:
        return jnp.zeros(tok.shape, bool)
    return jnp.any(tok[:, None] == jnp.asarray(stop_ids, jnp.int32)[None, :], axis=-1)


class Slots(NamedTuple):
    """The decode batch: B slots, each holding one output row."""
    row: jax.Array                    # int32 [B]: the output row held (meaningful where live)
    prev: jax.Array                   # int32 [B]: the row's last drawn token, fed at the next step
    live: jax.Array                   # bool [B]: the row is still generating (no stop token, fewer than T tokens)
    cache: decoder.KVCache            # the rows' own keys/values
    prefix: Optional[decoder.PrefixKV]  # per-slot prompt keys/values; None: the shared prefix, slot b = row b


class Outputs(NamedTuple):
    """What the loop writes: the [N, T] rollout, per-row results, and counters of the work done."""
    tokens: jax.Array    # int32 [N, T]
    logps: jax.Array     # float32 [N, T]
    lengths: jax.Array   # int32 [N]
    stopped: jax.Array   # bool [N]: the row emitted a stop token
    steps: jax.Array     # int32 [len(buckets)]: decode steps run at each batch size of the ladder
    refilled: jax.Array  # int32: rows that took a slot freed by another row


class Problem(NamedTuple):
    """The fixed inputs of a decode loop (traced arrays and static settings)."""
    config: ModelConfig
    params: dict
    prefix: decoder.PrefixKV   # the P prompts' keys/values (`models.for_decoding` layout)
    start: jax.Array           # int32 [N]: each row's prompt length (its token j sits at position start + j)
    tok0: jax.Array            # int32 [N]: every row's token 0
    row_keys: jax.Array        # [N] PRNG keys (the sampler's: fold_in(key, row within its member))
    draw: Callable             # (logits [B, V], uniforms [B], rows int32 [B]) -> (tokens [B], logps [B])
    group_size: int
    max_new_tokens: int
    stop_ids: tuple
    constrain: Callable        # (array, row axis) -> array: keeps the rows split over the mesh's data axes
    # None, or population members' adapters (`lora.MemberAdapters`, its `member` [N] each output row's member):
    # a slot decodes with its row's member's adapters, so reordering rows (compaction, refill) changes nothing
    adapters: Optional[object] = None


# Logical names of the loop's key/value buffers (stacked [L, ...]; per-layer buffers drop 'cache_layers').
_PREFIX_AXES = ("cache_layers", "cache_batch", "cache_length", "cache_kv_heads", "cache_head_dim")  # [L, P, S, Hkv, hd]


def _constrain_slots(pb: Problem, s: Slots) -> Slots:
    """The loop carry's rows kept on the mesh's data axes; with a rules table active (the sampler's), the key/value
    buffers are constrained by their logical names, so their KV heads keep the table's split too."""
    c = pb.constrain
    by_name = partitioning.active_mesh() is not None

    def buffers(tree, axis_of, names):
        if by_name:
            return jax.tree.map(lambda a: partitioning.constrain(a, names[-a.ndim:]), tree)
        return jax.tree.map(lambda a: c(a, axis_of), tree)
    ax = 0 if isinstance(s.cache.k, tuple) else 1
    cache = s.cache._replace(k=buffers(s.cache.k, ax, decoder.KEY_CACHE_AXES),
                             v=buffers(s.cache.v, ax, decoder.CACHE_AXES), start=c(s.cache.start, 0),
                             first=None if s.cache.first is None else c(s.cache.first, 0))
    prefix = s.prefix
    if prefix is not None:
        prefix = prefix._replace(k=buffers(prefix.k, ax, _PREFIX_AXES), v=buffers(prefix.v, ax, _PREFIX_AXES),
                                 mask=c(prefix.mask, 0), positions=c(prefix.positions, 0))
    return Slots(c(s.row, 0), c(s.prev, 0), c(s.live, 0), cache, prefix)


def _own_step(cache: decoder.KVCache, rows: int) -> jax.Array:
    """int32 [B]: the own step t of each slot's row at the next decode step (it feeds token t - 1, draws t)."""
    written = cache.index if cache.first is None else cache.index - cache.first
    return jnp.broadcast_to(written + 1, (rows,)).astype(jnp.int32)


def _step(pb: Problem, k: int, slots: Slots, out: Outputs) -> tuple[Slots, Outputs]:
    """One decode step of the batch `slots` (ladder size k): write each live row's next token."""
    n, t_max = pb.tok0.shape[0], pb.max_new_tokens
    b = slots.row.shape[0]
    t = _own_step(slots.cache, b)
    prefix = pb.prefix if slots.prefix is None else slots.prefix
    prev = jnp.where(slots.live, slots.prev, 0)  # idle slots feed a valid id (pad_id may be outside the vocab)
    rows = jnp.clip(slots.row, 0, n - 1)
    adapters = None if pb.adapters is None else pb.adapters._replace(member=pb.adapters.member[rows])
    hidden, cache = decoder.decode_step(pb.config, pb.params, prev, prefix, slots.cache, adapters)
    tok, lp = pb.draw(decoder.unembed(pb.config, pb.params, hidden), row_uniforms(pb.row_keys[rows], t), rows)
    stop = is_stop(tok, pb.stop_ids)
    w = jnp.where(slots.live, slots.row, n)  # row n is out of bounds: the write is dropped
    out = out._replace(tokens=pb.constrain(out.tokens.at[w, t].set(tok, mode="drop"), 0),
                       logps=pb.constrain(out.logps.at[w, t].set(lp, mode="drop"), 0),
                       lengths=pb.constrain(out.lengths.at[w].set(t + 1, mode="drop"), 0),
                       stopped=pb.constrain(out.stopped.at[w].set(stop, mode="drop"), 0),
                       steps=out.steps.at[k].add(1))
    live = slots.live & ~stop & (t + 1 < t_max)
    return slots._replace(prev=tok, live=live, cache=cache), out


def _where_rows(take: jax.Array, new, old, axis: int):
    shape = [1] * old.ndim
    shape[axis] = take.shape[0]
    return jnp.where(take.reshape(shape), new, old)


class Queue(NamedTuple):
    """Rows waiting for a slot (refill): order[next:count] in row order."""
    order: jax.Array  # int32 [N]: the rows that need decoding first (token 0 no stop), then the others
    count: jax.Array  # int32: how many rows need decoding
    next: jax.Array   # int32: the first row of `order` not yet given a slot


def _refill(pb: Problem, slots: Slots, out: Outputs, queue: Queue):
    """Free slots take the next waiting rows (in slot order): row, token 0, prompt start and keys/values, and a
    ring start `first` = the index their token 0 is written at (the next step's)."""
    n, g = pb.tok0.shape[0], pb.group_size
    free = ~slots.live
    pos = queue.next + jnp.cumsum(free.astype(jnp.int32)) - 1
    take = free & (pos < queue.count)
    new_row = queue.order[jnp.clip(pos, 0, n - 1)]

    def fill(s: Slots) -> Slots:
        cache = s.cache._replace(start=jnp.where(take, pb.start[new_row], s.cache.start),
                                 first=jnp.where(take, s.cache.index, s.cache.first))
        fresh = decoder.prefix_rows(pb.prefix, new_row // g)
        ax = 0 if isinstance(s.prefix.k, tuple) else 1
        prefix = decoder.PrefixKV(
            jax.tree.map(lambda a, o: _where_rows(take, a, o, ax), fresh.k, s.prefix.k),
            jax.tree.map(lambda a, o: _where_rows(take, a, o, ax), fresh.v, s.prefix.v),
            _where_rows(take, fresh.mask, s.prefix.mask, 0), _where_rows(take, fresh.positions, s.prefix.positions, 0))
        return Slots(jnp.where(take, new_row, s.row), jnp.where(take, pb.tok0[new_row], s.prev), s.live | take,
                     cache, prefix)

    taken = jnp.sum(take.astype(jnp.int32))
    slots = jax.lax.cond(taken > 0, fill, lambda s: s, slots)
    return slots, out._replace(refilled=out.refilled + taken), queue._replace(next=queue.next + taken)


def _segment(pb: Problem, sizes: tuple, k: int, slots: Slots, out: Outputs, limit: Optional[int],
             queue: Optional[Queue] = None):
    """Decode the batch `slots` of size sizes[k] while rows run, the cache has room (index < limit) and more than
    sizes[k + 1] rows run (or rows wait for a slot, with `queue`). Returns (slots, out, queue)."""
    smaller = sizes[k + 1] if k + 1 < len(sizes) else 0

    def cond(carry):
        s, _, q = carry
        running = jnp.sum(s.live.astype(jnp.int32))
        more = running > smaller
        if q is not None:
            more = more | (q.next < q.count)
        ok = (running > 0) & more
        if limit is not None:
            ok = ok & (s.cache.index < limit)
        return ok

    def body(carry):
        s, o, q = carry
        s, o = _step(pb, k, s, o)
        if q is not None:
            s, o, q = _refill(pb, s, o, q)
        return _constrain_slots(pb, s), o, q

    return jax.lax.while_loop(cond, body, (_constrain_slots(pb, slots), out, queue))


def _compacted_segment(pb: Problem, sizes: tuple, k: int, slots: Slots, out: Outputs, limit: Optional[int]):
    """Bucket k >= 1: if fewer than sizes[k] but more than sizes[k + 1] rows run (and the cache has room), gather
    the running slots into a batch of sizes[k], decode it (`_segment`) and scatter it back into `slots`."""
    b, smaller = sizes[k], sizes[k + 1] if k + 1 < len(sizes) else 0
    g = pb.group_size
    n = pb.tok0.shape[0]

    def run(s: Slots, o: Outputs):
        sel = jnp.argsort((~s.live).astype(jnp.int32), stable=True)[:b]  # the running slots first
        rows = s.row[sel]
        sub = Slots(rows, s.prev[sel], s.live[sel], decoder.take_rows(s.cache, sel),
                    decoder.prefix_rows(pb.prefix, jnp.clip(rows, 0, n - 1) // g))
        sub, o, _ = _segment(pb, sizes, k, sub, o, limit)
        back = s._replace(prev=s.prev.at[sel].set(sub.prev), live=s.live.at[sel].set(sub.live),
                          cache=decoder.put_rows(s.cache, sel, sub.cache))
        return _constrain_slots(pb, back), o

    running = jnp.sum(slots.live.astype(jnp.int32))
    go = (running > smaller) & (running > 0)
    if limit is not None:
        go = go & (slots.cache.index < limit)
    return jax.lax.cond(go, run, lambda s, o: (s, o), slots, out)


def _ladder(pb: Problem, sizes: tuple, slots: Slots, out: Outputs, limit: Optional[int],
            queue: Optional[Queue] = None):
    """Every bucket of the ladder in turn (sequential: the running count only falls): (slots, out)."""
    slots, out, _ = _segment(pb, sizes, 0, slots, out, limit, queue)
    for k in range(1, len(sizes)):
        slots, out = _compacted_segment(pb, sizes, k, slots, out, limit)
    return slots, out


def _initial_outputs(pb: Problem, lp0: jax.Array, pad_id: int, n_buckets: int) -> Outputs:
    n, t_max = pb.tok0.shape[0], pb.max_new_tokens
    tokens = jnp.full((n, t_max), pad_id, jnp.int32).at[:, 0].set(pb.tok0)
    logps = jnp.zeros((n, t_max), jnp.float32).at[:, 0].set(lp0)
    return Outputs(pb.constrain(tokens, 0), pb.constrain(logps, 0), jnp.ones((n,), jnp.int32),
                   is_stop(pb.tok0, pb.stop_ids), jnp.zeros((n_buckets,), jnp.int32), jnp.int32(0))


def decode(pb: Problem, lp0: jax.Array, *, pad_id: int, shards: int, compact: bool, max_decode_rows: int) -> Outputs:
    """Tokens 1 .. T - 1 of all N rows (token 0 and its log-prob `lp0` given), see the module docstring.

    max_decode_rows: the decode batch (rounded up to a multiple of `shards`); 0 or >= N: all rows at once, with
    cache phases. compact: shrink the batch along `buckets` as rows finish."""
    n, t_max, config = pb.tok0.shape[0], pb.max_new_tokens, pb.config
    live0 = ~is_stop(pb.tok0, pb.stop_ids) & (t_max > 1)
    b = -(-max_decode_rows // shards) * shards if max_decode_rows > 0 else n
    sizes = buckets(min(b, n), shards, compact)
    out = _initial_outputs(pb, lp0, pad_id, len(sizes))

    if b < n:  # refill: B slots fed from the queue of rows that need decoding, one ring cache of T - 1 slots
        order = jnp.argsort((~live0).astype(jnp.int32), stable=True).astype(jnp.int32)
        count = jnp.sum(live0.astype(jnp.int32))
        rows = order[:b]
        cache = decoder.new_cache(config, b, cache_phases(t_max)[-1], pb.start[rows])
        slots = Slots(rows, pb.tok0[rows], jnp.arange(b) < count, cache._replace(first=jnp.zeros((b,), jnp.int32)),
                      decoder.prefix_rows(pb.prefix, rows // pb.group_size))
        return _ladder(pb, sizes, slots, out, None, Queue(order, count, jnp.minimum(count, b)))[1]

    phases = cache_phases(t_max)

    def run_phase(p: int, slots: Slots, out: Outputs) -> Outputs:
        """Phase p: the ladder with a cache of phases[p] slots (the previous phase's, padded), then -- unless every
        row is done -- phase p + 1."""
        slots = slots._replace(cache=decoder.grow_cache(slots.cache, phases[p]) if p else slots.cache)
        slots, out = _ladder(pb, sizes, slots, out, phases[p])
        if p + 1 == len(phases):
            return out
        return jax.lax.cond(jnp.any(slots.live), functools.partial(run_phase, p + 1), lambda s, o: o, slots, out)

    cache = decoder.new_cache(config, n, phases[0], pb.start)
    slots = Slots(jnp.arange(n, dtype=jnp.int32), pb.tok0, live0, cache, None)
    return run_phase(0, slots, out)
