"""The lineage file DIR/population.jsonl: one JSON row per member per generation, append-only.

A row: {'generation', 'step', 'member', 'parent', 'fitness', 'parent_fitness', 'hyperparameters', 'mutation'}.
Generation 0 is the initial population (`initial_rows`: parent, fitness None; mutation {'kind': 'init', ...});
generation g >= 1 is the g-th evolution, at training step `step`: `member` is the slot, `parent` the member it
copied (itself when kept), `fitness` the slot's own measured fitness before selection, `hyperparameters` its
values after the evolution, `mutation` what was applied ({'kind': 'elite' | 'kept' | 'none' | 'hyperparameter',
...}, see mutation.py). Non-finite fitness values are written as None (JSON has no NaN).

Crash safety: `append_rows` writes a generation's rows as one block of whole lines, flushes and fsyncs; a crash
mid-write can leave only a torn last line, which `read_lineage` ignores and the next `append_rows` cuts off before
writing, so the file always reads as whole rows. Resume: `truncate_lineage(workdir, generation)` keeps the rows of
generations <= the checkpoint's (the checkpoint holds the number of evolutions applied to the population it saved)
and drops later ones, atomically (a temporary file, then os.replace), so a resumed run's file equals an
uninterrupted one's.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

LINEAGE_FILE = "population.jsonl"


def lineage_path(workdir: str) -> str:
    return os.path.join(workdir, LINEAGE_FILE)


def _finite(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(value):
    """Python scalars for JSON (numpy ints / floats from the selection arrays)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def row(generation: int, step: int, member: int, parent, fitness, parent_fitness, hyperparameters: dict,
        mutation: dict) -> dict:
    """One lineage row (JSON-able)."""
    return {"generation": int(generation), "step": int(step), "member": int(member),
            "parent": None if parent is None else int(parent), "fitness": _finite(fitness),
            "parent_fitness": _finite(parent_fitness), "hyperparameters": _plain(hyperparameters),
            "mutation": _plain(mutation)}


def initial_rows(hyperparameters: list, *, init: str, step: int = 0) -> list[dict]:
    """Generation 0: each member's starting hyperparameters."""
    return [row(0, step, j, None, None, None, h, {"kind": "init", "init": init})
            for j, h in enumerate(hyperparameters)]


def _cut_torn_tail(path: str) -> None:
    """Drop a last line without its newline (a write a crash interrupted)."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


def append_rows(workdir: str, rows: list[dict]) -> None:
    """Append `rows` as whole lines in one write, then flush and fsync."""
    os.makedirs(workdir, exist_ok=True)
    path = lineage_path(workdir)
    if os.path.exists(path):
        _cut_torn_tail(path)
    block = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows).encode()
    with open(path, "ab") as f:
        f.write(block)
        f.flush()
        os.fsync(f.fileno())


def read_lineage(path: str) -> list[dict]:
    """The rows of a lineage file (or of DIR/population.jsonl when given a workdir); a torn last line (no newline,
    or not JSON) is ignored, a bad line before it is a ValueError."""
    if os.path.isdir(path):
        path = lineage_path(path)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read().decode("utf-8", errors="replace")
    lines = data.split("\n")[:-1]  # the last piece is '' after a final newline, else a line a crash cut short
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i + 1}: not a JSON row ({e})") from None
    return rows


def truncate_lineage(workdir: str, keep_through_generation: Optional[int]) -> None:
    """Keep the rows of generations <= keep_through_generation (none when None: a fresh start), atomically."""
    path = lineage_path(workdir)
    if not os.path.exists(path):
        return
    rows = [] if keep_through_generation is None else [
        r for r in read_lineage(path) if r["generation"] <= keep_through_generation]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
