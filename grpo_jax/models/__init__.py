"""The policy: config, the Flax decoder as pure functions, loading and export.

    policy = models.load("smollm2-135m-instruct")            # Policy(config, params, tokenizer)
    logits = models.forward(policy.config, policy.params, tokens)
"""

from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.transformer import (KVCache, PrefixKV, causal_mask, forward, hidden_states, init_params,
                                         padded_positions, param_logical_axes, unembed)

_LAZY = {"load": "grpo_jax.models.load", "Policy": "grpo_jax.models.load", "CheckpointError": "grpo_jax.models.load",
         "export_hf": "grpo_jax.models.export"}


def __getattr__(name):  # loading pulls in transformers/gguf: import it on first use only
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'grpo_jax.models' has no attribute {name!r}")
