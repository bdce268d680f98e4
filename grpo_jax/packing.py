"""Packed completions: the train step computes the tokens a rollout has, not N rows x its longest completion.

A micro-batch holds whole prompt groups: rows [rows, T] (p-major, row = p * G + g), completion j of row r at
column j, mask 0 after its length. Packing lays the completions of each prompt group end to end into R <= rows
packed rows of the same width T (first-fit by decreasing length). A packed row holds completions of ONE prompt
only, so each packed row reads exactly one prompt's keys/values and the prompt is still run once per group; a
group's completions may span several packed rows. Inside a packed row each completion (a *segment*) attends
causally to itself and to its prompt, with positions continuing from the prompt (token j of a completion at
position prompt_length + j), so every hidden state, and hence every log-prob, entropy and KL term, is the padded
layout's (equal up to float32 rounding of the different matrix shapes).

The plan is made on the host from the completion lengths (`plan`), before the jitted step, as three int32 arrays:

  source [M, R, T]   flat index (row * T + column) into the micro-batch's completions of each packed token, -1 on
                     the packed rows' unused tail and on padding rows
  prompt [M, R]      the micro-batch-local prompt of each packed row (0 on padding rows)
  unpack [N, T]      for row n (in the batch's own p-major order) and column j < its length: the flat index
                     (packed row * T + column) of its token in its micro-batch's packed grid; 0 after its length

Per-token results are computed in the packed layout [R, T] and gathered back to [rows, T] (`unpack`), where the
loss (`losses.policy_loss`) reads them exactly as in the padded layout: every aggregation's (sum, denominator),
GSPO's sequence ratios, masks and micro-batching are unchanged by construction. The gradient flows back through
the gathers. R is rounded up on a ladder of at most `ROW_BUCKETS` sizes (multiples of the data shards), so a run
compiles a handful of programs per width; compute and memory follow the total completion tokens. With
`geometric` (the train step's optim.skip_zero_advantage, where R ranges from one row to all) the ladder is that
step times a power of two: at most log2(ROW_BUCKETS) + 1 sizes, each at most twice the rows needed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ROW_BUCKETS = 8  # packed-row counts of a micro-batch are rounded up to a multiple of ceil(rows / ROW_BUCKETS)
KEYS = ("pack_source", "pack_prompt", "pack_unpack")  # the plan's arrays in the train step's batch


class Plan(NamedTuple):
    """Host-side plan of a whole step (numpy), see the module docstring."""
    source: np.ndarray   # int32 [M, R, T]
    prompt: np.ndarray   # int32 [M, R]
    unpack: np.ndarray   # int32 [N, T]

    @property
    def tokens_computed(self) -> int:
        """Token positions the packed step computes per pass (padding included): M * R * T."""
        return int(self.source.size)


def lengths_from_mask(completion_mask) -> np.ndarray:
    """int [N]: one past each row's last masked-in column (0 for an all-zero row)."""
    m = np.asarray(completion_mask) > 0
    t = m.shape[1]
    last = t - np.argmax(m[:, ::-1], axis=1)
    return np.where(m.any(axis=1), last, 0).astype(np.int64)


