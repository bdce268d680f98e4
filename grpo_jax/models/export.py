"""Export a policy to an HF checkpoint dir that transformers (and vLLM) open as-is.

Writes config.json in transformers' format for the model_type (LlamaForCausalLM / Qwen2ForCausalLM /
Qwen3ForCausalLM), model.safetensors (HF names, [out, in] Linear weights, one tensor per layer; sharded with an
index above `max_shard_bytes`), generation_config.json, and the tokenizer files via `tokenizer.save_pretrained`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from grpo_jax.models.config import ModelConfig
from grpo_jax.models.errors import CheckpointError
from grpo_jax.models.hf_params import params_to_hf
from grpo_jax.models.safetensors_io import write_safetensors

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _eos(config: ModelConfig):
    ids = list(config.eos_token_ids)
    return None if not ids else (ids[0] if len(ids) == 1 else ids)


def hf_config_dict(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """config.json contents for `config`. Rope settings are written both the transformers >= 5 way
    (`rope_parameters`) and the older way (`rope_theta`, `rope_scaling`) that vLLM and older transformers read."""
    if config.model_type not in ARCHITECTURES:
        raise CheckpointError(f"export: model_type {config.model_type!r} has no HF architecture here "
                              f"(supported: {', '.join(ARCHITECTURES)})")
    scaling = {k: v for k, v in (config.rope_scaling_dict or {}).items() if k != "rope_theta"}
    d: dict[str, Any] = {
        "architectures": [ARCHITECTURES[config.model_type]],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": scaling or None,
        "rope_parameters": {"rope_type": "default", **scaling, "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": _eos(config),
        "pad_token_id": config.pad_token_id,
        "attention_dropout": 0.0,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    if config.model_type == "llama":
        d.update(attention_bias=config.attention_bias, mlp_bias=False)
    elif config.model_type == "qwen2":
        if not config.attention_bias:
            raise CheckpointError("export: Qwen2 always has q/k/v biases, but config.attention_bias is False")
        d.update(use_sliding_window=False, sliding_window=None)
    else:  # qwen3
        d.update(attention_bias=config.attention_bias, use_sliding_window=False, sliding_window=None)
    return d


def export_hf(policy, out_dir: str, *, dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2**30) -> str:
    """Writes `policy` as an HF checkpoint dir and returns `out_dir`.

    policy: a `models.Policy`, or a tuple (config, params) / (config, params, tokenizer).
    dtype: storage dtype "float32" | "bfloat16" (None keeps the params' dtype).
    Merge LoRA adapters into the params before exporting; only the base layout of PARAMS.md is written.
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
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": _eos(config),
                  "pad_token_id": config.pad_token_id}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({k: v for k, v in generation.items() if v is not None}, f, indent=2)
    write_safetensors(tensors, out_dir, max_shard_bytes=max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir
