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

FAMILIES = ("llama", "llama3", "smollm2", "qwen2", "qwen3", "gemma2", "gemma3")

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
    # Gemma 2: (1 + w) norms, scaled embeddings, sandwich norms, GeGLU; a sliding window of 4 (shorter than the
    # tests' sequences) on layer 0, global layer 1; query_pre_attn_scalar != head_dim; soft-caps small enough to
    # bend O(1) scores and logits.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=4, attn_logit_softcapping=2.0,
                    final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                    rms_norm_eps=1e-6)),
    # Gemma 3 (text): adds per-head q/k norms; layer types [sliding, full] with their own rope bases, linear rope
    # scaling on the global layer; no soft-capping.
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(head_dim=16, query_pre_attn_scalar=20, sliding_window=4,
                    layer_types=["sliding_attention", "full_attention"],
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
                    hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, rms_norm_eps=1e-6)),
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


# GGUF block names of HF tensor names (inverse of llama.cpp's convert_hf_to_gguf renaming).
_GGUF_BLOCK = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_GGUF_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def _gguf_name(hf: str) -> str:
    stem, kind = hf.rsplit(".", 1)
    if stem in _GGUF_TOP:
        return f"{_GGUF_TOP[stem]}.{kind}"
    _, _, layer, rest = stem.split(".", 3)  # model.layers.{i}.{rest}
    return f"blk.{layer}.{_GGUF_BLOCK[rest]}.{kind}"


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf `LlamaModel.permute`: rotate-half rows -> interleaved rope rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                   "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ 1"]


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable unicode table (bytes_to_unicode), in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tiny_gguf_vocab() -> list[str]:
    """The byte-level BPE vocabulary of `make_gguf(..., tokenizer=True)`: 3 specials, 256 bytes, 8 merges."""
    return _SPECIALS + _byte_chars() + [m.replace(" ", "") for m in _MERGES]


def _add_tokenizer(w) -> None:
    import gguf

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    tokens = tiny_gguf_vocab()
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * len(_SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    w.add_token_merges(_MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)


def make_gguf(family: str, path, *, quant: str = "Q8_0", seed: int = 0, tokenizer: bool = False,
              **overrides) -> str:
    """Writes a tiny random `family` model ("llama", "smollm2", "qwen2", "qwen3") as a llama.cpp GGUF file, the
    way llama.cpp's converter does (its names, q/k permutation for llama, metadata keys), and returns its path.

    quant: storage type of the 2-D weights ("F32", "F16" or "Q8_0"); norms and biases stay F32.
    tokenizer: also write a tiny byte-level BPE tokenizer with a ChatML template (vocab_size becomes 267).
    The HF checkpoint it was made from is written next to it (path + ".hf") for reference.
    """
    import gguf

    if family == "llama3":
        raise ValueError("llama.cpp stores llama3 rope scaling as a rope_freqs tensor, which grpo_jax refuses")
    if tokenizer:
        overrides["vocab_size"] = len(tiny_gguf_vocab())
    hf_dir = make_checkpoint(family, str(path) + ".hf", seed=seed, **overrides)
    config = make_config(family, **overrides)
    from safetensors.numpy import load_file
    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    arch = "qwen3" if family == "qwen3" else "qwen2" if family == "qwen2" else "llama"
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(config.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    w.add_rope_dimension_count(head_dim)
    if tokenizer:
        _add_tokenizer(w)
    else:
        w.add_bos_token_id(config.bos_token_id)
        w.add_eos_token_id(config.eos_token_id)
        w.add_pad_token_id(config.pad_token_id)
    qtype = getattr(gguf.GGMLQuantizationType, quant)
    for name, x in tensors.items():
        x = x.astype(np.float32)
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            x = _llama_cpp_permute(x, config.num_attention_heads if ".q_proj." in name
                                   else config.num_key_value_heads)
        if x.ndim == 2 and quant != "F32":
            data = gguf.quants.quantize(x.astype(np.float16) if quant == "F16" else x, qtype)
            w.add_tensor(_gguf_name(name), data, raw_dtype=qtype)
        else:
            w.add_tensor(_gguf_name(name), np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)
