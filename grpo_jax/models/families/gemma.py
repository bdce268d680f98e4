"""The Gemma 2 / Gemma 3 family (HF model_types gemma2, gemma3_text, and gemma3 checkpoints whose text tower is
loaded alone). Gemma Team 2024 ("Gemma 2: Improving Open Language Models at a Practical Size") and 2025 ("Gemma 3
Technical Report"), as transformers computes them:

  - embeddings times sqrt(hidden_size); RMSNorm with scale (1 + w), applied in float32;
  - sandwich norms: x + norm(attn(norm(x))), then x + norm(GeGLU(norm(x))), GELU with the tanh approximation;
  - q.k scaled by query_pre_attn_scalar^-1/2 instead of head_dim^-1/2;
  - Gemma 2: attention scores and final logits soft-capped, c * tanh(s / c); sliding-window layers alternate with
    global ones (even layers slide);
  - Gemma 3: per-head q/k norms, no soft-capping, `layer_types` (5 sliding : 1 global by default) and a separate
    rope base for the sliding layers (`rope_local_base_freq`); rope scaling (e.g. linear) on global layers only;
  - tied embeddings.
"""

from __future__ import annotations

from typing import Any, Optional

from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.families import common

MODEL_TYPES = ("gemma2", "gemma3_text", "gemma3")
ARCHITECTURES = {"gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
GGUF_ARCHITECTURES = ()  # Gemma GGUF files are not read; load the HF safetensors checkpoint
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")
# Softcap defaults of transformers' config classes when config.json omits them.
_DEFAULTS = {"gemma2": dict(attn=50.0, final=30.0, theta=10000.0),
             "gemma3_text": dict(attn=None, final=None, theta=1_000_000.0)}


def _layer_types(d: dict[str, Any], model_type: str, layers: int, source: str) -> tuple:
    types = d.get("layer_types")
    if types is None:
        if model_type == "gemma2":
            types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
        else:
            pattern = int(d.get("sliding_window_pattern") or d.get("_sliding_window_pattern") or 6)
            types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
    bad = sorted(set(types) - {"sliding_attention", "full_attention"})
    if bad:
        raise UnsupportedModelError(f"{source}: layer type {bad[0]!r} is not supported "
                                    "(sliding_attention, full_attention)")
    return tuple(types)


def _gemma3_rope(d: dict[str, Any], source: str) -> tuple[float, Optional[tuple], float]:
    """(global theta, global scaling, local theta) from rope_parameters {layer type: params} (transformers >= 5)
    or rope_theta / rope_scaling / rope_local_base_freq (older config.json files)."""
    rp = d.get("rope_parameters")
    if isinstance(rp, dict) and "full_attention" in rp:
        full, local = rp.get("full_attention") or {}, rp.get("sliding_attention") or {}
        if common.rope_scaling(local, source) is not None:
            raise UnsupportedModelError(f"{source}: rope scaling on sliding-window layers is not supported")
        return (float(full.get("rope_theta", _DEFAULTS["gemma3_text"]["theta"])),
                common.rope_scaling(full, source), float(local.get("rope_theta", 10000.0)))
    theta, scaling = common.rope_theta_and_scaling(d, source, _DEFAULTS["gemma3_text"]["theta"])
    return theta, scaling, float(d.get("rope_local_base_freq", 10000.0))


def config_from_hf(d: dict[str, Any], source: str) -> ModelConfig:
    if d["model_type"] == "gemma3":  # multimodal checkpoint: its text tower
        if not isinstance(d.get("text_config"), dict):
            raise ValueError(f"{source}: a gemma3 config.json needs a text_config")
        d = {**d["text_config"], "model_type": "gemma3_text"}
    model_type = d["model_type"]
    act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in _GELU_TANH:
        raise UnsupportedModelError(f"{source}: hidden_activation {act!r} is not supported (gelu_pytorch_tanh)")
    if d.get("attention_bias"):
        raise UnsupportedModelError(f"{source}: attention_bias=True is not supported for {model_type}")
    if d.get("use_bidirectional_attention"):
        raise UnsupportedModelError(f"{source}: use_bidirectional_attention=True is not supported (causal only)")
    fields = common.base_fields(d, source)
    defaults = _DEFAULTS[model_type]
    if model_type == "gemma2":
        theta, scaling = common.rope_theta_and_scaling(d, source, defaults["theta"])
        local_theta = None
    else:
        theta, scaling, local_theta = _gemma3_rope(d, source)
    window = d.get("sliding_window", 4096)  # transformers' default when config.json omits it
    return ModelConfig(
        **fields,
        max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        qk_norm=model_type == "gemma3_text",
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
        model_type=model_type,
        norm_offset=1.0,
        embed_scale=True,
        sandwich_norms=True,
        activation="gelu_tanh",
        query_pre_attn_scalar=d.get("query_pre_attn_scalar", fields["head_dim"]),  # int in transformers' schema
        attn_softcap=d.get("attn_logit_softcapping", defaults["attn"]),
        final_softcap=d.get("final_logit_softcapping", defaults["final"]),
        sliding_window=int(window) if window else None,
        layer_types=_layer_types(d, model_type, fields["num_layers"], source) if window else (),
        rope_local_theta=local_theta,
        **common.token_fields(d),
    )


def config_from_gguf(get, arch: str, names: set, source: str) -> dict[str, Any]:
    raise UnsupportedModelError(f"{source}: Gemma GGUF files are not supported; load the HF checkpoint")


def rename_tensor(name: str) -> Optional[str]:
    """A gemma3 multimodal checkpoint's text-tower names -> Gemma3ForCausalLM names; other towers -> None (not
    read). transformers >= 5 saves `model.language_model.*`, older versions `language_model.model.*`."""
    for prefix in ("model.language_model.", "language_model.model."):
        if name.startswith(prefix):
            return "model." + name[len(prefix):]
    if name.startswith("language_model.lm_head."):
        return name[len("language_model."):]
    if name.startswith(("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.",
                        "multi_modal_projector.")):
        return None
    return name


def layer_entries(c: ModelConfig):
    """(params path inside "layers", HF name after model.layers.{i}., is a Linear weight, HF shape). Our
    post_attn_norm is the norm before the MLP in every family (HF Gemma: pre_feedforward_layernorm)."""
    D = c.hidden_size
    return ([(("input_norm", "scale"), "input_layernorm.weight", False, (D,))]
            + common.attention_entries(c)
            + [(("attn_out_norm", "scale"), "post_attention_layernorm.weight", False, (D,)),
               (("post_attn_norm", "scale"), "pre_feedforward_layernorm.weight", False, (D,)),
               (("mlp_out_norm", "scale"), "post_feedforward_layernorm.weight", False, (D,))]
            + common.mlp_entries(c))


def export_config(config: ModelConfig, dtype: str) -> dict[str, Any]:
    if config.model_type not in ARCHITECTURES:
        raise ValueError(f"export: no HF architecture for model_type {config.model_type!r}")
    d = common.common_export(config, ARCHITECTURES[config.model_type], dtype)
    d.update(hidden_activation="gelu_pytorch_tanh", attention_bias=False,
             query_pre_attn_scalar=config.query_pre_attn_scalar,
             attn_logit_softcapping=config.attn_softcap, final_logit_softcapping=config.final_softcap,
             sliding_window=config.sliding_window,
             layer_types=list(config.layer_types) or ["full_attention"] * config.num_layers)
    rope = common.rope_export(config)  # the global layers' rope
    if config.model_type == "gemma3_text":  # per layer type, with the sliding layers' own base
        rope.update(rope_local_base_freq=config.rope_local_theta,
                    rope_parameters={"full_attention": rope["rope_parameters"],
                                     "sliding_attention": {"rope_type": "default",
                                                           "rope_theta": config.rope_local_theta}})
    d.update(rope)
    return d
