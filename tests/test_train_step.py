"""The train step: gradient accumulation equals the full-batch gradient for every aggregation mode, mu updates per
call with the reference computed once (never when kl_beta = 0), the optimizer chain, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax import logprobs, losses, optim, sharding, train_step
from train_fixtures import CFG, FAST_COMPILE, batch, config, max_abs_diff, model_logprobs, params

MESH = sharding.make_mesh(sharding.mesh_config())


def _direct_grad(model_params, ref_params, b, cfg):
    """Independent reference: jax.grad of policy_loss on the whole batch, written out without the train step."""
    g, temp, t = cfg.rollout.group_size, cfg.rollout.temperature, cfg.rollout.max_new_tokens
    ref, _ = logprobs.completion_logprobs(CFG, ref_params, b["prompt_tokens"], b["prompt_mask"], b["completions"],
                                          g, temp)

    def loss(p):
        lp, ent = logprobs.completion_logprobs(CFG, p, b["prompt_tokens"], b["prompt_mask"], b["completions"], g, temp)
        return losses.policy_loss(lp, b["old_logps"], ref, b["advantages"], b["completion_mask"], cfg.loss,
                                  norm_length=t, truncated=b["truncated"], entropy=ent, keep=b["keep"])[0]

    return jax.jit(jax.grad(loss), compiler_options=FAST)(model_params)


FAST = FAST_COMPILE  # tiny models: compilation dominates the test time


@pytest.mark.parametrize("aggregation", sorted(losses.AGGREGATIONS))
def test_micro_batches_give_the_full_batch_gradient(aggregation):
    p0, ref = params(0), params(1)
    b = batch(p=4, g=2, seed=1, model_params=p0)
    grads = {}
    for micro in (0, 4, 2):  # 1, 2 and 4 micro-batches of whole groups
        cfg = config(micro_batch_size=micro, aggregation=aggregation, mask_truncated=True, entropy_coef=0.01)
        g, metrics = train_step.make_grad_fn(CFG, cfg, MESH, FAST)(p0, None, ref, b)
        grads[micro] = g
        if micro == 0:
            full_loss = float(metrics["loss"])
        else:  # the loss (a sum of micro-batch sums over global denominators) is the full-batch loss too
            assert abs(float(metrics["loss"]) - full_loss) < 1e-6
    assert max_abs_diff(grads[0], grads[4]) < 1e-6
    assert max_abs_diff(grads[0], grads[2]) < 1e-6
    if aggregation == "token_mean":  # and it is the plain full-batch gradient, not just self-consistent
        want = _direct_grad(p0, ref, b, config(aggregation=aggregation, mask_truncated=True, entropy_coef=0.01))
        assert max_abs_diff(grads[0], want) < 1e-6
        assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(want)) > 1e-3  # not trivially zero


class _RefCounter:
    """Wraps train_step.reference_logprobs: counts traces, and executions via a host callback."""

    def __init__(self, monkeypatch):
        self.traces, self.runs = 0, 0
        real = train_step.reference_logprobs

        def counting(*args, **kwargs):
            self.traces += 1
            out = real(*args, **kwargs)
            jax.debug.callback(self._ran, out[0, 0, 0])
            return out

        monkeypatch.setattr(train_step, "reference_logprobs", counting)

    def _ran(self, _):
        self.runs += 1


def test_adamw_steps_micro_batches_and_mu_iterations(monkeypatch):
    """A real AdamW step is the same with 1 and 4 micro-batches; mu = 2 updates in one call (2 micro-batches
    each) equal two mu = 1 calls on the same rollout (same old and reference log-probs); the reference forward
    runs once per call, not once per iteration; the caller's params are never donated."""
    counter = _RefCounter(monkeypatch)
    p0, ref = params(0), params(1)
    b = batch(p=4, g=2, seed=2, model_params=p0)

    def run(micro, mu, calls):
        cfg = config(micro_batch_size=micro, lr=1e-3, num_iterations=mu)
        state, frozen = train_step.init_train_state(CFG, p0, cfg, MESH)
        step = train_step.make_train_step(CFG, cfg, MESH, FAST)
        out, after = [], []
        for _ in range(calls):
            state, metrics = step(state, frozen, ref, b)
            out.append(metrics)
            after.append(jax.tree.map(jnp.copy, state.params))  # `state` is donated by the next call
        return jax.block_until_ready(state), out, after

    one, (m_a, m_b), (first_of_one, _) = run(micro=0, mu=1, calls=2)
    assert (counter.traces, counter.runs) == (1, 2)
    four, _, _ = run(micro=2, mu=1, calls=1)
    assert counter.runs == 3
    two_iters, (m2,), _ = run(micro=4, mu=2, calls=1)
    assert (counter.traces, counter.runs) == (3, 4)

    assert int(one.step) == 2 and int(four.step) == 1 and int(two_iters.step) == 2
    assert max_abs_diff(first_of_one, four.params) < 1e-6  # 1 vs 4 micro-batches, after an AdamW step
    assert max_abs_diff(first_of_one, p0) > 1e-4  # the step did move the params
    assert max_abs_diff(one.params, two_iters.params) < 1e-6
    assert max_abs_diff(one.opt_state, two_iters.opt_state) < 1e-6
    assert max_abs_diff(p0, params(0)) == 0.0  # the caller's params were not donated or changed
    # metrics are averaged over the iterations; the mismatch is the first iteration's
    np.testing.assert_allclose(m2["loss"], (m_a["loss"] + m_b["loss"]) / 2, atol=1e-6)
    np.testing.assert_allclose(m2["logp_mismatch/max"], m_a["logp_mismatch/max"], atol=1e-6)
    assert float(m2["ratio/max"]) >= max(float(m_a["ratio/max"]), float(m_b["ratio/max"])) - 1e-6
    np.testing.assert_allclose(m2["learning_rate"], 1e-3, rtol=1e-6)
    for name in ("loss", "policy_loss", "kl", "entropy", "clip_ratio/region_mean", "logp_mismatch/mean"):
        assert np.isfinite(float(m2[name])), name


def test_kl_beta_zero_never_computes_the_reference(monkeypatch):
    counter = _RefCounter(monkeypatch)
    p0 = params(0)
    b = batch(p=4, g=2, seed=4)
    cfg = config(kl_beta=0.0, lr=1e-2)
    cfg.optim.warmup_steps = 4
    cfg.optim.max_grad_norm = 1e-3
    cfg.optim.skip_zero_advantage = False  # every row's log-probs computed: the mismatch metric reads them all
    state, _ = train_step.init_train_state(CFG, p0, cfg, MESH)
    step = train_step.make_train_step(CFG, cfg, MESH, FAST)
    state, metrics = step(state, None, None, b)  # no reference params exist at all
    assert (counter.traces, counter.runs) == (0, 0)
    assert "kl" not in metrics and np.isfinite(float(metrics["loss"]))
    assert float(metrics["learning_rate"]) == 0.0  # warmup starts at 0 (HF's convention)
    assert float(metrics["grad_norm"]) > 1e-3  # logged before clipping
    # old log-probs = the trainer's own: the sampler/trainer mismatch metric reads 0; a shifted token shows up
    exact, _ = model_logprobs(state.params, b["prompt_tokens"], b["prompt_mask"], b["completions"], 2, 0.9)
    b["old_logps"] = np.asarray(exact).copy()
    b["old_logps"][1, 0] += 0.25
    ended = int(np.flatnonzero(b["completion_mask"][:, -1] == 0)[0])
    b["old_logps"][ended, -1] += 7.0  # a masked position (that row ended early): never read
    state, metrics = step(state, None, None, b)
    np.testing.assert_allclose(metrics["logp_mismatch/max"], 0.25, atol=1e-5)
    np.testing.assert_allclose(metrics["ratio/min"], np.exp(-0.25), atol=1e-5)
    np.testing.assert_allclose(metrics["learning_rate"], 1e-2 / 4, rtol=1e-6)


def test_schedules():
    cfg = optim.optim_config()
    cfg.lr, cfg.warmup_steps = 1.0, 4
    constant = optim.make_schedule(cfg, 20)
    np.testing.assert_allclose([float(constant(i)) for i in (0, 2, 4, 19)], [0.0, 0.5, 1.0, 1.0])
    cfg.schedule = "cosine"
    cosine = optim.make_schedule(cfg, 20)
    # after warmup: 0.5 * (1 + cos(pi * (i - 4) / 16))
    np.testing.assert_allclose([float(cosine(i)) for i in (2, 4, 12, 20)], [0.5, 1.0, 0.5, 0.0], atol=1e-6)
    assert optim.optim_config().lr == 1e-6 and optim.optim_config().weight_decay == 0.0


