"""The results line every benchmark writes: ONE JSON line on stdout, appended to a JSONL file.

    line = {"benchmark": "x", "time": results.now(), "commit": results.git_commit(), ...}
    results.emit(line, results.RESULTS)      # print it, append it to benchmarks/results.jsonl
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from typing import Callable, Optional

RESULTS = os.path.join("benchmarks", "results.jsonl")


def git_commit() -> Optional[str]:
    """The checkout's short commit hash (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(wall seconds, result) of fn(); fn must block until its work is done."""
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def append_result(line: dict, path: str) -> None:
    """Appends `line` as one JSON line to `path` ('' or None: nothing)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def emit(line: dict, path: str) -> dict:
    """Prints `line` as ONE JSON line on stdout and appends it to `path`."""
    print(json.dumps(line), flush=True)
    append_result(line, path)
    return line
