"""What every benchmark reports beside its own numbers: the machine, its threads, its float32 matmul roofline, and
one JSON line appended to a results file.

    from experiments import bench_common
    rate = bench_common.matmul_flops_per_s(2048)         # FLOP/s of a jitted 2048 x 2048 float32 matmul
    line = {"benchmark": "x", "machine": bench_common.machine(), "threads": bench_common.threads(), ...}
    bench_common.emit(line, "benchmarks/results.jsonl")  # print one JSON line, append it to the file
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Optional

RESULTS = "benchmarks/results.jsonl"


def matmul_flops_per_s(size: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul rate: a jitted [size, size] @ [size, size], median of `repeats` after a
    warm-up. The denominator of every roofline here."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * size ** 3 / statistics.median(times)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> dict:
    """CPU model, cores (logical, and usable by this process), memory, load average, library versions."""
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    versions = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "torch", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # not installed: left out
            pass
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(), "memory_gib": memory,
            "load_avg": [round(x, 2) for x in os.getloadavg()], "versions": versions}


def threads(torch_threads: Optional[int] = None) -> dict:
    """Threads each framework may use: XLA:CPU sizes its pool to the usable cores (XLA_FLAGS as set);
    torch's intra-op threads as set (or its current setting when torch is imported)."""
    import jax

    out = {"jax_devices": jax.device_count(), "jax_platform": jax.default_backend(), "xla_pool": usable_cores(),
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if torch_threads is not None:
        out["torch"] = torch_threads
    return out


def git_commit() -> Optional[str]:
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
