"""Reading and writing HF safetensors checkpoints with safetensors' numpy API (no torch).

A checkpoint dir holds either `model.safetensors`, or shards listed by `model.safetensors.index.json`
(`{"weight_map": {tensor name: shard file}}`), as written by transformers' `save_pretrained`.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Iterable

import numpy as np

from grpo_jax.models.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _open(path: str):
    from safetensors import safe_open

    try:
        return safe_open(path, framework="np")
    except Exception as e:  # SafetensorError (truncated / corrupt header) or OSError
        raise CheckpointError(f"{path}: not a valid safetensors file, truncated or corrupt ({e})") from None


class SafetensorsCheckpoint:
    """The tensors of a checkpoint dir, read lazily: shapes come from the headers, data on `get`.

    Use as a context manager so the memory-mapped files are closed afterwards.
    """

    def __init__(self, directory: str):
        self.directory = directory
        index_path = os.path.join(directory, INDEX_FILE)
        single_path = os.path.join(directory, SINGLE_FILE)
        if os.path.exists(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index_path}: not a valid safetensors index, expected JSON with a "
                                      f"'weight_map' object ({type(e).__name__}: {e})") from None
            files = sorted(set(weight_map.values()))
        elif os.path.exists(single_path):
            weight_map, files = None, [SINGLE_FILE]
        else:
            found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "*.safetensors")))
            if not found:
                others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "*"))
                                if p.endswith((".bin", ".pt", ".pth", ".gguf", ".msgpack")))
                hint = (f" (found {', '.join(others)}: grpo_jax reads safetensors only; pickled .bin/.pt "
                        f"checkpoints are never loaded)" if others else "")
                raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")
            weight_map, files = None, found
        self._handles = {}
        self._file_of: dict[str, str] = {}
        try:
            for name in files:
                path = os.path.join(directory, name)
                if not os.path.exists(path):
                    raise CheckpointError(f"{index_path}: lists shard {name!r}, which is missing from {directory}")
                handle = _open(path)
                self._handles[path] = handle.__enter__()
                for key in self._handles[path].keys():
                    self._file_of[key] = path
            if weight_map is not None:
                for key, name in weight_map.items():
                    if self._file_of.get(key) != os.path.join(directory, name):
                        raise CheckpointError(f"{os.path.join(directory, name)}: has no tensor {key!r}, "
                                              f"which {index_path} places there")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "SafetensorsCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles = {}

    def names(self) -> Iterable[str]:
        return self._file_of.keys()

    def file_of(self, name: str) -> str:
        return self._file_of.get(name, self.directory)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._file_of[name]].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        path = self._file_of[name]
        try:
            return self._handles[path].get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor {name!r} ({e})") from None


def write_safetensors(tensors: dict[str, np.ndarray], out_dir: str, max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Writes `tensors` as model.safetensors, or as shards + model.safetensors.index.json when they exceed
    `max_shard_bytes`; returns the file names written. Metadata {"format": "pt"} is what transformers expects."""
    from safetensors.numpy import save_file

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, x in tensors.items():
        if shards[-1] and size + x.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = x
        size += x.nbytes
    os.makedirs(out_dir, exist_ok=True)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, SINGLE_FILE), metadata={"format": "pt"})
        return [SINGLE_FILE]
    names, weight_map = [], {}
    for k, shard in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
        names.append(name)
        weight_map.update({t: name for t in shard})
    index = {"metadata": {"total_size": int(sum(x.nbytes for x in tensors.values()))}, "weight_map": weight_map}
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2)
    return names + [INDEX_FILE]
