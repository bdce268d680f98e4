"""Multi-host runs: one Python process per host, one global mesh over every device of every process.

`initialize(...)` calls `jax.distributed.initialize` when asked: by flags (coordinator address, process count and
id), or by the usual cluster environment (a multi-host TPU slice, SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS).
On CPU the cross-process collectives go through gloo.

The batch axis of every step array is sharded over the mesh's (data, fsdp) axes, so each process holds a
contiguous block of rows. The sampler takes the step's (small) prompt batch as host arrays, identical on every
process; each process then reads back only the completions it holds (`local_part`), decodes and scores them, and
`allgather_rows` assembles the few per-row numbers (rewards, lengths) that every process needs for the
advantages and the metrics. The big per-token arrays (completions, masks, log-probs) stay sharded on the devices
and go to the train step as they are. Metrics, plots and the export are written by process 0 only (`is_main`);
orbax checkpoints are written cooperatively (each process its shards). With one process every function here is
the identity or nearly so.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def _cluster_size_from_env() -> int:
    """Number of processes the cluster environment announces (1 when none)."""
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if hosts:
        return len([h for h in hosts.split(",") if h])
    return 1


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, force: bool = False) -> bool:
    """Start the multi-process runtime when asked; returns True when it did.

    Asked = a coordinator address / process count is given, `force`, or the environment describes a cluster of
    more than one process (then JAX's own cluster detection fills in the addresses)."""
    if jax.distributed.is_initialized():
        return True
    from_flags = coordinator_address is not None or (num_processes or 1) > 1
    from_env = any(os.environ.get(v) for v in _CLUSTER_ENV) or _cluster_size_from_env() > 1
    if not (force or from_flags or from_env):
        return False
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} is not in [0, num_processes = {num_processes})")
    # CPU devices need a cross-process collectives backend, chosen before the backend starts (harmless on GPU/TPU,
    # whose collectives do not go through the CPU client).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    logger.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_main() -> bool:
    """Process 0 writes metrics, plots, the run record and the HF export."""
    return jax.process_index() == 0


def local_part(array) -> tuple[int, np.ndarray]:
    """(first global row, the rows of a batch-sharded array that this process holds, as numpy).

    Rows replicated over the tensor axis are taken once. A host or fully-addressable array is all local."""
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return 0, np.asarray(array)
    shards = {}
    for shard in array.addressable_shards:
        index = shard.index[0] if shard.index else slice(None)
        shards.setdefault(index.start or 0, np.asarray(shard.data))
    starts = sorted(shards)
    return starts[0], np.concatenate([shards[k] for k in starts], axis=0)


def allgather_rows(local: np.ndarray) -> np.ndarray:
    """Concatenate every process's rows along axis 0, in process order (identity with one process)."""
    local = np.asarray(local)
    if jax.process_count() == 1:
        return local
    return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def to_host(tree):
    """A pytree of (possibly multi-process sharded) arrays as full numpy arrays on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def any_process(flag: bool) -> bool:
    """True when `flag` is True on any process (e.g. a SIGTERM that reached only some hosts)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
