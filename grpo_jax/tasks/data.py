"""Loading dataset rows through `datasets`: a local .jsonl/.json/.parquet/.csv file, or a Hugging Face hub id.

Bad data is a clear error that names the file (or hub id) and the row: an empty file, a dataset with no rows, a row
missing a required column. Rows are numbered from 0 in file order.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from grpo_jax.tasks.base import EVAL_STREAM, rng

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _local_builder(source: str) -> str | None:
    for suffix, builder in _BUILDERS.items():
        if source.lower().endswith(suffix):
            return builder
    return None


def load_rows(source: str, *, split: str = "train", hub_config: str | None = None,
              cache_dir: str | None = None) -> list[dict[str, Any]]:
    """All rows of a local file (its only split) or of `split` of a hub dataset, as dicts."""
    import datasets  # imported here: only the dataset-backed tasks need it

    if not isinstance(source, str) or not source:
        raise ValueError(f"a dataset source must be a file path or a hub id, got {source!r}")
    builder = _local_builder(source)
    if os.path.exists(source) or builder is not None or source.startswith((".", "/", "~")):
        path = os.path.expanduser(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"dataset file {source} does not exist")
        if builder is None:
            raise ValueError(f"dataset file {source}: unknown format; use one of {', '.join(_BUILDERS)}")
        if os.path.getsize(path) == 0:
            raise ValueError(f"dataset file {source} is empty (no rows)")
        try:
            table = datasets.load_dataset(builder, data_files=path, split="train", cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"could not read dataset file {source}: {type(e).__name__}: {e}") from e
    else:
        try:
            table = datasets.load_dataset(source, hub_config, split=split, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"could not load hub dataset {source!r} (config {hub_config!r}, split {split!r}): "
                f"{type(e).__name__}: {e}. Offline? Pass a local .jsonl/.parquet file instead."
            ) from e
    if len(table) == 0:
        raise ValueError(f"dataset {source} has no rows")
    columns = table.to_dict()
    names = list(columns)
    return [{name: columns[name][i] for name in names} for i in range(len(table))]


def require(rows: list[dict[str, Any]], source: str, checks: dict[str, Callable[[Any], Any]]) -> list[dict[str, Any]]:
    """Check and convert each row's required columns with `checks[column](value)`, which raises ValueError/TypeError
    on a bad value; the error names the row and the file. Returns rows holding only the converted columns."""
    if not rows:
        raise ValueError(f"dataset {source} has no rows")
    out = []
    for i, row in enumerate(rows):
        converted = {}
        for column, check in checks.items():
            if row.get(column) is None:
                have = ", ".join(k for k, v in row.items() if v is not None)
                raise ValueError(f"row {i} of {source} is missing column {column!r} (row has: {have or 'nothing'})")
            try:
                converted[column] = check(row[column])
            except (ValueError, TypeError) as e:
                raise ValueError(f"row {i} of {source}, column {column!r}: {e}") from None
        out.append(converted)
    return out


def split_by_identity(keys: list[Any], eval_size: int, split_seed: int, source: str) -> tuple[list[int], list[int]]:
    """Row indices (train, eval): eval is the first `eval_size` distinct problems in a `split_seed` permutation;
    train is every row whose problem (key) is not in eval (duplicates of an eval problem are dropped)."""
    order = rng(split_seed, EVAL_STREAM).permutation(len(keys))
    eval_keys, eval_idx = set(), []
    for i in order:
        if len(eval_idx) == eval_size:
            break
        if keys[i] not in eval_keys:
            eval_keys.add(keys[i])
            eval_idx.append(int(i))
    if len(eval_idx) < eval_size:
        raise ValueError(f"dataset {source} has {len(eval_keys)} distinct problems, fewer than eval_size={eval_size}")
    return [i for i in range(len(keys)) if keys[i] not in eval_keys], eval_idx

