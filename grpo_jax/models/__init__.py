"""The policy: config, the Flax decoder as pure functions, loading and export.

    policy = models.load("smollm2-135m-instruct")            # Policy(config, params, tokenizer)
    logits = models.forward(policy.config, policy.params, tokens)
"""

from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.transformer import (KVCache, PrefixKV, causal_mask, forward, hidden_states, init_params,
                                         padded_positions, param_logical_axes, unembed)

from grpo_jax.models.errors import CheckpointError
from grpo_jax.models.export import export_hf
from grpo_jax.models.load import Policy, load