def micro_batch_rows(x: np.ndarray, num_micro: int, group_size: int) -> np.ndarray:
    """[P * G, ...] -> [M, P / M * G, ...]: micro-batch m holds prompts m, M + m, 2M + m, ... (the train step's
    split; see train_step._split)."""
    prompts = x.shape[0] // group_size
    y = x.reshape((prompts // num_micro, num_micro, group_size) + x.shape[1:])
    return np.swapaxes(y, 0, 1).reshape((num_micro, (prompts // num_micro) * group_size) + x.shape[1:])


def _micro_batch_order(n: int, num_micro: int, group_size: int) -> np.ndarray:
    """int [M, rows]: the batch row of each micro-batch row."""
    return micro_batch_rows(np.arange(n), num_micro, group_size)


def _bins(lengths: np.ndarray, width: int) -> list:
    """First-fit decreasing: lists of (completion index, start column) per packed row; empty completions none."""
    rows, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        n = int(lengths[i])
        if n == 0:
            continue
        for b, space in enumerate(free):
            if space >= n:
                rows[b].append((i, width - space))
                free[b] -= n
                break
        else:
            rows.append([(i, 0)])
            free.append(width - n)
    return rows


def bucket_rows(needed: int, rows: int, multiple: int, geometric: bool = False) -> int:
    """Packed rows to allocate: `needed` rounded up to a multiple of ceil(rows / ROW_BUCKETS) (itself a multiple of
    `multiple`, the data shards) -- with `geometric` to that step times a power of two --, at most `rows` (the
    padded layout's, which always suffices), at least one step."""
    step = -(-rows // ROW_BUCKETS)
    step = -(-step // multiple) * multiple
    units = max(1, -(-needed // step))
    if geometric:
        units = 1 << (units - 1).bit_length()
    return int(min(rows, units * step))


def plan(lengths, group_size: int, num_micro: int, width: int, multiple: int = 1, min_rows: int = 0,
         geometric: bool = False) -> Plan:
    """The packing plan of a step: `lengths` [N] completion lengths (tokens to compute per row, <= width), rows
    p-major in groups of `group_size`, split into `num_micro` micro-batches as the train step splits them; packed
    rows of `width` columns, their count per micro-batch a multiple of `multiple` and at least `min_rows` (more
    padding rows, so that plans of equal R stack, e.g. a population's; at most the padded layout's rows);
    `geometric`: R on the power-of-two ladder (`bucket_rows`)."""
    lengths = np.asarray(lengths, np.int64)
    n = lengths.shape[0]
    if n % group_size or (n // group_size) % num_micro:
        raise ValueError(f"packing: {n} rows do not split into groups of {group_size} and {num_micro} micro-batches")
    if lengths.size and (lengths.min() < 0 or lengths.max() > width):
        raise ValueError(f"packing: completion lengths must lie in [0, {width}], got [{lengths.min()}, "
                         f"{lengths.max()}]")
    order = _micro_batch_order(n, num_micro, group_size)        # [M, rows]
    rows = order.shape[1]
    layouts = []
    for m in range(num_micro):
        packed = []  # (local prompt, [(local row, start column), ...]) per packed row
        for p in range(rows // group_size):
            local = np.arange(p * group_size, (p + 1) * group_size)
            for segs in _bins(lengths[order[m, local]], width):
                packed.append((p, [(int(local[i]), start) for i, start in segs]))
        layouts.append(packed)
    r = bucket_rows(max(len(x) for x in layouts), rows, multiple, geometric)
    if min_rows:
        if min_rows > rows or min_rows % multiple:
            raise ValueError(f"packing: min_rows = {min_rows} must be at most the {rows} rows of a micro-batch and a "
                             f"multiple of {multiple}")
        r = max(r, int(min_rows))
    source = np.full((num_micro, r, width), -1, np.int32)
    prompt = np.zeros((num_micro, r), np.int32)
    unpack = np.zeros((n, width), np.int32)
    for m, packed in enumerate(layouts):
        for b, (p, segs) in enumerate(packed):
            prompt[m, b] = p
            for local_row, start in segs:
                length = int(lengths[order[m, local_row]])
                cols = np.arange(length)
                source[m, b, start:start + length] = local_row * width + cols
                unpack[order[m, local_row], :length] = b * width + start + cols
    return Plan(source, prompt, unpack)


# ---------------------------------------------------------------------------------------------- in the program


class Layout(NamedTuple):
    """A micro-batch's plan inside the jitted step: source [R, T], prompt [R], unpack [rows, T] (int32)."""
    source: jax.Array
    prompt: jax.Array
    unpack: jax.Array

    def tokens(self, completions: jax.Array) -> jax.Array:
        """The packed tokens [R, T] of completions [rows, T] (0 on unused slots)."""
        valid = self.source >= 0
        return jnp.where(valid, jnp.take(completions.reshape(-1), jnp.maximum(self.source, 0)), 0)

    def offsets(self, width: int) -> jax.Array:
        """int32 [R, T]: each packed token's column in its completion (0 on unused slots)."""
        return jnp.where(self.source >= 0, self.source % width, 0)

    def own_mask(self, width: int) -> jax.Array:
        """bool [R, T, T]: token i reads token j <= i of the same completion."""
        segment = jnp.where(self.source >= 0, self.source // width, -1)
        same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)
        return same & jnp.tril(jnp.ones((width, width), bool))[None]

    def unpacked(self, x: jax.Array) -> jax.Array:
        """Packed per-token values [R, T] -> the micro-batch's rows [rows, T] (arbitrary after a row's length)."""
        return jnp.take(x.reshape(-1), self.unpack)
