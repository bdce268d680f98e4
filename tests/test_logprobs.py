"""Shared-prompt log-probs equal the plain per-sequence computation (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import logprobs
from grpo_jax.models import ModelConfig, forward, init_params

CFG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, tie_word_embeddings=False)


def _batch(p=3, g=4, s=7, t=6, seed=0):
    rng = np.random.RandomState(seed)
    prompts = rng.randint(1, CFG.vocab_size, (p, s)).astype(np.int32)
    mask = np.ones((p, s), bool)
    for i in range(p):
        mask[i, : rng.randint(0, s - 1)] = False  # left padding of varying length
    prompts = np.where(mask, prompts, 0)
    comps = rng.randint(1, CFG.vocab_size, (p * g, t)).astype(np.int32)
    return prompts, mask, comps


def _plain_logprobs(params, prompts, mask, comps, g, temperature=1.0):
    """Reference: each row is its own left-padded sequence prompt ++ completion, through `forward`."""
    full = np.concatenate([np.repeat(prompts, g, 0), comps], axis=1)
    full_mask = np.concatenate([np.repeat(mask, g, 0), np.ones(comps.shape, bool)], axis=1)
    logits = forward(CFG, params, full, full_mask) / temperature
    s = prompts.shape[1]
    lp = jax.nn.log_softmax(logits[:, s - 1:-1], axis=-1)
    return jnp.take_along_axis(lp, comps[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("chunk_size,temperature", [(0, 1.0), (4, 0.7), (1, 1.3)])
def test_shared_prompt_equals_plain(chunk_size, temperature):
    params = init_params(CFG, jax.random.PRNGKey(0))
    prompts, mask, comps = _batch()
    got, ent = logprobs.completion_logprobs(CFG, params, prompts, mask, comps, 4, temperature, chunk_size)
    want = _plain_logprobs(params, prompts, mask, comps, 4, temperature)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert ent.shape == got.shape and np.all(np.asarray(ent) > 0)


def test_shared_prompt_gradient_equals_plain():
    params = init_params(CFG, jax.random.PRNGKey(1))
    prompts, mask, comps = _batch(p=2, g=3, seed=1)
    weights = jnp.asarray(np.random.RandomState(2).randn(*comps.shape), jnp.float32)

    def shared(pr):
        return jnp.sum(weights * logprobs.completion_logprobs(CFG, pr, prompts, mask, comps, 3, chunk_size=2)[0])

    def plain(pr):
        return jnp.sum(weights * _plain_logprobs(pr, prompts, mask, comps, 3))

    g1, g2 = jax.grad(shared)(params), jax.grad(plain)(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_entropy_matches_definition():
    params = init_params(CFG, jax.random.PRNGKey(3))
    prompts, mask, comps = _batch(p=1, g=2, s=4, t=3)
    _, ent = logprobs.completion_logprobs(CFG, params, prompts, mask, comps, 2)
    full = np.concatenate([np.repeat(prompts, 2, 0), comps], axis=1)
    full_mask = np.concatenate([np.repeat(mask, 2, 0), np.ones(comps.shape, bool)], axis=1)
    p = jax.nn.softmax(forward(CFG, params, full, full_mask)[:, 3:-1], axis=-1)
    want = -jnp.sum(p * jnp.log(p), axis=-1)
    np.testing.assert_allclose(ent, want, atol=2e-5)


def test_row_count_checked():
    params = init_params(CFG, jax.random.PRNGKey(0))
    prompts, mask, comps = _batch()
    with pytest.raises(ValueError, match="expected prompts x group_size"):
        logprobs.completion_logprobs(CFG, params, prompts, mask, comps[:-1], 4)
