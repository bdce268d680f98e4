"""Each population member's completions of the step's prompts (`population.sampling.sample_members`) and the joint
decode loop under it (`sampling.generate(members=)`): K LoRA members over one frozen base decoded in one loop give,
for member k, the rollout the single policy (the base merged with member k's adapters) gets alone with member k's
temperature / top_p and the same key -- same tokens, lengths and truncation, log-probs within 1e-5 -- with
compaction on and off, with refill, and with the layers unrolled; K identical members give K identical rollouts
equal to the single policy's; a member's adapters reach only its own rows."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import batching, evaluation, rollout, sampling, train_step
from grpo_jax.models import ModelConfig, decoder, init_params, lora
from grpo_jax.population import sampling as population_sampling
from grpo_jax.population.train import stack_states
from grpo_jax.rollout import program
from tiny_tokenizer import VOCAB_SIZE, make_tokenizer

CONFIG = ModelConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, max_position_embeddings=128, tie_word_embeddings=False,
                     eos_token_ids=(2,), pad_token_id=0)
EXAMPLES = [{"id": f"e{i}", "prompt": [{"role": "user", "content": text}]}
            for i, text in enumerate(["1+2=", "34*5", "7", "9-80/2"])]
G, T = 4, 12
KEY = jax.random.PRNGKey(7)
RANK, ALPHA = 4, 8.0
K = 3
TEMPS, TOP_PS = (1.0, 0.7, 1.3), (0.95, 0.9, 0.8)   # all < 1: one program (top-p on) for every member


@functools.lru_cache(maxsize=None)
def _base(config=CONFIG):
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 10.0  # peaked: rows stop at different lengths
    return params


def _adapters(seed, config=CONFIG, noise=0.1):
    """Random adapters with B != 0 (the member's policy is not the base)."""
    tree = lora.init_lora(_base(config), RANK, jax.random.PRNGKey(seed))
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + noise * rng.randn(*x.shape).astype(np.float32)), tree)


def _stacked(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _states(seeds, config=CONFIG):
    return stack_states([train_step.TrainState(_adapters(s, config), (), jnp.zeros((), jnp.int32), ALPHA)
                         for s in seeds])


@functools.lru_cache(maxsize=None)
def _sampler(config=CONFIG, max_decode_rows=0):
    return evaluation.Sampler(config, make_tokenizer(), None, max_decode_rows=max_decode_rows)


def _np(rollout):
    return jax.tree.map(np.asarray, rollout)


def _same(want, got):
    want, got = _np(want), _np(got)
    for field in ("tokens", "mask", "lengths", "truncated"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    np.testing.assert_allclose(got.logps, want.logps, atol=1e-5, rtol=0)


def _member_rows(rollout, k, n):
    return sampling.Rollout(*(np.asarray(x)[k * n:(k + 1) * n] for x in rollout))


def _alone(sampler, states, k, temperature, top_p, config=CONFIG):
    params = lora.merge(_base(config), jax.tree.map(lambda x: x[k], states.params), ALPHA, RANK)
    return sampler.sample(params, EXAMPLES, KEY, group_size=G, max_new_tokens=T, temperature=temperature,
                          top_p=top_p)


# ------------------------------------------------------------------------------------------------ the decoder


@functools.partial(jax.jit, static_argnums=0)
def _logits(config, params, tokens, adapters=None):
    mask = jnp.ones(tokens.shape, bool)
    hidden, _ = decoder.hidden_states(config, params, tokens, decoder.padded_positions(mask),
                                      decoder.causal_mask(mask), adapters=adapters)
    return decoder.unembed(config, params, hidden)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
def test_unmerged_member_adapters_equal_merged_kernels(scan_layers):
    """Row b run with `adapters` (its member's unmerged update) gives the logits of the base merged with that
    member's adapters, within 1e-5; attention biases on, members in mixed row order."""
    config = CONFIG.replace(scan_layers=scan_layers, attention_bias=True)
    base = jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
    trees = [_adapters(s, config, noise=0.3) for s in range(K)]
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, config.vocab_size, (6, 7)), jnp.int32)
    member = np.array([2, 0, 1, 1, 0, 2], np.int32)
    got = np.asarray(_logits(config, base, tokens, lora.member_adapters(lora.Members(_stacked(trees), ALPHA),
                                                                        member)))
    base_logits = np.asarray(_logits(config, base, tokens))
    merged = [np.asarray(_logits(config, lora.merge(base, tree, ALPHA, RANK), tokens)) for tree in trees]
    for b, k in enumerate(member):
        np.testing.assert_allclose(got[b], merged[k][b], atol=1e-5, rtol=0, err_msg=f"row {b}")
        assert np.abs(merged[k][b] - base_logits[b]).max() > 1e-2  # the adapters matter


