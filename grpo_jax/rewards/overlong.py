"""DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13).

With L_max = `max_length` and L_cache = `buffer_length`, for a completion of |y| tokens:

    R_length(y) = 0                               if |y| <= L_max - L_cache
                = ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
                = -1                              if |y| > L_max

Lengths are token counts from the column `completion_lengths` (the runner passes them) or TRL's `completion_ids`;
without either, whitespace-separated words stand in for tokens.
"""

from __future__ import annotations

import numbers

from grpo_jax.rewards.columns import per_completion
from grpo_jax.rewards.extract import completion_text
from grpo_jax.rewards.registry import REWARDS


def overlong_penalty(length: int, max_length: int, buffer_length: int) -> float:
    """DAPO eq. 13 for one completion of `length` tokens."""
    start = max_length - buffer_length
    if length <= start:
        return 0.0
    if length <= max_length:
        return (start - length) / buffer_length
    return -1.0


def _lengths(completions, columns) -> list[int]:
    n = len(completions)
    if columns.get("completion_lengths") is not None:
        lengths = per_completion(columns, "completion_lengths", n, "overlong")
    elif columns.get("completion_ids") is not None:
        lengths = [len(ids) for ids in per_completion(columns, "completion_ids", n, "overlong")]
    else:
        lengths = [len(completion_text(c).split()) for c in completions]
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
            raise ValueError(f"overlong: completion lengths must be non-negative integers, got {length!r}")
    return [int(length) for length in lengths]


@REWARDS.register("overlong")
def overlong_factory(max_length: int = 1024, buffer_length: int = 256):
    """DAPO soft overlong penalty in [-1, 0]; set max_length to the rollout's max_new_tokens."""
    for name, value in (("max_length", max_length), ("buffer_length", buffer_length)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"overlong: {name} must be a positive integer, got {value!r}")
    if buffer_length > max_length:
        raise ValueError(f"overlong: buffer_length ({buffer_length}) must not exceed max_length ({max_length})")

    def overlong(completions, **columns):
        return [overlong_penalty(length, max_length, buffer_length) for length in _lengths(completions, columns)]

    return overlong
