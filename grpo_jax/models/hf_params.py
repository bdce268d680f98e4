"""HF state-dict names <-> the grpo_jax params pytree (`models.decoder` defines it; each family file lists its HF names).

HF stores one Linear weight per layer as [out, in]; grpo_jax stacks the L layers on a leading axis and stores Flax
kernels as [in, out]. This module is the single place that knows both naming schemes, used by every loader
(safetensors, GGUF after renaming) and by the exporter, and it checks every tensor's shape against the config
before reading its data.
"""

from __future__ import annotations

import re
from typing import Iterable, Protocol

import numpy as np

from grpo_jax.models import families
from grpo_jax.models.config import ModelConfig
from grpo_jax.models.errors import CheckpointError
from grpo_jax.models.families import common

# Tensors some checkpoints carry that the model recomputes (rotary tables): skipped silently.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


class TensorSource(Protocol):
    """A lazily read set of HF-named tensors (a safetensors checkpoint, a GGUF file after renaming)."""

    def names(self) -> Iterable[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> np.ndarray: ...

    def file_of(self, name: str) -> str: ...


def _layer_entries(c: ModelConfig):
    """(params path inside "layers", HF name suffix after model.layers.{i}., is a Linear weight, HF shape)."""
    return families.family(c.model_type).layer_entries(c)


def _top_entries(c: ModelConfig):
    """(params path, HF name, is a Linear weight, HF shape) of the non-layer tensors."""
    return common.top_entries(c)


class RenamedSource:
    """A TensorSource seen through a family's `rename_tensor` (e.g. a multimodal checkpoint's text tower):
    names mapped to None are not part of the model and are hidden."""

    def __init__(self, source: TensorSource, rename):
        self._source = source
        self._names = {}
        for name in source.names():
            new = rename(name)
            if new is not None:
                self._names[new] = name

    def names(self):
        return list(self._names)

    def shape(self, name):
        return self._source.shape(self._names[name])

    def get(self, name):
        return self._source.get(self._names[name])

    def file_of(self, name):
        return self._source.file_of(self._names.get(name, name))


def expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name the config needs, with its HF ([out, in]) shape."""
    shapes = {name: shape for _, name, _, shape in _top_entries(config)}
    for i in range(config.num_layers):
        for _, suffix, _, shape in _layer_entries(config):
            shapes[f"model.layers.{i}.{suffix}"] = shape
    return shapes


def _config_summary(c: ModelConfig) -> str:
    return (f"vocab_size={c.vocab_size}, hidden_size={c.hidden_size}, intermediate_size={c.intermediate_size}, "
            f"num_layers={c.num_layers}, num_heads={c.num_heads}, num_kv_heads={c.num_kv_heads}, "
            f"head_dim={c.head_dim}")


def check_tensors(config: ModelConfig, source: TensorSource, config_source: str) -> None:
    """Raises CheckpointError for a missing, unexpected or wrongly shaped tensor (reads shapes only)."""
    expected = expected_hf_shapes(config)
    present = set(source.names())
    missing = [n for n in expected if n not in present]
    if missing:
        where = sorted({source.file_of(n) for n in present}) if present else ["(no tensors)"]
        raise CheckpointError(
            f"{', '.join(where)}: missing tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; {config_source} asks for {_config_summary(config)}, attention_bias={config.attention_bias}, "
              f"qk_norm={config.qk_norm}, tie_word_embeddings={config.tie_word_embeddings}")
    unexpected = sorted(n for n in present - set(expected)
                        if not _IGNORED.search(n) and not (n == "lm_head.weight" and config.tie_word_embeddings))
    if unexpected:
        raise CheckpointError(
            f"{source.file_of(unexpected[0])}: unexpected tensor {unexpected[0]!r}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            + f" not described by {config_source} ({_config_summary(config)})")
    for name, shape in expected.items():
        got = tuple(source.shape(name))
        if got != shape:
            raise CheckpointError(
                f"{source.file_of(name)}: tensor {name!r} has shape {got}, expected {shape} "
                f"from {config_source} ({_config_summary(config)})")


def _np_dtype(dtype: str):
    if dtype == "float32":
        return np.float32
    if dtype == "bfloat16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    raise ValueError(f"param dtype must be 'float32' or 'bfloat16', got {dtype!r}")


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def hf_to_params(config: ModelConfig, source: TensorSource, dtype: str = "float32",
                 config_source: str = "config.json") -> dict:
    """Reads every tensor of `source` into the params pytree (jax arrays of `dtype`), checking shapes first."""
    import jax.numpy as jnp

    rename = getattr(families.family(config.model_type), "rename_tensor", None)
    if rename is not None:
        source = RenamedSource(source, rename)
    check_tensors(config, source, config_source)
    np_dtype = _np_dtype(dtype)

    def read(name: str, transpose: bool) -> np.ndarray:
        x = np.asarray(source.get(name))
        if tuple(x.shape) != tuple(source.shape(name)):
            raise CheckpointError(f"{source.file_of(name)}: tensor {name!r} holds {x.shape} values, "
                                  f"its header says {tuple(source.shape(name))} (corrupt file?)")
        return (x.T if transpose else x).astype(np_dtype)

    params: dict = {}
    for path, name, transpose, _ in _top_entries(config):
        _set(params, path, jnp.asarray(read(name, transpose)))
    for path, suffix, transpose, _ in _layer_entries(config):
        stacked = np.stack([read(f"model.layers.{i}.{suffix}", transpose) for i in range(config.num_layers)])
        _set(params, ("layers",) + path, jnp.asarray(stacked))
    return params


def params_to_hf(config: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """The HF state dict ([out, in] Linear weights, one tensor per layer) of a params pytree, as numpy arrays."""
    out: dict[str, np.ndarray] = {}
    for path, name, transpose, shape in _top_entries(config):
        x = np.asarray(_get(params, path))
        out[name] = np.ascontiguousarray(x.T if transpose else x)
    for path, suffix, transpose, shape in _layer_entries(config):
        stacked = np.asarray(_get(params, ("layers",) + path))
        for i in range(config.num_layers):
            x = stacked[i]
            out[f"model.layers.{i}.{suffix}"] = np.ascontiguousarray(x.T if transpose else x)
    for name, shape in expected_hf_shapes(config).items():
        if out[name].shape != shape:
            raise CheckpointError(f"params: tensor {name!r} has shape {out[name].shape}, expected {shape} "
                                  f"from the config ({_config_summary(config)})")
    return out
