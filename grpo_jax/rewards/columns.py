"""Reading TRL-style reward columns: one entry per completion, passed as keyword arguments.

TRL calls `fn(prompts=..., completions=..., completion_ids=..., **dataset_columns)` with every column a list aligned
with `completions`. For hand calls, a single value (e.g. `target=24`, or `nums=[1, 2, 3]` for nums) is broadcast to
every completion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_SEQUENCES = (list, tuple, np.ndarray)


def _missing(reward: str, name: str) -> KeyError:
    return KeyError(f"reward {reward!r} needs the column {name!r} (one entry per completion)")


def per_completion(columns: dict[str, Any], name: str, n: int, reward: str) -> list[Any]:
    """Column `name` as a list of n values: an aligned list, or a single non-list value broadcast."""
    if name not in columns or columns[name] is None:
        raise _missing(reward, name)
    value = columns[name]
    if not isinstance(value, _SEQUENCES):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"reward {reward!r}: column {name!r} has {len(value)} entries for {n} completions")
    return list(value)


def per_completion_lists(columns: dict[str, Any], name: str, n: int, reward: str) -> list[Any]:
    """A column whose entries are lists (Countdown's `nums`): aligned list of lists, or one flat list broadcast."""
    if name not in columns or columns[name] is None:
        raise _missing(reward, name)
    value = columns[name]
    if isinstance(value, _SEQUENCES) and len(value) and not isinstance(value[0], _SEQUENCES):
        return [list(value)] * n
    return per_completion(columns, name, n, reward)


def integer(value: Any, what: str) -> int:
    """An integral number (int, numpy int, 3.0) as int; ValueError naming `what` otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if not np.isfinite(float(value)) or float(value) != int(value):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def integers(values: Any, what: str) -> list[int]:
    """A list of integral numbers as ints; ValueError naming `what` otherwise."""
    if not isinstance(values, _SEQUENCES):
        raise ValueError(f"{what} must be a list of integers, got {values!r}")
    return [integer(v, f"each of {what}") for v in values]
