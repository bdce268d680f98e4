"""ModelConfig: the architecture of one checkpoint as data, read by the one decoder (`models.decoder`).

Each family's file in `models/families/` builds it from an HF config.json (or GGUF metadata); what differs between
families is a field here, not a copy of the decoder:
  - Qwen2/2.5 put a bias on the q/k/v projections (`attention_bias`).
  - Qwen3 and Gemma 3 RMS-normalise queries and keys per head (`qk_norm`).
  - Llama 3.1+ rescales RoPE frequencies (`rope_scaling = {"rope_type": "llama3", ...}`).
  - Gemma 2/3: (1 + w) norms, scaled embeddings, sandwich norms, GeGLU, `query_pre_attn_scalar`, soft-capping,
    sliding-window layers with their own rope base.
  - Small models tie the output projection to the embedding (`tie_word_embeddings`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from grpo_jax.models.layers import ACTIVATIONS, ATTENTION_IMPLEMENTATIONS


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
    # Run the layers as one scanned loop (compile time independent of depth) or unrolled, each layer on its own
    # weights and, when decoding, its own KV-cache buffer (MaxText's scan_layers). Same math either way.
    scan_layers: bool = True
    # Attention kernel: 'xla' (the einsum path of `layers.attention`), 'dot_product' (jax.nn.dot_product_attention,
    # the backend's choice), 'cudnn' (its cuDNN flash attention; GPU only).
    attention: str = "xla"
    # --- what differs between families (set by the family's config parser, see models/families/) ---
    norm_offset: float = 0.0          # RMSNorm scale = offset + weight (Gemma: 1)
    embed_scale: bool = False         # embeddings times sqrt(hidden_size) (Gemma)
    sandwich_norms: bool = False      # extra norms on the attention and MLP outputs (Gemma 2/3)
    activation: str = "silu"          # gated-MLP activation: 'silu' (SwiGLU) | 'gelu_tanh' (GeGLU)
    query_pre_attn_scalar: Optional[float] = None  # q.k scaled by its -1/2 power; None = head_dim
    attn_softcap: Optional[float] = None   # attention scores soft-capped as c * tanh(s / c) (Gemma 2)
    final_softcap: Optional[float] = None  # logits soft-capped the same way (Gemma 2)
    sliding_window: Optional[int] = None   # key j is read by query i only if pos_i - pos_j < window ...
    layer_types: tuple = ()                # ... on the layers marked "sliding_attention" (() = every layer)
    rope_local_theta: Optional[float] = None  # rope base of the sliding layers (Gemma 3); None = rope_theta

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, "
                             f"got {self.attention!r}")
        if self.attention != "xla" and self.attn_softcap is not None:
            raise ValueError(f"attention={self.attention!r} has no attention-logit soft-capping, which this "
                             f"{self.model_type} model uses (attn_softcap={self.attn_softcap}); use 'xla'")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")

    @property
    def rope_scaling_dict(self) -> Optional[dict]:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @property
    def sliding_layers(self) -> tuple:
        """One bool per layer: True where the layer attends within `sliding_window` positions only."""
        if self.sliding_window is None:
            return (False,) * self.num_layers
        if not self.layer_types:
            return (True,) * self.num_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @property
    def attention_scale(self) -> float:
        """The factor on q.k: 1/sqrt(query_pre_attn_scalar) (Gemma), else 1/sqrt(head_dim)."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)
