"""Reading llama.cpp GGUF files: metadata -> ModelConfig, tensors -> HF-named float32 arrays, tokenizer.

Tensors are dequantised with the `gguf` package (gguf.quants.dequantize handles F32/F16/BF16 and the Q*/K/IQ
block formats) and renamed to HF names, so the same shape-checked path as safetensors builds the params.

llama.cpp's converter permutes the rows of the q/k projections of *llama* models so that its interleaved
("GPT-J") rope applies; grpo_jax (like HF) uses rotate-half rope, so `_unpermute_qk` undoes it, exactly as
transformers' GGUF loader does. Qwen2/Qwen3 use rotate-half ("NEOX") rope in llama.cpp and are stored unpermuted.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

import numpy as np

from grpo_jax.models import families
from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.errors import CheckpointError


_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_TOP_RE = re.compile(r"^(\w+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str:
    """The HF name of a GGUF tensor name (unknown names are returned unchanged)."""
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    m = _TOP_RE.match(gguf_name)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    return gguf_name


def _unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf `permute`: per head, rows (2, hd/2) -> (hd/2, 2) back to HF order.

    llama.cpp: w.reshape(n_head, 2, hd/2, *rest).swapaxes(1, 2); the inverse reads (n_head, hd/2, 2) and swaps back.
    """
    rest = w.shape[1:]
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _clean_float(x: float) -> float:
    """GGUF stores float32: 9.99999974e-06 -> 1e-05 (the shortest decimal that round-trips the float32)."""
    return float(str(np.float32(x)))


def read_metadata(reader, keys: Iterable[str]) -> dict[str, Any]:
    """The scalar/string GGUF metadata values of `keys` that the file has (arrays such as token lists skipped)."""
    out = {}
    for key in keys:
        field = reader.fields.get(key)
        if field is not None:
            out[key] = field.contents()
    return out


