"""The machine a benchmark ran on, and its float32 matmul rate (the one probe every roofline divides by).

    rate = machine.matmul_rate(2048)            # MatmulRate(wall=FLOP per second, cpu=FLOP per CPU second)
    line["machine"], line["threads"] = machine.describe(), machine.threads()
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import NamedTuple, Optional, Sequence


class MatmulRate(NamedTuple):
    wall: float   # FLOP per wall-clock second
    cpu: float    # FLOP per CPU second of this process (what a contended machine cannot hide)


def matmul_rate(size: int = 2048, repeats: int = 5) -> MatmulRate:
    """This machine's float32 matmul rate: a jitted [size, size] @ [size, size] (2 size^3 FLOPs), medians of
    `repeats` calls after a warm-up, per wall second and per CPU second of this process."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, a).block_until_ready()
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        f(a, a).block_until_ready()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    flops = 2.0 * size ** 3
    return MatmulRate(flops / statistics.median(walls), flops / max(statistics.median(cpus), 1e-9))


def fastest(rates: Sequence[MatmulRate]) -> MatmulRate:
    """The machine's rate from probes taken before and after a run: the fastest of each kind (other load only ever
    slows a probe down, so the fastest is the closest to what the machine can do)."""
    return MatmulRate(max(r.wall for r in rates), max(r.cpu for r in rates))


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


def describe() -> dict:
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


def threads(torch_threads: Optional[object] = None) -> dict:
    """Threads each framework may use: XLA:CPU sizes its pool to the usable cores (XLA_FLAGS as set); torch's
    intra-op threads as given."""
    import jax

    out = {"jax_devices": jax.device_count(), "jax_platform": jax.default_backend(), "xla_pool": usable_cores(),
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if torch_threads is not None:
        out["torch"] = torch_threads
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM; getrusage's ru_maxrss where /proc is missing), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