# ------------------------------------------------------------------------------------------------ the joint loop


def _prompts():
    return batching.left_pad([[5, 6, 7], [8, 9, 10, 11, 12], [3], [14, 15, 16, 17]], pad_id=0, bucket=8)


LOOPS = {
    "plain": dict(compact=False),
    "compacted": dict(compact=True),
    "refilled": dict(compact=True, max_decode_rows=16),
    "unrolled": dict(compact=True, scan_layers=False),
}


@pytest.mark.parametrize("loop", list(LOOPS), ids=list(LOOPS))
def test_joint_loop_equals_each_member_alone(loop):
    """3 members with different adapters, temperatures and top-p, decoded in one loop (48 rows), equal the single
    policy of each merged member with the same key; compaction / refill really ran (the loop's counters)."""
    options = dict(LOOPS[loop])
    config = CONFIG.replace(scan_layers=options.pop("scan_layers", True))
    trees = [_adapters(s, config) for s in (1, 2, 3)]
    tokens, mask = _prompts()
    settings = dict(group_size=G, max_new_tokens=20, stop_ids=(1, 2, 3, 4, 5, 6), top_k=0, **options)
    joint, stats = sampling.generate_with_stats(config, _base(config), tokens, mask, KEY, temperature=TEMPS,
                                                top_p=TOP_PS, members=lora.Members(_stacked(trees), ALPHA),
                                                **settings)
    n = tokens.shape[0] * G
    assert np.asarray(joint.tokens).shape == (K * n, 20)
    for k in range(K):
        want = sampling.generate(config, lora.merge(_base(config), trees[k], ALPHA, RANK), tokens, mask, KEY,
                                 temperature=TEMPS[k], top_p=TOP_PS[k], **settings)
        _same(want, _member_rows(joint, k, n))
    lengths = np.asarray(joint.lengths).reshape(K, n)
    assert not np.array_equal(lengths[0], lengths[1])  # members differ
    if options.get("compact"):
        assert stats.steps[1:].sum() > 0, stats
    if options.get("max_decode_rows"):
        assert stats.refilled > 0, stats


def test_a_member_s_adapters_reach_only_its_rows():
    """Perturbing member 1's adapters changes member 1's rows and leaves members 0 and 2 exactly as they were."""
    trees = [_adapters(s) for s in (1, 2, 3)]
    tokens, mask = _prompts()
    settings = dict(group_size=G, max_new_tokens=20, stop_ids=(1, 2, 3, 4, 5, 6), temperature=TEMPS, top_p=TOP_PS)
    before = _np(sampling.generate(CONFIG, _base(), tokens, mask, KEY, members=lora.Members(_stacked(trees), ALPHA),
                                   **settings))
    trees[1] = jax.tree.map(lambda x: x * 1.5, trees[1])
    after = _np(sampling.generate(CONFIG, _base(), tokens, mask, KEY, members=lora.Members(_stacked(trees), ALPHA),
                                  **settings))
    n = tokens.shape[0] * G
    for k in (0, 2):
        for field in sampling.Rollout._fields:
            np.testing.assert_array_equal(getattr(_member_rows(after, k, n), field),
                                          getattr(_member_rows(before, k, n), field), err_msg=f"{k} {field}")
    assert not np.array_equal(_member_rows(after, 1, n).logps, _member_rows(before, 1, n).logps)


