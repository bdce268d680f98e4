"""What every family's config parser and name table share: reading HF config.json fields, rope settings, eos ids,
and the (params path, HF name, is a Linear weight, HF shape) entries of the tensors every decoder has."""

from __future__ import annotations

from typing import Any, Optional

from grpo_jax.models.config import ModelConfig, UnsupportedModelError


def base_fields(d: dict[str, Any], source: str) -> dict[str, Any]:
    """The sizes every family states, as ModelConfig fields; a missing one is a clear error."""
    try:
        hidden = int(d["hidden_size"])
        heads = int(d["num_attention_heads"])
        return dict(
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


def token_fields(d: dict[str, Any]) -> dict[str, Any]:
    eos = d.get("eos_token_id")
    eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    return dict(bos_token_id=d.get("bos_token_id"), eos_token_ids=eos, pad_token_id=d.get("pad_token_id"))


SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_scaling(params: Optional[dict], source: str) -> Optional[tuple]:
    """A rope_scaling / rope_parameters dict -> the hashable ModelConfig.rope_scaling (None for plain rope)."""
    if not params:
        return None
    kind = params.get("rope_type", params.get("type"))
    if kind not in SUPPORTED_ROPE_TYPES + (None,):
        raise UnsupportedModelError(f"{source}: rope_scaling type {kind!r} is not supported "
                                    f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    if kind in ("default", None):
        return None
    return tuple(sorted((k, v) for k, v in params.items()
                        if isinstance(v, (int, float, str)) and k not in ("rope_theta", "type")))


def rope_theta_and_scaling(d: dict[str, Any], source: str, default_theta: float = 10000.0):
    """(theta, scaling) from `rope_theta` / `rope_scaling` (transformers < 5) or `rope_parameters` (>= 5)."""
    scaling = d.get("rope_scaling") or None
    theta = d.get("rope_theta")
    rp = d.get("rope_parameters")
    if isinstance(rp, dict):
        theta = theta or rp.get("rope_theta")
        if rp.get("rope_type", "default") != "default":
            scaling = scaling or rp
    return float(theta or default_theta), rope_scaling(scaling, source)


def rope_export(config: ModelConfig) -> dict[str, Any]:
    """config.json rope keys, written both the transformers >= 5 way (`rope_parameters`) and the older way
    (`rope_theta`, `rope_scaling`) that vLLM and older transformers read."""
    scaling = {k: v for k, v in (config.rope_scaling_dict or {}).items() if k != "rope_theta"}
    return {"rope_theta": config.rope_theta, "rope_scaling": scaling or None,
            "rope_parameters": {"rope_type": "default", **scaling, "rope_theta": config.rope_theta}}


def top_entries(c: ModelConfig):
    """(params path, HF name, is a Linear weight, HF shape) of the tensors outside the layers."""
    out = [(("embed", "embedding"), "model.embed_tokens.weight", False, (c.vocab_size, c.hidden_size)),
           (("final_norm", "scale"), "model.norm.weight", False, (c.hidden_size,))]
    if not c.tie_word_embeddings:
        out.append((("lm_head", "kernel"), "lm_head.weight", True, (c.vocab_size, c.hidden_size)))
    return out


def attention_entries(c: ModelConfig, o_bias: bool = False):
    """Entries of the attention projections (+ q/k/v biases with attention_bias, + q/k norms with qk_norm)."""
    D, hd = c.hidden_size, c.head_dim
    q, kv = c.num_heads * hd, c.num_kv_heads * hd
    out = []
    for proj, width in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
        out.append((("attn", proj, "kernel"), f"self_attn.{proj}.weight", True, (width, D)))
        if c.attention_bias:
            out.append((("attn", proj, "bias"), f"self_attn.{proj}.bias", False, (width,)))
    out.append((("attn", "o_proj", "kernel"), "self_attn.o_proj.weight", True, (D, q)))
    if c.qk_norm:
        out.append((("attn", "q_norm", "scale"), "self_attn.q_norm.weight", False, (hd,)))
        out.append((("attn", "k_norm", "scale"), "self_attn.k_norm.weight", False, (hd,)))
    return out


def mlp_entries(c: ModelConfig):
    D, F = c.hidden_size, c.intermediate_size
    return [(("mlp", "gate_proj", "kernel"), "mlp.gate_proj.weight", True, (F, D)),
            (("mlp", "up_proj", "kernel"), "mlp.up_proj.weight", True, (F, D)),
            (("mlp", "down_proj", "kernel"), "mlp.down_proj.weight", True, (D, F))]


def common_export(config: ModelConfig, architecture: str, dtype: str) -> dict[str, Any]:
    """config.json keys every family writes."""
    ids = list(config.eos_token_ids)
    return {
        "architectures": [architecture],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": None if not ids else (ids[0] if len(ids) == 1 else ids),
        "pad_token_id": config.pad_token_id,
        "attention_dropout": 0.0,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
