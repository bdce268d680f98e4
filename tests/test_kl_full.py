"""KL estimator 'full' (grpo_jax/losses/kl_full.py): the exact per-token KL(pi || pi_ref) from the log-prob chunks
equals a dense [N, T, V] computation on a tiny model, value and gradient within 1e-5; it is what sampled k1 / k3
average to; in the loss and through the train step (micro-batches, LoRA) it is the same quantity."""

import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import logprobs, losses, sharding, train_step
from grpo_jax.config import loss_config
from grpo_jax.losses import validate_loss_config
from grpo_jax.models import ModelConfig, forward, init_params, unembed
from train_fixtures import CFG as STEP_CFG
from train_fixtures import FAST_COMPILE, batch, config, max_abs_diff, params

CFG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, tie_word_embeddings=False)
MESH = sharding.make_mesh(sharding.mesh_config())


def _batch(p=2, g=3, s=6, t=5, seed=0, vocab=CFG.vocab_size):
    rng = np.random.RandomState(seed)
    mask = np.ones((p, s), bool)
    for i in range(p):
        mask[i, : rng.randint(0, s - 1)] = False  # left padding of varying length
    prompts = np.where(mask, rng.randint(1, vocab, (p, s)), 0).astype(np.int32)
    comps = rng.randint(1, vocab, (p * g, t)).astype(np.int32)
    return prompts, mask, comps


def _perturbed(model_params, scale, seed):
    """A reference near the policy: every parameter moved by scale * N(0, 1)."""
    leaves, tree = jax.tree.flatten(model_params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return tree.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def _dense_log_softmax(cfg, model_params, prompts, mask, comps, g, temperature):
    """[N, T, V]: each row its own left-padded sequence prompt ++ completion through `forward` (test only)."""
    full = np.concatenate([np.repeat(prompts, g, 0), comps], axis=1)
    full_mask = np.concatenate([np.repeat(mask, g, 0), np.ones(comps.shape, bool)], axis=1)
    s = prompts.shape[1]
    return jax.nn.log_softmax(forward(cfg, model_params, full, full_mask)[:, s - 1:-1] / temperature, axis=-1)


def _dense_kl(cfg, model_params, ref_params, prompts, mask, comps, g, temperature):
    lp = _dense_log_softmax(cfg, model_params, prompts, mask, comps, g, temperature)
    lq = _dense_log_softmax(cfg, ref_params, prompts, mask, comps, g, temperature)
    return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


def _hidden(cfg, model_params, prompts, mask, comps, g):
    prompt = logprobs.encode_prompt(cfg, model_params, prompts, mask)
    return logprobs.completion_hidden(cfg, model_params, prompt, comps, g)


def _chunked_kl(model_params, ref_params, prompts, mask, comps, g, temperature, chunk_size):
    ref_hidden = _hidden(CFG, ref_params, prompts, mask, comps, g)
    out = logprobs.completion_logprobs(CFG, model_params, prompts, mask, comps, g, temperature, chunk_size,
                                       reference=(ref_params, ref_hidden))
    return out[2]


# ---------------------------------------------------------------- the chunked computation vs a dense one


@pytest.mark.parametrize("chunk_size, temperature", [(2, 1.0), (0, 0.8)])  # 3 chunks (one padded), 1 chunk
def test_value_matches_a_dense_computation(chunk_size, temperature):
    policy = init_params(CFG, jax.random.PRNGKey(0))
    ref = _perturbed(policy, 0.05, 1)
    prompts, mask, comps = _batch()
    got = _chunked_kl(policy, ref, prompts, mask, comps, 3, temperature, chunk_size)
    want = _dense_kl(CFG, policy, ref, prompts, mask, comps, 3, temperature)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert float(jnp.min(want)) > 1e-2  # a real divergence at every position, not a trivial 0 = 0
    # The log-probs and entropy of the same call are unchanged by asking for the KL.
    lp, ent = logprobs.completion_logprobs(CFG, policy, prompts, mask, comps, 3, temperature, chunk_size)
    out = logprobs.completion_logprobs(CFG, policy, prompts, mask, comps, 3, temperature, chunk_size,
                                       reference=(ref, _hidden(CFG, ref, prompts, mask, comps, 3)))
    np.testing.assert_array_equal(out[0], lp)
    np.testing.assert_array_equal(out[1], ent)


def test_gradient_matches_a_dense_computation():
    policy = init_params(CFG, jax.random.PRNGKey(0))
    ref = _perturbed(policy, 0.05, 1)
    prompts, mask, comps = _batch()
    w = jnp.asarray(np.random.RandomState(3).randn(*comps.shape), jnp.float32)
    chunked = jax.grad(lambda p: jnp.sum(w * _chunked_kl(p, ref, prompts, mask, comps, 3, 0.9, 2)))(policy)
    dense = jax.grad(lambda p: jnp.sum(w * _dense_kl(CFG, p, ref, prompts, mask, comps, 3, 0.9)))(policy)
    assert max_abs_diff(chunked, dense) < 1e-5
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(dense)) > 1e-2


