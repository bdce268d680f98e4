"""Export a policy to an HF checkpoint dir that transformers (and vLLM) open as-is.

Writes config.json in transformers' format for the model_type (its family's `export_config`: LlamaForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM), model.safetensors (HF names, [out, in] Linear weights, one tensor per layer; sharded with an
index above `max_shard_bytes`), generation_config.json, and the tokenizer files via `tokenizer.save_pretrained`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from grpo_jax.models import families
from grpo_jax.models.config import ModelConfig
from grpo_jax.models.errors import CheckpointError
from grpo_jax.models.hf_params import params_to_hf
from grpo_jax.models.safetensors_io import write_safetensors

def hf_config_dict(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """config.json contents for `config`, written by its family (models/families/)."""
    try:
        return families.family(config.model_type, "export").export_config(config, dtype)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"export: {e}") from None


def export_hf(policy, out_dir: str, *, dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2**30) -> str:
    """Writes `policy` as an HF checkpoint dir and returns `out_dir`.

    policy: a `models.Policy`, or a tuple (config, params) / (config, params, tokenizer).
    dtype: storage dtype "float32" | "bfloat16" (None keeps the params' dtype).
    Merge LoRA adapters into the params before exporting; only the base model's tensors are written.
    """
    if isinstance(policy, tuple):
        config, params, tokenizer = (policy + (None,))[:3]
    else:
        config, params, tokenizer = policy.config, policy.params, getattr(policy, "tokenizer", None)
    tensors = params_to_hf(config, params)
    if dtype is None:
        dtype = "bfloat16" if any(x.dtype.name == "bfloat16" for x in tensors.values()) else "float32"
    if dtype == "float32":
        np_dtype = np.float32
    elif dtype == "bfloat16":
        import ml_dtypes
        np_dtype = ml_dtypes.bfloat16
    else:
        raise ValueError(f"export dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config_dict(config, dtype), f, indent=2, sort_keys=True)
    ids = list(config.eos_token_ids)
    generation = {"bos_token_id": config.bos_token_id,
                  "eos_token_id": None if not ids else (ids[0] if len(ids) == 1 else ids),
                  "pad_token_id": config.pad_token_id}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({k: v for k, v in generation.items() if v is not None}, f, indent=2)
    write_safetensors(tensors, out_dir, max_shard_bytes=max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir
