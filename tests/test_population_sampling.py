"""Each population member's completions of the step's prompts (`population.sampling.sample_members`): member k's
result is `Sampler.sample`'s for member k alone with the same key (common random numbers), for members with
different adapters and sampling settings; K identical members give K identical rollouts equal to the single
policy's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import evaluation, train_step
from grpo_jax.models import ModelConfig, init_params, lora
from grpo_jax.population import sampling as population_sampling
from grpo_jax.population.train import stack_states
from tiny_tokenizer import VOCAB_SIZE, make_tokenizer

CONFIG = ModelConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, max_position_embeddings=128, tie_word_embeddings=False,
                     eos_token_ids=(2,), pad_token_id=0)
EXAMPLES = [{"id": f"e{i}", "prompt": [{"role": "user", "content": text}]}
            for i, text in enumerate(["1+2=", "34*5", "7", "9-80/2"])]
G, T = 4, 12
KEY = jax.random.PRNGKey(7)
RANK, ALPHA = 4, 8.0


@functools.lru_cache(maxsize=None)
def _base(config=CONFIG):
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 20.0  # peaked: rows stop at different lengths
    return params


def _adapters(seed, config=CONFIG):
    """Random adapters with B != 0 (the member's policy is not the base)."""
    tree = lora.init_lora(_base(config), RANK, jax.random.PRNGKey(seed))
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.5 * rng.randn(*x.shape).astype(np.float32)), tree)


def _states(seeds, config=CONFIG):
    return stack_states([train_step.TrainState(_adapters(s, config), (), jnp.zeros((), jnp.int32), ALPHA)
                         for s in seeds])


@functools.lru_cache(maxsize=None)
def _sampler(config=CONFIG, max_decode_rows=0):
    return evaluation.Sampler(config, make_tokenizer(), None, max_decode_rows=max_decode_rows)


def _same(want, got):
    for field in ("tokens", "mask", "lengths", "truncated"):
        np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)),
                                      err_msg=field)
    np.testing.assert_allclose(np.asarray(got.logps), np.asarray(want.logps), atol=1e-5, rtol=0)


def _alone(sampler, states_tree, k, temperature, top_p, config=CONFIG):
    params = lora.merge(_base(config), jax.tree.map(lambda x: x[k], states_tree.params), ALPHA, RANK)
    return sampler.sample(params, EXAMPLES, KEY, group_size=G, max_new_tokens=T, temperature=temperature,
                          top_p=top_p)


def test_each_member_gets_its_rollout_alone():
    states = _states((1, 2, 3))
    temps, top_ps = (1.0, 0.7, 1.3), (1.0, 0.9, 0.8)
    sampler = _sampler()
    got = population_sampling.sample_members(sampler, CONFIG, states, _base(), EXAMPLES, KEY, group_size=G,
                                             max_new_tokens=T, temperature=temps, top_p=top_ps)
    assert len(got) == 3
    for k in range(3):
        (tokens, mask), want, completions = _alone(sampler, states, k, temps[k], top_ps[k])
        np.testing.assert_array_equal(got[k][0][0], tokens)
        np.testing.assert_array_equal(got[k][0][1], mask)
        _same(want, got[k][1])
        assert got[k][2].texts == completions.texts
    # members differ (so the comparison above can fail)
    assert not np.array_equal(np.asarray(got[0][1].tokens), np.asarray(got[1][1].tokens))


def test_identical_members_give_the_single_policy_rollout():
    states = _states((4, 4, 4))
    sampler = _sampler()
    got = population_sampling.sample_members(sampler, CONFIG, states, _base(), EXAMPLES, KEY, group_size=G,
                                             max_new_tokens=T, temperature=(0.9,) * 3, top_p=(1.0,) * 3)
    _, want, _ = _alone(sampler, states, 0, 0.9, 1.0)
    for k in range(3):
        _same(want, got[k][1])