def test_zero_against_itself_and_no_gradient_reaches_the_reference():
    policy = init_params(CFG, jax.random.PRNGKey(0))
    prompts, mask, comps = _batch()
    np.testing.assert_allclose(_chunked_kl(policy, policy, prompts, mask, comps, 3, 1.0, 2), 0.0, atol=1e-6)
    ref = _perturbed(policy, 0.05, 1)
    ref_hidden = _hidden(CFG, ref, prompts, mask, comps, 3)

    def kl_sum(ref_params, hidden):
        out = logprobs.completion_logprobs(CFG, policy, prompts, mask, comps, 3, 1.0, 2,
                                           reference=(ref_params, hidden))
        return jnp.sum(out[2])

    g_params, g_hidden = jax.grad(kl_sum, argnums=(0, 1))(ref, ref_hidden)
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g_params)) == 0.0
    assert float(jnp.max(jnp.abs(g_hidden))) == 0.0


def test_no_vocabulary_sized_buffer_beyond_one_chunk():
    # The compiled value-and-gradient program of the exact KL: every float32 buffer with a vocabulary-sized axis
    # (besides the head's [D, V] weights) holds at most one chunk, N * chunk * V, never N * T * V. (With
    # chunk_size = T the same check sees [N * T, V] buffers: it can fail.)
    policy = init_params(CFG, jax.random.PRNGKey(0))
    ref = _perturbed(policy, 0.05, 1)
    prompts, mask, comps = _batch(t=8)
    ref_hidden = _hidden(CFG, ref, prompts, mask, comps, 3)
    n, t = comps.shape

    def kl_sum(p, chunk_size):
        return jnp.sum(logprobs.completion_logprobs(CFG, p, prompts, mask, comps, 3, 1.0, chunk_size,
                                                    reference=(ref, ref_hidden))[2])

    def largest_vocabulary_buffer(chunk_size):
        hlo = jax.jit(jax.grad(kl_sum), static_argnums=1).lower(policy, chunk_size).compile().as_text()
        shapes = {tuple(int(d) for d in m.split(",") if d) for m in re.findall(r"f32\[([0-9,]*)\]", hlo)}
        weights = {(CFG.hidden_size, CFG.vocab_size), (CFG.vocab_size, CFG.hidden_size)}
        return max(int(np.prod(x)) for x in shapes if CFG.vocab_size in x and x not in weights)

    assert largest_vocabulary_buffer(2) <= n * 2 * CFG.vocab_size < n * t * CFG.vocab_size
    assert largest_vocabulary_buffer(t) >= n * t * CFG.vocab_size


def test_sampled_k1_and_k3_average_to_it():
    # k1 = logp - ref_logp and k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 of tokens y ~ pi are unbiased
    # estimates of KL(pi || pi_ref) (Schulman 2020). At each of the N * T positions (contexts fixed), draw K tokens
    # from pi: the sample means must lie within 5 standard errors of the exact value (seeded; the bound fails with
    # probability < 1e-5 per comparison for a correct implementation).
    policy = init_params(CFG, jax.random.PRNGKey(0))
    ref = _perturbed(policy, 0.15, 1)
    prompts, mask, comps = _batch(p=2, g=2, t=4)
    g, temperature, k = 2, 0.9, 4000
    hidden = _hidden(CFG, policy, prompts, mask, comps, g)
    ref_hidden = _hidden(CFG, ref, prompts, mask, comps, g)
    exact = np.asarray(logprobs.token_logprobs(CFG, policy, hidden, comps, temperature,
                                               reference=(ref, ref_hidden))[2], np.float64)
    n, t = comps.shape
    logits = unembed(CFG, policy, hidden) / temperature  # [N, T, V]: the test's sampler, tiny
    y = jax.random.categorical(jax.random.PRNGKey(7), logits, shape=(k, n, t)).reshape(k * n, t)
    tile = lambda h: jnp.broadcast_to(h[None], (k,) + h.shape).reshape((k * n,) + h.shape[1:])
    lp = logprobs.token_logprobs(CFG, policy, tile(hidden), y, temperature, with_entropy=False)[0]
    lq = logprobs.token_logprobs(CFG, ref, tile(ref_hidden), y, temperature, with_entropy=False)[0]
    assert exact.min() > 0.05
    for name in ("k1", "k3"):
        est = np.asarray(losses.KL_ESTIMATORS[name](lp, lq), np.float64).reshape(k, n, t)
        se = est.std(axis=0, ddof=1) / np.sqrt(k)
        assert np.all(np.abs(est.mean(axis=0) - exact) < 5.0 * se), name
        assert se.max() < 0.15 * exact.min()  # the test resolves 15 % of the smallest KL


# ---------------------------------------------------------------- in the loss


def _loss_cfg(**overrides):
    cfg = loss_config()
    cfg.kl_estimator = "full"
    cfg.kl_beta = 0.5
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def test_the_loss_adds_beta_times_the_given_token_kl():
    # One sequence, two valid tokens and a masked one; on-policy ratio 1 and A = 1: policy term -1 per token.
    lp = np.array([[-1.0, -2.0, 5.0]], np.float32)
    mask = np.array([[1.0, 1.0, 0.0]], np.float32)
    token_kl = np.array([[0.2, 0.6, np.nan]], np.float32)  # the masked position is never read
    loss, m = losses.policy_loss(lp, lp, None, np.array([1.0]), mask, _loss_cfg(), inputs={"token_kl": token_kl})
    assert float(m["kl"]) == pytest.approx(0.4, abs=1e-6)
    assert float(loss) == pytest.approx(-1.0 + 0.5 * 0.4, abs=1e-6)
    with pytest.raises(ValueError, match=r"loss.kl_estimator 'full' reads the per-row inputs \['token_kl'\]"):
        losses.policy_loss(lp, lp, None, np.array([1.0]), mask, _loss_cfg())
    with pytest.raises(ValueError, match="needs ref_logps"):  # a sampled estimator still needs them
        losses.policy_loss(lp, lp, None, np.array([1.0]), mask, _loss_cfg(kl_estimator="k3"))


def _step_cfg(**kw):
    return config(kl_beta=2.0, kl_estimator="full", mask_truncated=True, entropy_coef=0.01, **kw)


def _direct_grad(p0, ref, b, cfg):
    """Independent reference: dense [N, T, V] log-softmaxes of policy and reference, the loss on the whole batch."""
    g, temp, t = cfg.rollout.group_size, cfg.rollout.temperature, cfg.rollout.max_new_tokens
    args = (b["prompt_tokens"], b["prompt_mask"], b["completions"], g, temp)

    def loss(p):
        lp_all = _dense_log_softmax(STEP_CFG, p, *args)
        lq_all = _dense_log_softmax(STEP_CFG, ref, *args)
        probs = jnp.exp(lp_all)
        logps = jnp.take_along_axis(lp_all, jnp.asarray(b["completions"])[..., None], axis=-1)[..., 0]
        inputs = {"token_kl": jnp.sum(probs * (lp_all - lq_all), axis=-1)}
        return losses.policy_loss(logps, b["old_logps"], None, b["advantages"], b["completion_mask"], cfg.loss,
                                  norm_length=t, truncated=b["truncated"], entropy=-jnp.sum(probs * lp_all, -1),
                                  keep=b["keep"], inputs=inputs)

    return jax.grad(loss, has_aux=True)(p0)


def test_train_step_gradient_is_the_dense_one_for_any_micro_batching():
    p0, ref = params(0), params(1)
    b = batch(p=4, g=2, seed=1, model_params=p0)
    want, want_m = _direct_grad(p0, ref, b, _step_cfg())
    without_kl, _ = _direct_grad(p0, ref, b, config(kl_beta=0.0, mask_truncated=True, entropy_coef=0.01))
    assert float(want_m["kl"]) > 1e-3 and max_abs_diff(want, without_kl) > 1e-3  # the KL term's share is real
    for micro in (0, 4):  # 1 and 2 micro-batches of whole groups
        got, m = train_step.make_grad_fn(STEP_CFG, _step_cfg(micro_batch_size=micro), MESH, FAST_COMPILE)(
            p0, None, ref, b)
        assert max_abs_diff(got, want) < 1e-5
        assert float(m["kl"]) == pytest.approx(float(want_m["kl"]), abs=1e-5)
        assert float(m["loss"]) == pytest.approx(float(want_m["loss"]), abs=1e-5)


def test_one_reference_pass_per_step_for_all_iterations(monkeypatch):
    # mu = 2 updates on one rollout: the reference's hidden states are computed once per call (traced once, run
    # once) and serve both iterations; the reference log-probs are never computed.
    counts = {"hidden_runs": 0, "hidden_traces": 0, "logprob_traces": 0}
    real = train_step.reference_hidden

    def counting(*args, **kwargs):
        counts["hidden_traces"] += 1
        out = real(*args, **kwargs)
        jax.debug.callback(lambda _: counts.__setitem__("hidden_runs", counts["hidden_runs"] + 1), out[0, 0, 0, 0])
        return out

    def no_logprobs(*args, **kwargs):
        counts["logprob_traces"] += 1
        raise AssertionError("the exact KL needs no reference log-probs")

    monkeypatch.setattr(train_step, "reference_hidden", counting)
    monkeypatch.setattr(train_step, "reference_logprobs", no_logprobs)
    p0, ref = params(0), params(1)
    b = batch(p=2, g=2, seed=3, model_params=p0)
    cfg = _step_cfg(num_iterations=2, lr=3e-2)
    state, _ = train_step.init_train_state(STEP_CFG, p0, cfg, MESH)
    step = train_step.make_train_step(STEP_CFG, cfg, MESH, FAST_COMPILE)
    state, metrics = step(state, None, ref, b)
    jax.block_until_ready(metrics)
    assert counts == {"hidden_runs": 1, "hidden_traces": 1, "logprob_traces": 0}
    assert int(state.step) == 2 and float(metrics["kl"]) > 0.0


def test_with_lora_the_reference_is_the_base():
    # LoRA starts with B = 0: the policy is the base, which is the reference, so the exact KL is 0 everywhere.
    cfg = _step_cfg()
    cfg.model.lora_rank = 2
    p0 = params(0)
    state, frozen = train_step.init_train_state(STEP_CFG, p0, cfg, MESH)
    b = batch(p=2, g=2, seed=2, model_params=p0)
    _, m = train_step.make_grad_fn(STEP_CFG, cfg, MESH, FAST_COMPILE)(state.params, frozen, None, b)
    assert abs(float(m["kl"])) < 1e-6


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("arg", [None, "countdown"])
def test_ablation_config(arg):
    c = importlib.import_module("configs.ablations.kl_full").get_config(arg)
    assert (c.loss.kl_estimator, c.loss.kl_beta) == ("full", 0.04)
    validate_loss_config(c.loss)
