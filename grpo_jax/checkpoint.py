"""Orbax checkpoints of a run, the workdir's run record, and the HF export of the final policy.

Layout of a workdir:

    DIR/run.json              the config (and its fingerprint) of the run this workdir holds
    DIR/checkpoints/<step>/   orbax: `state` (the TrainState: params, opt_state, step; plus the PRNG key) and
                              `meta` (JSON: step, data position, and the caller's `extra`)

A population run (grpo_jax/population/experiment.py) saves its stacked TrainState (a leading member axis on every
leaf) as `state` and its host state in `meta['population']`: the members' hyperparameters, the generation counter,
the selection generator's state (`population.rng_state`) and the elite.
    DIR/export/               the final policy as an HF checkpoint dir (config.json + safetensors + tokenizer)

Saves are atomic: orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` only when every file is
written, and `latest_step` lists finalized steps only, so a process killed during a save leaves the last good
checkpoint as the one that is restored (tests/test_checkpoint.py kills a save with SIGKILL to check this).
Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from grpo_jax import config as config_lib

RUN_RECORD = "run.json"


class WorkdirMismatchError(ValueError):
    """The workdir holds a run of a different config."""


# ------------------------------------------------------------------------------------------------ run record


def check_workdir(workdir: str, config, *, write: bool = True) -> None:
    """Refuse a workdir that holds a run of another config; otherwise record this config there (process 0).

    Keys in config_lib.RESUMABLE_KEYS (checkpoint / logging cadence) may change between invocations."""
    path = os.path.join(workdir, RUN_RECORD)
    mine = {"fingerprint": config_lib.fingerprint(config), "config": config_lib.trajectory_dict(config)}
    if os.path.exists(path):
        try:
            with open(path) as f:
                theirs = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise WorkdirMismatchError(f"{path}: unreadable run record ({e}); use another --workdir") from None
        if theirs.get("fingerprint") != mine["fingerprint"]:
            changes = config_lib.diff(theirs.get("config", {}), mine["config"])
            shown = "; ".join(changes[:4]) + (f"; ... ({len(changes)} keys)" if len(changes) > 4 else "")
            raise WorkdirMismatchError(
                f"workdir {workdir} holds a run of a different config ({shown or 'fingerprint differs'}); "
                "use another --workdir, or delete it to start over")
        return
    if os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(os.path.join(workdir, "checkpoints")):
        raise WorkdirMismatchError(f"workdir {workdir} has checkpoints but no {RUN_RECORD}, so its config is "
                                   "unknown; use another --workdir")
    if write:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(mine, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1, sort_keys=True))


# ------------------------------------------------------------------------------------------------ checkpoints


def _abstract(tree):
    """Shapes, dtypes and shardings of a pytree of arrays: the restore target (keeps the live sharding)."""
    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x
    return jax.tree.map(leaf, tree)


class Checkpointer:
    """Save / restore the train state, PRNG key and data position under DIR/checkpoints, keeping `keep`."""

    def __init__(self, workdir: str, keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, key: jax.Array, data_position: int, extra: Optional[dict] = None) -> None:
        """Write checkpoint `step` (blocking; atomic). All processes call this; orbax coordinates the writes."""
        raw = jax.random.key_data(key) if _is_typed_key(key) else key
        tree = {"train_state": state, "key": np.asarray(raw)}  # a host array: the same on every process
        meta = {"step": int(step), "data_position": int(data_position), **(extra or {})}
        self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                             meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, target_state: Any, target_key: jax.Array) -> tuple[Any, jax.Array, dict]:
        """(state, key, meta) of checkpoint `step`, with the shapes, dtypes and shardings of the targets."""
        raw = jax.random.key_data(target_key) if _is_typed_key(target_key) else target_key
        tree = {"train_state": target_state, "key": np.asarray(raw)}
        restored = self.manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(tree)), meta=ocp.args.JsonRestore()))
        state = restored["state"]
        key = jax.numpy.asarray(state["key"])
        if _is_typed_key(target_key):
            key = jax.random.wrap_key_data(key, impl=jax.random.key_impl(target_key))
        return state["train_state"], key, dict(restored["meta"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _is_typed_key(key) -> bool:
    return isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


# ------------------------------------------------------------------------------------------------ HF export


def export_policy(path: str, model_config, params, tokenizer) -> str:
    """Write the policy as an HF checkpoint dir at `path` (replacing an older export); returns the path.

    `params` must be host numpy arrays (distributed.to_host) so process 0 holds every weight."""
    from grpo_jax import models

    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    models.export_hf((model_config, jax.tree.map(np.asarray, params), tokenizer), tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path
