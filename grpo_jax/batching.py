"""Left-padded, length-bucketed prompt batches for the sampler and the trainer.

Prompts are left-padded so that every row's last prompt token sits in the last column: the sampler reads the
prompt's final hidden state there (`logprobs.encode_prompt`) and the completions follow directly. The padded length
is rounded up to a multiple of `bucket`, so a run with varying prompt lengths compiles a handful of programs (one
per bucket) instead of one per step.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def bucket_length(length: int, bucket: int) -> int:
    """`length` rounded up to a multiple of `bucket` (bucket <= 1: unchanged)."""
    if bucket <= 1:
        return int(length)
    return int(-(-length // bucket) * bucket)


def left_pad(token_lists: Sequence[Sequence[int]], pad_id: int, bucket: int = 16,
             max_len: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (tokens int32 [P, S], mask bool [P, S]), left-padded with `pad_id`.

    S is the longest prompt rounded up to a multiple of `bucket`, capped at `max_len` when given. A prompt longer
    than `max_len` is an error (silently cutting a prompt would change the task), as is an empty list or prompt."""
    if len(token_lists) == 0:
        raise ValueError("left_pad: empty prompt list (need at least one prompt)")
    if max_len is not None and max_len < 1:
        raise ValueError(f"left_pad: max_len must be >= 1, got {max_len}")
    lengths = [len(t) for t in token_lists]
    for i, n in enumerate(lengths):
        if n == 0:
            raise ValueError(f"left_pad: prompt {i} is empty (0 tokens)")
        if max_len is not None and n > max_len:
            raise ValueError(f"left_pad: prompt {i} has {n} tokens, more than max_len={max_len}")
    s = bucket_length(max(lengths), bucket)
    if max_len is not None:
        s = min(s, int(max_len))
    tokens = np.full((len(token_lists), s), pad_id, np.int32)
    mask = np.zeros((len(token_lists), s), bool)
    for i, toks in enumerate(token_lists):
        n = lengths[i]
        tokens[i, s - n:] = np.asarray(toks, np.int32)
        mask[i, s - n:] = True
    return tokens, mask
