"""The Llama family: Llama 2/3.x, SmolLM2, Qwen2/2.5, Qwen3 (HF model_types llama, qwen2, qwen3).

Pre-norm blocks: x + attn(norm(x)), then x + SwiGLU(norm(x)); plain RMSNorm; rope on every layer.
  - Qwen2/2.5 put a bias on the q/k/v projections.
  - Qwen3 RMS-normalises queries and keys per head and states head_dim explicitly.
  - Llama 3.1+ rescales rope frequencies (rope_type "llama3").
"""

from __future__ import annotations

from typing import Any

from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.families import common

MODEL_TYPES = ("llama", "qwen2", "qwen3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# GGUF `general.architecture` values this family reads (llama.cpp names them like HF's model_type).
GGUF_ARCHITECTURES = MODEL_TYPES


def config_from_hf(d: dict[str, Any], source: str) -> ModelConfig:
    model_type = d["model_type"]
    if d.get("hidden_act", "silu") not in ("silu", "swish"):
        raise UnsupportedModelError(f"{source}: hidden_act {d.get('hidden_act')!r} is not supported (only silu)")
    if d.get("mlp_bias"):
        raise UnsupportedModelError(f"{source}: mlp_bias=True is not supported (the MLP has no biases)")
    if model_type != "qwen2" and d.get("attention_bias"):
        # HF Llama/Qwen3 put this bias on q/k/v *and* o_proj; only Qwen2's q/k/v biases are implemented.
        raise UnsupportedModelError(f"{source}: attention_bias=True for model_type {model_type!r} (biases on "
                                    "q/k/v/o_proj) is not supported; only Qwen2-style q/k/v biases are")
    if d.get("use_sliding_window"):
        raise UnsupportedModelError(f"{source}: use_sliding_window=True is not supported for {model_type} "
                                    "(full attention only)")
    theta, scaling = common.rope_theta_and_scaling(d, source)
    if scaling is not None and dict(scaling).get("rope_type", dict(scaling).get("type")) == "linear":
        raise UnsupportedModelError(f"{source}: rope_scaling type 'linear' is not supported for {model_type} "
                                    "(supported: default, llama3)")
    return ModelConfig(
        **common.base_fields(d, source),
        max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
        rope_theta=theta,
        rope_scaling=scaling,
        attention_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        model_type=model_type,
        **common.token_fields(d),
    )


def config_from_gguf(get, arch: str, names: set, source: str) -> dict[str, Any]:
    """The family-specific ModelConfig fields of a GGUF file (`get(key, default)` reads `{arch}.{key}`)."""
    return dict(attention_bias="blk.0.attn_q.bias" in names, qk_norm=arch == "qwen3", model_type=arch)


def layer_entries(c: ModelConfig):
    """(params path inside "layers", HF name after model.layers.{i}., is a Linear weight, HF shape)."""
    D = c.hidden_size
    return ([(("input_norm", "scale"), "input_layernorm.weight", False, (D,))]
            + common.attention_entries(c)
            + [(("post_attn_norm", "scale"), "post_attention_layernorm.weight", False, (D,))]
            + common.mlp_entries(c))


def export_config(config: ModelConfig, dtype: str) -> dict[str, Any]:
    d = common.common_export(config, ARCHITECTURES[config.model_type], dtype)
    d.update(common.rope_export(config), hidden_act="silu")
    if config.model_type == "llama":
        d.update(attention_bias=config.attention_bias, mlp_bias=False)
    elif config.model_type == "qwen2":
        if not config.attention_bias:
            raise ValueError("export: Qwen2 always has q/k/v biases, but config.attention_bias is False")
        d.update(use_sliding_window=False, sliding_window=None)
    else:  # qwen3
        d.update(attention_bias=config.attention_bias, use_sliding_window=False, sliding_window=None)
    return d
