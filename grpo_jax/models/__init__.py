"""The policy: config, the one decoder of every family as pure functions, loading and export.

    policy = models.load("smollm2-135m-instruct")            # Policy(config, params, tokenizer)
    logits = models.forward(policy.config, policy.params, tokens)
"""

from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.decoder import (KVCache, PrefixKV, causal_mask, decode_step, forward, hidden_states,
                                     init_params, padded_positions, param_logical_axes, unembed)
from grpo_jax.models.errors import CheckpointError
from grpo_jax.models.export import export_hf
from grpo_jax.models.families import FAMILIES
from grpo_jax.models.load import Policy, load
