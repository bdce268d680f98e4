"""Weighted sum of named rewards, robust to a reward that raises.

`combine({"format": 0.5, "countdown": 1.0})` returns `combined(completions, **columns)` ->
`(total [N] float32, {name: [N] float32}, {name: number of completions whose reward raised})`.
Each reward is first called on the whole batch; if that raises (or returns something that is not N numbers), it is
called again one completion at a time, so one bad completion scores 0.0 and is counted instead of zeroing the batch.
A None (TRL's "not applicable") scores 0.0 and is not an error; a NaN or infinite reward is an error.
Per-reward arrays are unweighted, as TRL logs `rewards/<name>/mean`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

import numpy as np

from grpo_jax.rewards.registry import REWARDS

logger = logging.getLogger(__name__)


class _BadOutput(Exception):
    pass


def _as_floats(output: Any, n: int) -> list[float | None]:
    """Reward output as n floats (None where not finite); raises _BadOutput for a wrong shape or type."""
    if not isinstance(output, (list, tuple, np.ndarray)) or len(output) != n:
        raise _BadOutput(f"expected {n} rewards, got {output!r:.200}")
    values = []
    for v in output:
        if v is None:
            values.append(0.0)
            continue
        if isinstance(v, (bool, np.bool_)):
            v = float(v)
        try:
            v = float(v)
        except (TypeError, ValueError) as e:
            raise _BadOutput(f"reward {v!r:.100} is not a number") from e
        values.append(v if math.isfinite(v) else None)
    return values


def _one_column_entry(value: Any, i: int, n: int) -> Any:
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == n:
        return value[i : i + 1]
    return value


def _score(name: str, fn: Callable, completions: list, columns: dict, warned: set) -> tuple[np.ndarray, int]:
    n = len(completions)
    try:
        values = _as_floats(fn(completions, **columns), n)
    except Exception:  # noqa: BLE001 - any failure of user/model-facing code falls back to per-completion calls
        values = []
        for i in range(n):
            row = {key: _one_column_entry(value, i, n) for key, value in columns.items()}
            try:
                values.extend(_as_floats(fn(completions[i : i + 1], **row), 1))
            except Exception as e:  # noqa: BLE001
                values.append(None)
                if name not in warned:
                    warned.add(name)
                    logger.warning("reward %r raised on completion %d (scored 0.0): %r", name, i, e)
    errors = sum(v is None for v in values)
    return np.asarray([0.0 if v is None else v for v in values], dtype=np.float32), errors


def combine(weights: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None) -> Callable:
    """Build `combined(completions, **columns) -> (total, per_reward, num_errors)` from name -> weight.

    `options` maps a reward name to the options of its factory, e.g. {"overlong": {"max_length": 512}}.
    """
    weights = dict(weights.items())  # also accepts an ml_collections ConfigDict
    options = {name: dict(opts.items()) for name, opts in (options or {}).items()}
    unused = sorted(set(options) - set(weights))
    if unused:
        raise ValueError(f"reward options given for {unused}, which are not in the weights {sorted(weights)}")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"reward weight for {name!r} must be a finite number, got {weight!r}")
    functions = {name: REWARDS.get(name, **options.get(name, {})) for name in weights}
    warned: set[str] = set()

    def combined(completions, **columns):
        completions = list(completions)
        total = np.zeros(len(completions), dtype=np.float32)
        per_reward, num_errors = {}, {}
        for name, fn in functions.items():
            per_reward[name], num_errors[name] = _score(name, fn, completions, columns, warned)
            total += np.float32(weights[name]) * per_reward[name]
        return total, per_reward, num_errors

    return combined