def config_from_gguf_metadata(meta: dict[str, Any], tensor_names: Iterable[str],
                              source: str = "model.gguf") -> ModelConfig:
    """Builds the ModelConfig from GGUF metadata (llama.cpp key names) and the file's tensor names.

    `meta` maps GGUF keys (e.g. "llama.embedding_length") to values; `source` names the file in errors.
    """
    names = set(tensor_names)
    arch = meta.get("general.architecture")
    fam = families.gguf_family(arch, source)

    def get(key: str, default: Any = None, required: bool = False):
        full = f"{arch}.{key}"
        if full not in meta or meta[full] is None:
            if required:
                raise CheckpointError(f"{source}: GGUF metadata has no {full!r}")
            return default
        return meta[full]

    scaling = get("rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise UnsupportedModelError(f"{source}: GGUF rope scaling {scaling!r} is not supported (only none)")
    if "rope_freqs.weight" in names:
        raise UnsupportedModelError(
            f"{source}: this GGUF bakes Llama 3.1-style rope scaling into a 'rope_freqs.weight' tensor, which "
            "grpo_jax does not read; load the HF safetensors checkpoint (config.json rope_scaling) instead")
    hidden = int(get("embedding_length", required=True))
    heads = int(get("attention.head_count", required=True))
    vocab = get("vocab_size")
    if vocab is None:
        vocab = len(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta else None
    if vocab is None:
        raise CheckpointError(f"{source}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return ModelConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length", required=True)),
        num_layers=int(get("block_count", required=True)),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("attention.key_length", hidden // heads)),
        max_position_embeddings=int(get("context_length", 8192)),
        rms_norm_eps=_clean_float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=_clean_float(get("rope.freq_base", 10000.0)),
        rope_scaling=None,
        tie_word_embeddings="output.weight" not in names,
        **fam.config_from_gguf(get, arch, names, source),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=(int(eos),) if eos is not None else (),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )


_CONFIG_KEYS = ("embedding_length", "attention.head_count", "attention.head_count_kv", "attention.key_length",
                "feed_forward_length", "block_count", "vocab_size", "context_length",
                "attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.scaling.type")
_GLOBAL_KEYS = ("general.architecture", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.model", "tokenizer.chat_template")


class GGUFCheckpoint:
    """A GGUF file as a TensorSource of HF-named float32 tensors (dequantised on `get`) plus its ModelConfig."""

    def __init__(self, path: str):
        import gguf

        self.path = path
        try:
            self.reader = gguf.GGUFReader(path)
        except Exception as e:  # bad magic, truncated header or tensor data
            raise CheckpointError(f"{path}: not a valid GGUF file, truncated or corrupt "
                                  f"({type(e).__name__}: {e})") from None
        arch = read_metadata(self.reader, ["general.architecture"]).get("general.architecture")
        self.metadata = read_metadata(self.reader, list(_GLOBAL_KEYS) + [f"{arch}.{k}" for k in _CONFIG_KEYS])
        if f"{arch}.vocab_size" not in self.metadata and "tokenizer.ggml.tokens" in self.reader.fields:
            self.metadata["tokenizer.ggml.tokens"] = range(len(self.reader.fields["tokenizer.ggml.tokens"].data))
        self._tensors = {hf_name(t.name): t for t in self.reader.tensors}
        self.config = config_from_gguf_metadata(self.metadata, [t.name for t in self.reader.tensors], source=path)
        self.reader_architecture = arch

    def names(self) -> Iterable[str]:
        return self._tensors.keys()

    def file_of(self, name: str) -> str:
        return self.path

    def shape(self, name: str) -> tuple[int, ...]:
        # GGUF lists dimensions fastest-first (ggml `ne`); numpy / HF order is the reverse.
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def get(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize

        t = self._tensors[name]
        try:
            # np.asarray drops the memmap subclass, whose per-slice bookkeeping slows dequantize ~2x.
            w = dequantize(np.asarray(t.data), t.tensor_type)
            w = np.asarray(w, dtype=np.float32).reshape(self.shape(name))
        except Exception as e:
            raise CheckpointError(f"{self.path}: cannot dequantise tensor {t.name!r} "
                                  f"({t.tensor_type.name}): {type(e).__name__}: {e}") from None
        if self.config.model_type == "llama":
            if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
                w = _unpermute_qk(w, self.config.num_heads)
            elif name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
                w = _unpermute_qk(w, self.config.num_kv_heads)
        return w

    @property
    def chat_template(self) -> Optional[str]:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def has_tokenizer(self) -> bool:
        return "tokenizer.ggml.model" in self.metadata


def tokenizer_metadata(reader) -> dict[str, Any]:
    """Every `tokenizer.*` GGUF field (vocabulary, merges, scores, special ids, chat template) as Python values."""
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}


def load_gguf_tokenizer(ckpt: "GGUFCheckpoint"):
    """The transformers fast tokenizer (vocab, merges, special tokens, chat template) from a GGUF's metadata.

    The metadata is read with the `gguf` package and converted by transformers' own GGUF tokenizer converter
    (`transformers.integrations.gguf.gguf_tokenizer_mapping`: the code behind
    `AutoTokenizer.from_pretrained(dir, gguf_file=...)`, whose file reader needs torch, which this does not).
    The grouping into tokenizer / tokenizer_config fields mirrors transformers' `get_gguf_tokenizer`.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (GGUF_TOKENIZER_MAPPING, _SPECIAL_TOKENS,
                                                                       convert_gguf_tokenizer)

    path = ckpt.path
    try:
        meta = tokenizer_metadata(ckpt.reader)
        grouped = {group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items()
                           if f"tokenizer.{key}" in meta}
                   for group, renames in GGUF_TOKENIZER_MAPPING.items()}
        tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
        if tokenizer_dict.get("tokenizer_type") == "llama":
            tokenizer_config.setdefault("add_bos_token", True)  # llama.cpp adds BOS to sentencepiece vocabularies
        tokens = tokenizer_dict["tokens"]
        for name, key in _SPECIAL_TOKENS.items():
            token_id = meta.get(f"tokenizer.ggml.{key}")
            tokenizer_config[name] = tokens[token_id] if token_id is not None else None
        backend, extra = convert_gguf_tokenizer(ckpt.reader_architecture, tokenizer_dict)
        return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot build the tokenizer from the GGUF metadata "
                              f"({type(e).__name__}: {e})") from None
