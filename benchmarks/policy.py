"""The model a benchmark runs: a `models.load` source, or `tiny-random` (a random 2-layer model that smoke-tests a
benchmark's code path in seconds)."""

from __future__ import annotations

TINY = "tiny-random"


def load_policy(model: str):
    """(ModelConfig, params, tokenizer or None) of `model`, in float32."""
    import jax

    from grpo_jax import models
    if model == TINY:
        config = models.ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                                    num_kv_heads=2, head_dim=8, tie_word_embeddings=True, max_position_embeddings=512,
                                    eos_token_ids=(2,), pad_token_id=0)
        return config, jax.jit(models.init_params, static_argnums=0)(config, jax.random.PRNGKey(0)), None
    policy = models.load(model, dtype="float32")
    return policy.config, policy.params, policy.tokenizer
