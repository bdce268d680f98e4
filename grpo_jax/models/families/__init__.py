"""Model families, one file each, registered under every HF `model_type` they read.

A family module provides:
  MODEL_TYPES, ARCHITECTURES (model_type -> HF class name for export), GGUF_ARCHITECTURES,
  config_from_hf(config_json_dict, source) -> ModelConfig,
  config_from_gguf(get, arch, tensor_names, source) -> the family's ModelConfig fields of a GGUF file,
  layer_entries(config) -> the per-layer (params path, HF name, is Linear, HF shape) table,
  export_config(config, dtype) -> config.json dict, and optionally rename_tensor(name) -> HF name | None.
Adding a family is one new file here plus its line in FAMILIES.
"""

from __future__ import annotations

import json
import os
from types import ModuleType
from typing import Any

from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.families import gemma, llama

FAMILIES: dict[str, ModuleType] = {
    "llama": llama, "qwen2": llama, "qwen3": llama,
    "gemma2": gemma, "gemma3_text": gemma, "gemma3": gemma,
}


def family(model_type: str, source: str = "config.json") -> ModuleType:
    """The family module of an HF model_type; an unsupported one is an UnsupportedModelError listing the rest."""
    if model_type not in FAMILIES:
        raise UnsupportedModelError(f"{source}: model_type {model_type!r} is not supported; grpo_jax implements "
                                    f"{', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def config_from_hf_dict(d: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """The ModelConfig of a transformers config.json dict; `source` names the file in errors."""
    return family(d.get("model_type"), source).config_from_hf(d, source)


def config_from_hf_json(path: str) -> ModelConfig:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (a checkpoint dir needs config.json)")
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: config.json must hold a JSON object")
    return config_from_hf_dict(d, source=path)


def gguf_family(arch: str, source: str) -> ModuleType:
    for module in dict.fromkeys(FAMILIES.values()):
        if arch in module.GGUF_ARCHITECTURES:
            return module
    readable = [a for m in dict.fromkeys(FAMILIES.values()) for a in m.GGUF_ARCHITECTURES]
    raise UnsupportedModelError(f"{source}: GGUF architecture {arch!r} is not supported; grpo_jax reads GGUF "
                                f"files of {', '.join(readable)} (other families load from HF checkpoints)")