def test_member_settings_are_traced():
    """Other temperatures, top-p values and adapters of K members run the same compiled program."""
    trees = _stacked([_adapters(s) for s in (1, 2, 3)])
    tokens, mask = _prompts()
    settings = dict(group_size=G, max_new_tokens=8, stop_ids=(1, 2))
    sampling.generate(CONFIG, _base(), tokens, mask, KEY, temperature=TEMPS, top_p=TOP_PS,
                      members=lora.Members(trees, ALPHA), **settings)
    fn = program.compiled(CONFIG, rollout.Settings(top_p=TOP_PS, compact=False, **settings), members=K)
    before = fn._cache_size()
    sampling.generate(CONFIG, _base(), tokens, mask, KEY, temperature=(0.5, 0.6, 2.0), top_p=(0.3, 0.99, 0.5),
                      members=lora.Members(jax.tree.map(lambda x: -x, trees), 4.0), **settings)
    assert fn._cache_size() == before == 1


# ------------------------------------------------------------------------------------------------ sample_members


def test_each_member_gets_its_rollout_alone():
    states = _states((1, 2, 3))
    sampler = _sampler()
    got = population_sampling.sample_members(sampler, CONFIG, states, _base(), EXAMPLES, KEY, group_size=G,
                                             max_new_tokens=T, temperature=TEMPS, top_p=TOP_PS)
    assert len(got) == K
    for k in range(K):
        (tokens, mask), want, completions = _alone(sampler, states, k, TEMPS[k], TOP_PS[k])
        np.testing.assert_array_equal(got[k][0][0], tokens)
        np.testing.assert_array_equal(got[k][0][1], mask)
        _same(want, got[k][1])
        assert got[k][2].texts == completions.texts and got[k][2].start == completions.start
        np.testing.assert_array_equal(got[k][2].lengths, completions.lengths)
    assert not np.array_equal(np.asarray(got[0][1].tokens), np.asarray(got[1][1].tokens))  # members differ


def test_identical_members_give_the_single_policy_rollout():
    states = _states((4, 4, 4))
    sampler = _sampler()
    got = population_sampling.sample_members(sampler, CONFIG, states, _base(), EXAMPLES, KEY, group_size=G,
                                             max_new_tokens=T, temperature=(0.8,) * K, top_p=(0.9,) * K)
    _, want, _ = _alone(sampler, states, 0, 0.8, 0.9)
    for k in range(K):
        _same(want, got[k][1])
        np.testing.assert_array_equal(np.asarray(got[k][1].tokens), np.asarray(got[0][1].tokens))


def test_full_finetuning_members_sample_one_by_one():
    """frozen None: each member's own full params, sampled one member at a time, each its own rollout."""
    params = [_base(), lora.merge(_base(), _adapters(5), ALPHA, RANK)]
    states = stack_states([train_step.TrainState(p, (), jnp.zeros((), jnp.int32)) for p in params])
    sampler = _sampler()
    got = population_sampling.sample_members(sampler, CONFIG, states, None, EXAMPLES, KEY, group_size=G,
                                             max_new_tokens=T, temperature=(1.0, 0.8), top_p=(0.95, 0.9))
    for k, (temperature, top_p) in enumerate(((1.0, 0.95), (0.8, 0.9))):
        _, want, _ = sampler.sample(params[k], EXAMPLES, KEY, group_size=G, max_new_tokens=T,
                                    temperature=temperature, top_p=top_p)
        _same(want, got[k][1])


def test_sample_members_checks_one_value_per_member():
    with pytest.raises(ValueError, match="one value per member"):
        population_sampling.sample_members(_sampler(), CONFIG, _states((1, 2)), _base(), EXAMPLES, KEY,
                                           group_size=G, max_new_tokens=T, temperature=(1.0,), top_p=(1.0, 1.0))


def test_joint_loop_same_on_one_and_four_devices():
    """The members' joint loop on a (data 4) mesh equals one device's, 3 prompts padded to 4 (each member's padding
    rows dropped), with compaction and with refill (a fresh interpreter: XLA fixes the device count at import)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip())
    env["PYTHONPATH"] = os.path.dirname(here) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.join(here, "population_sampling_sharded_check.py")], env=env,
                          cwd=os.path.dirname(here), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4
    for name in ("compacted", "refilled"):
        case = report[name]
        assert case["rows"] == 2 * 3 * 2 and case["tokens_equal"] and case["lengths_equal"], (name, case)
        assert case["logps_diff"] <= 1e-5, (name, case)
