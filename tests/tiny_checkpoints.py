"""Tiny random Hugging Face checkpoints of every supported family, for parity and loading tests.

`make_checkpoint(family, path, **overrides)` builds the model with transformers' own PyTorch classes and writes it
with `save_pretrained(safe_serialization=True)`, so the files on disk are exactly what a real checkpoint of that
family looks like (names, layout, config.json keys). torch is a test-time reference only.

Weights are re-drawn so that every tensor matters for the logits: norm scales are not all ones, biases are not
zero, and projections are large enough that the logits are O(1) (a wrong rope or a missing bias then moves the
logits by far more than the 1e-4 parity tolerance).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

FAMILIES = ("llama", "llama3", "smollm2", "qwen2", "qwen3")

_TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    hidden_act="silu",
)

# Per family: (transformers config class name, model class name, overrides of _TINY).
_FAMILY_SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # Llama 2: multi-head attention (no GQA), untied.
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=False)),
    # Llama 3.x: GQA, large theta, llama3 rope scaling. original_max_position_embeddings=32 puts the head_dim=16
    # frequencies in all three regimes (unscaled, smoothed, scaled by 1/factor).
    "llama3": ("LlamaConfig", "LlamaForCausalLM",
               dict(rope_theta=500000.0, tie_word_embeddings=False,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    # SmolLM2: Llama with tied embeddings and a 4:1 GQA ratio.
    "smollm2": ("LlamaConfig", "LlamaForCausalLM",
                dict(num_key_value_heads=1, rope_theta=100000.0, tie_word_embeddings=True)),
    # Qwen2/2.5: bias on q/k/v.
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(rope_theta=1000000.0, tie_word_embeddings=False, use_sliding_window=False)),
    # Qwen3: per-head q/k RMSNorm and an explicit head_dim != hidden / heads.
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(head_dim=32, rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=False,
                   use_sliding_window=False)),
}


def _randomize_(model, seed: int) -> None:
    """Re-draws every parameter: norms ~ 1 + U(-0.5, 0.5), biases ~ N(0, 0.1), embeddings ~ N(0, 0.3),
    matrices ~ N(0, 1/fan_in). Logits then have a standard deviation of about 1-3 for tied and untied models."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + torch.rand(p.shape, generator=gen) - 0.5)
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[-1]))


def make_config(family: str, **overrides):
    """The transformers config object of a tiny `family` model (overrides are config kwargs)."""
    import transformers

    if family not in _FAMILY_SPECS:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    config_cls, _, fam = _FAMILY_SPECS[family]
    kwargs = {**_TINY, **fam, **overrides}
    return getattr(transformers, config_cls)(**kwargs)


def make_checkpoint(family: str, path, *, tied: bool | None = None, sharded: bool = False, seed: int = 0,
                    dtype: str = "float32", **overrides) -> str:
    """Writes a tiny random checkpoint of `family` to `path` and returns `path` as a str.

    tied: override tie_word_embeddings (None keeps the family default).
    sharded: write several model-0000k-of-0000n.safetensors files plus model.safetensors.index.json.
    dtype: storage dtype of the tensors ("float32" or "bfloat16").
    overrides: any transformers config kwargs (e.g. num_key_value_heads=4, head_dim=8).
    """
    import torch
    import transformers

    if tied is not None:
        overrides["tie_word_embeddings"] = tied
    config = make_config(family, **overrides)
    model_cls = getattr(transformers, _FAMILY_SPECS[family][1])
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    _randomize_(model, seed)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    path = str(path)
    os.makedirs(path, exist_ok=True)
    # The tiny model is ~150 KB; 40 KB shards give several files and an index.
    model.save_pretrained(path, safe_serialization=True, max_shard_size="40KB" if sharded else "5GB")
    return path


def load_torch_model(path, dtype: str = "float32"):
    """The transformers PyTorch reference for a checkpoint dir (eager attention, eval mode)."""
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=getattr(torch, dtype), attn_implementation="eager").eval()


def torch_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """float32 logits [B, T, V] of a transformers model on int tokens [B, T]."""
    import torch

    with torch.no_grad():
        kw = {}
        if attention_mask is not None:
            kw["attention_mask"] = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
        out = model(torch.as_tensor(np.asarray(tokens), dtype=torch.long), **kw)
    return out.logits.float().numpy()


def random_tokens(vocab_size: int, batch: int = 3, length: int = 12, seed: int = 0) -> np.ndarray:
    """int32 [batch, length] token ids drawn uniformly from the vocabulary."""
    return np.random.default_rng(seed).integers(0, vocab_size, size=(batch, length)).astype(np.int32)