def test_optimizer_clips_then_adamw():
    cfg = optim.optim_config()
    cfg.lr, cfg.max_grad_norm, cfg.weight_decay = 0.1, 1.0, 0.5
    tx = optim.make_optimizer(cfg, 10)
    p = {"w": {"kernel": jnp.full((2, 2), 2.0)}, "n": {"scale": jnp.ones(3)}}
    g = {"w": {"kernel": jnp.full((2, 2), 30.0)}, "n": {"scale": jnp.zeros(3)}}
    updates, _ = tx.update(g, tx.init(p), p)
    # first Adam step: m_hat / sqrt(v_hat) = sign(g) = 1; decoupled decay 0.5 * w on kernels only
    np.testing.assert_allclose(updates["w"]["kernel"], -0.1 * (1.0 + 0.5 * 2.0), rtol=1e-5)
    np.testing.assert_allclose(updates["n"]["scale"], 0.0)
    want_clipped = optax.clip_by_global_norm(1.0).update(g, None)[0]["w"]["kernel"]
    np.testing.assert_allclose(want_clipped, 0.5)  # 30 * 1 / sqrt(4 * 900)


@pytest.mark.parametrize("field,value,match", [
    ("schedule", "linear", "unknown optim.schedule 'linear'"),
    ("lr", -1.0, "optim.lr must be a non-negative number, got -1.0"),
    ("warmup_steps", -2, "optim.warmup_steps must be a non-negative integer, got -2"),
    ("b2", 1.0, r"optim.b2 must be in \[0, 1\), got 1.0"),
])
def test_bad_optim_config(field, value, match):
    cfg = optim.optim_config()
    cfg[field] = value
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(cfg, 10)


def test_bad_batches_name_the_value():
    p0 = params(0)
    b = batch(p=4, g=2, seed=6)
    with pytest.raises(ValueError, match="micro_batch_size = 3 is not a multiple of rollout.group_size = 2"):
        train_step.make_train_step(CFG, config(micro_batch_size=3), MESH)
    step = train_step.make_train_step(CFG, config(micro_batch_size=6), MESH)
    state, _ = train_step.init_train_state(CFG, p0, config(micro_batch_size=6), MESH)
    with pytest.raises(ValueError, match="micro_batch_size = 6 does not divide the step's 8 sequences"):
        step(state, None, p0, b)
    step = train_step.make_train_step(CFG, config(), MESH)
    with pytest.raises(ValueError, match="loss.kl_beta = 0.04 > 0 needs the reference params"):
        step(state, None, None, b)
    short = dict(b, completions=b["completions"][:-2])
    with pytest.raises(ValueError, match="6 completions for 4 prompts; expected .* = 8"):
        step(state, None, p0, short)
    with pytest.raises(ValueError, match=r"batch\['old_logps'\] has shape \(8, 4\), expected \(8, 5\)"):
        step(state, None, p0, dict(b, old_logps=b["old_logps"][:, :4]))
    with pytest.raises(ValueError, match="lacks \\['advantages'\\]"):
        step(state, None, p0, {k: v for k, v in b.items() if k != "advantages"})


@pytest.mark.parametrize("aggregation", sorted(losses.AGGREGATIONS))
def test_padding_columns_change_nothing(aggregation):
    """The runner trains on the first `completion_width` columns only (experiment.completion_width); columns that are
    padding in every row carry no loss term, for every aggregation (Dr.GRPO's constant is max_new_tokens, not the
    width)."""
    from grpo_jax.runner import completion_width

    assert [completion_width(n, 64) for n in (0, 1, 16, 17, 48, 63, 64)] == [16, 16, 16, 32, 48, 64, 64]
    assert completion_width(5, 8) == 8 and completion_width(3, 8, bucket=2) == 4
    packed = [completion_width(n, 256, packed=True) for n in (1, 16, 17, 33, 48, 65, 129, 256)]
    assert packed == [16, 16, 32, 64, 64, 128, 256, 256]  # packed: 16 x a power of two
    assert completion_width(33, 48, packed=True) == 48
    p0, ref = params(0), params(1)
    b = batch(p=4, g=2, t=7, seed=3, model_params=p0)
    b["completion_mask"][:, 4:] = 0.0  # every row ends within 4 tokens; columns 4.. are padding
    b["truncated"][:] = False
    short = {k: (v[:, :4] if k in ("completions", "completion_mask", "old_logps") else v) for k, v in b.items()}
    cfg = config(max_new_tokens=7, aggregation=aggregation, entropy_coef=0.01)
    fn = train_step.make_grad_fn(CFG, cfg, MESH, FAST)
    g_full, m_full = fn(p0, None, ref, b)
    g_short, m_short = fn(p0, None, ref, short)
    assert max_abs_diff(g_full, g_short) < 1e-6
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g_full)) > 1e-3
    for k in ("loss", "kl", "entropy"):
        assert abs(float(m_full[k]) - float(m_short[k])) < 1e-6, k
