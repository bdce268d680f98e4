"""ModelConfig: the architecture switches of the Llama family, built from an HF config.json or GGUF metadata.

One decoder covers Llama 2/3.x, SmolLM2, Qwen2/2.5 and Qwen3; what differs between them is data, not code:
  - Qwen2/2.5 put a bias on the q/k/v projections (`attention_bias`).
  - Qwen3 RMS-normalises queries and keys per head (`qk_norm`) and states `head_dim` explicitly.
  - Llama 3.1+ rescales RoPE frequencies (`rope_scaling = {"rope_type": "llama3", ...}`).
  - Small models tie the output projection to the embedding (`tie_word_embeddings`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

# HF `model_type` values the one decoder implements. Anything else is refused with a clear error.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


class UnsupportedModelError(ValueError):
    """The checkpoint describes an architecture this decoder does not implement."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None, or a tuple of (key, value) pairs (hashable so the config can be a static jit argument).
    rope_scaling: Optional[tuple] = None
    attention_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    model_type: str = "llama"
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple = ()
    pad_token_id: Optional[int] = None
    # Compute dtype of activations and matmuls ("float32" or "bfloat16"); params keep their own dtype.
    compute_dtype: str = "float32"
    # Rematerialise each decoder layer in the backward pass (trades FLOPs for memory).
    remat: bool = False

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")

    @property
    def rope_scaling_dict(self) -> Optional[dict]:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Builds the config from a transformers config.json dict; `source` names the file in errors."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not supported; grpo_jax implements "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (the Llama family)")
        try:
            hidden = int(d["hidden_size"])
            heads = int(d["num_attention_heads"])
            cfg = dict(
                vocab_size=int(d["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                num_layers=int(d["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or hidden // heads),
            )
        except KeyError as e:
            raise ValueError(f"{source}: missing required field {e.args[0]!r}") from None
        if d.get("hidden_act", "silu") not in ("silu", "swish"):
            raise UnsupportedModelError(f"{source}: hidden_act {d.get('hidden_act')!r} is not supported (only silu)")
        if d.get("mlp_bias"):
            raise UnsupportedModelError(f"{source}: mlp_bias=True is not supported (the MLP has no biases)")
        if model_type != "qwen2" and d.get("attention_bias"):
            # HF Llama/Qwen3 put this bias on q/k/v *and* o_proj; only Qwen2's q/k/v biases are implemented.
            raise UnsupportedModelError(f"{source}: attention_bias=True for model_type {model_type!r} (biases on "
                                        "q/k/v/o_proj) is not supported; only Qwen2-style q/k/v biases are")
        if d.get("use_sliding_window"):
            raise UnsupportedModelError(f"{source}: use_sliding_window=True is not supported (full attention only)")
        rope_scaling = d.get("rope_scaling") or None
        rope_theta = d.get("rope_theta")
        # transformers >= 5 may keep rope settings under `rope_parameters`.
        rp = d.get("rope_parameters")
        if isinstance(rp, dict):
            rope_theta = rope_theta or rp.get("rope_theta")
            if rp.get("rope_type", "default") != "default":
                rope_scaling = rope_scaling or rp
        if rope_scaling is not None:
            rtype = rope_scaling.get("rope_type", rope_scaling.get("type"))
            if rtype not in ("default", "llama3", None):
                raise UnsupportedModelError(f"{source}: rope_scaling type {rtype!r} is not supported "
                                            "(supported: default, llama3)")
            if rtype in ("default", None):
                rope_scaling = None
            else:
                rope_scaling = tuple(sorted((k, v) for k, v in rope_scaling.items()
                                            if isinstance(v, (int, float, str)) and k != "rope_theta"))
        eos = d.get("eos_token_id")
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        return cls(
            **cfg,
            max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            rope_theta=float(rope_theta or 10000.0),
            rope_scaling=rope_scaling,
            attention_bias=True if model_type == "qwen2" else bool(d.get("attention_bias", False)),
            qk_norm=(model_type == "qwen3"),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            model_type=model_type,
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos,
            pad_token_id=d.get("pad_token_id"),
        )

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any], tensor_names, source: str = "model.gguf") -> "ModelConfig":
        """Builds the config from llama.cpp GGUF metadata (e.g. "llama.embedding_length") and the file's tensor
        names (they tell tied embeddings and q/k/v biases); see grpo_jax.models.gguf_io."""
        from grpo_jax.models.gguf_io import config_from_gguf_metadata
        return config_from_gguf_metadata(metadata, tensor_names, source)

    @classmethod
    def from_hf_json(cls, path: str) -> "ModelConfig":
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file (a checkpoint dir needs config.json)")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(d, source=path)
