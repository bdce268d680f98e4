"""losses.policy_loss: hand-computed values per term, an independent loop reference, switch isolation, and exact
micro-batch (gradient accumulation) equivalence for every variant x aggregation."""

import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from grpo_jax import losses
from grpo_jax.config import PAPER_CLIP_BOUNDS, loss_config
from grpo_jax.losses import validate_loss_config

VARIANTS = ("grpo", "gspo", "cispo")
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")
LN2 = math.log(2.0)


def cfg_with(**overrides):
    cfg = loss_config()
    cfg.kl_beta = 0.0
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def one_token(log_ratio, adv, logp=-0.5, **cfg):
    """Loss and metrics of a single one-token sequence with ratio exp(log_ratio) and advantage adv."""
    lp = np.array([[logp]], np.float32)
    return losses.policy_loss(lp, lp - log_ratio, None, np.array([adv], np.float32), np.ones((1, 1)), cfg_with(**cfg))


# ---------------------------------------------------------------- hand-computed values, one term at a time


def test_grpo_clip_high_by_hand():
    # r = 1.5, A = 2: min(3.0, 1.2 * 2) = 2.4 -> loss -2.4, clipped high.
    loss, m = one_token(math.log(1.5), 2.0)
    assert float(loss) == pytest.approx(-2.4, abs=1e-6)
    assert float(m["clip_ratio/high_mean"]) == 1.0 and float(m["clip_ratio/low_mean"]) == 0.0
    assert float(m["clip_ratio/region_mean"]) == 1.0
    assert float(m["ratio/mean"]) == pytest.approx(1.5, abs=1e-6)


def test_grpo_clip_low_by_hand():
    # r = 0.5, A = -1: min(-0.5, 0.8 * -1) = -0.8 -> loss 0.8, clipped low.
    loss, m = one_token(math.log(0.5), -1.0)
    assert float(loss) == pytest.approx(0.8, abs=1e-6)
    assert float(m["clip_ratio/low_mean"]) == 1.0 and float(m["clip_ratio/high_mean"]) == 0.0
    # r = 0.5 with A = +1 is not clipped (the min takes r A): loss -0.5, and the clip metric does not count it.
    loss, m = one_token(math.log(0.5), 1.0)
    assert float(loss) == pytest.approx(-0.5, abs=1e-6)
    assert float(m["clip_ratio/region_mean"]) == 0.0


def test_clip_higher_bounds_are_separate():
    # DAPO clip-higher: clip_high 0.28 lets r = 1.25 through unclipped for A = 1, clip_low stays 0.2.
    assert float(one_token(math.log(1.25), 1.0, clip_high=0.28)[0]) == pytest.approx(-1.25, abs=1e-6)
    assert float(one_token(math.log(1.25), 1.0, clip_high=0.2)[0]) == pytest.approx(-1.2, abs=1e-6)
    assert float(one_token(math.log(0.7), -1.0, clip_high=0.28)[0]) == pytest.approx(0.8, abs=1e-6)


def test_dual_clip_by_hand():
    # r = 5, A = -1: PPO loss = -min(-5, -1.2) = 5; dual clip c = 3 bounds it at -c A = 3.
    assert float(one_token(math.log(5.0), -1.0)[0]) == pytest.approx(5.0, abs=1e-5)
    loss, m = one_token(math.log(5.0), -1.0, dual_clip=3.0)
    assert float(loss) == pytest.approx(3.0, abs=1e-6)
    assert float(m["dual_clip_ratio"]) == 1.0
    # Below the bound (r = 2 < c) or with A > 0 it changes nothing.
    assert float(one_token(math.log(2.0), -1.0, dual_clip=3.0)[0]) == pytest.approx(2.0, abs=1e-6)
    loss, m = one_token(math.log(5.0), 1.0, dual_clip=3.0)
    assert float(loss) == pytest.approx(-1.2, abs=1e-6) and float(m["dual_clip_ratio"]) == 0.0
    assert "dual_clip_ratio" not in one_token(0.0, 1.0)[1]


def test_gspo_sequence_ratio_by_hand():
    # Two tokens with log-ratios 0.2 and 0.6: s = exp(0.4) = 1.49182 (geometric mean of the token ratios).
    lp = np.array([[-1.0, -2.0, 7.0]], np.float32)
    old = lp - np.array([[0.2, 0.6, 3.0]], np.float32)  # the third token is masked out
    mask = np.array([[1.0, 1.0, 0.0]])
    s = math.exp(0.4)
    cfg = cfg_with(variant="gspo")
    loss, m = losses.policy_loss(lp, old, None, np.array([1.0]), mask, cfg)
    assert float(loss) == pytest.approx(-1.2, abs=1e-6)  # A = 1: clipped at 1 + 0.2
    assert float(m["ratio/mean"]) == pytest.approx(s, rel=1e-6)
    assert float(m["clip_ratio/high_mean"]) == 1.0
    # A = -1: -min(-s, -1.2) = s, unclipped; d loss / d logp_t = s * 1/2 on each valid token, 0 on the masked one.
    f = lambda x: losses.policy_loss(x, old, None, np.array([-1.0]), mask, cfg)[0]
    loss, grad = jax.value_and_grad(f)(jnp.asarray(lp))
    assert float(loss) == pytest.approx(s, rel=1e-6)
    np.testing.assert_allclose(np.asarray(grad), [[s / 2, s / 2, 0.0]], rtol=1e-6)


def test_gspo_paper_clip_range():
    # With the paper's 3e-4 / 4e-4 a sequence whose token ratios average to a tiny drift is already clipped.
    lp = np.zeros((1, 2), np.float32)
    old = lp - np.float32(1e-3)
    cfg = loss_config("gspo")
    cfg.kl_beta = 0.0
    assert (cfg.clip_low, cfg.clip_high) == PAPER_CLIP_BOUNDS["gspo"] == (3e-4, 4e-4)
    loss, m = losses.policy_loss(lp, old, None, np.array([1.0]), np.ones((1, 2)), cfg)
    assert float(loss) == pytest.approx(-(1 + 4e-4), abs=1e-6)
    assert float(m["clip_ratio/high_mean"]) == 1.0


def test_cispo_by_hand_weight_is_detached():
    # r = 1.5 -> weight min(1.5, 1.2) = 1.2; A = 2, logp = -0.5: loss = -1.2 * 2 * -0.5 = 1.2,
    # gradient w.r.t. logp = -weight * A = -2.4 (the weight is a constant: no d r / d logp term).
    cfg = cfg_with(variant="cispo")
    old = np.array([[-0.5 - math.log(1.5)]], np.float32)
    f = lambda x: losses.policy_loss(x, old, None, np.array([2.0]), np.ones((1, 1)), cfg)
    (loss, m), grad = jax.value_and_grad(f, has_aux=True)(jnp.array([[-0.5]]))
    assert float(loss) == pytest.approx(1.2, abs=1e-6)
    assert float(grad[0, 0]) == pytest.approx(-2.4, abs=1e-6)
    assert float(m["clip_ratio/high_mean"]) == 1.0
    # The paper's setting: no lower bound (clip_low 1.0), ratio cap 5: r = 0.1 and r = 3 are not clipped.
    cfg = loss_config("cispo")
    cfg.kl_beta = 0.0
    for r in (0.1, 3.0):
        old = np.array([[-0.5 - math.log(r)]], np.float32)
        grad = jax.grad(lambda x: losses.policy_loss(x, old, None, np.array([2.0]), np.ones((1, 1)), cfg)[0])(
            jnp.array([[-0.5]]))
        assert float(grad[0, 0]) == pytest.approx(-2.0 * r, rel=1e-5)


@pytest.mark.parametrize(
    "estimator, expected_below, expected_above",
    [
        # d = ref - logp. "below": logp = 0 < ref = ln 2 (d = ln 2); "above": logp = ln 2 > ref = 0 (d = -ln 2).
        ("k1", -LN2, LN2),  # logp - ref
        ("k2", 0.5 * LN2**2, 0.5 * LN2**2),  # 0.5 d^2
        ("k3", 2.0 - LN2 - 1.0, 0.5 + LN2 - 1.0),  # exp(d) - d - 1: 0.30685 vs 0.19315 (flipped would swap)
    ],
)
def test_kl_estimators_by_hand(estimator, expected_below, expected_above):
    cfg = cfg_with(kl_beta=0.5, kl_estimator=estimator)
    for logp, ref, expected in ((0.0, LN2, expected_below), (LN2, 0.0, expected_above)):
        lp = np.array([[logp]], np.float32)
        # ratio 1 and A = 0: the policy term is 0, so the loss is beta * KL.
        loss, m = losses.policy_loss(lp, lp, np.array([[ref]], np.float32), np.zeros(1), np.ones((1, 1)), cfg)
        assert float(m["kl"]) == pytest.approx(expected, abs=1e-6)
        assert float(loss) == pytest.approx(0.5 * expected, abs=1e-6)
        assert float(m["policy_loss"]) == 0.0


def _aggregation_batch():
    # Ratio 1 everywhere: per-token loss = -A. Sequence 0: A = 1, 1 token; sequence 1: A = 2, 3 tokens.
    lp = np.full((2, 3), -1.0, np.float32)
    mask = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    return lp, np.array([1.0, 2.0], np.float32), mask


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("seq_mean_token_mean", (-1.0 - 2.0) / 2),  # mean(-1, mean(-2, -2, -2))
        ("token_mean", (-1.0 - 6.0) / 4),  # all tokens / 4 tokens
        ("seq_mean_token_sum", (-1.0 - 6.0) / 2),  # per-sequence sums, mean over 2 sequences
        ("seq_mean_token_sum_norm", (-1.0 - 6.0) / (2 * 4)),  # / (2 sequences * constant 4)
    ],
)
def test_aggregation_by_hand(aggregation, expected):
    lp, adv, mask = _aggregation_batch()
    loss, m = losses.policy_loss(lp, lp, None, adv, mask, cfg_with(aggregation=aggregation), norm_length=4)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(m["policy_loss"]) == pytest.approx(expected, abs=1e-6)


def test_dr_grpo_constant_ignores_token_count():
    # Dr.GRPO divides by the constant, not the token count: padding the batch to more columns changes nothing,
    # and norm_length is required.
    lp, adv, mask = _aggregation_batch()
    cfg = cfg_with(aggregation="seq_mean_token_sum_norm")
    wide = lambda x, v: np.pad(x, ((0, 0), (0, 5)), constant_values=v)
    a = losses.policy_loss(lp, lp, None, adv, mask, cfg, norm_length=10)[0]
    b = losses.policy_loss(wide(lp, -1.0), wide(lp, -1.0), None, adv, wide(mask, 0.0), cfg, norm_length=10)[0]
    assert float(a) == float(b) == pytest.approx(-7.0 / 20, abs=1e-6)
    with pytest.raises(ValueError, match="norm_length"):
        losses.policy_loss(lp, lp, None, adv, mask, cfg)


def test_entropy_bonus_by_hand():
    lp, adv, mask = _aggregation_batch()
    ent = np.array([[1.0, 9.0, 9.0], [2.0, 3.0, 4.0]], np.float32)  # masked 9s must not count
    cfg = cfg_with(entropy_coef=0.1)
    loss, m = losses.policy_loss(lp, lp, None, adv, mask, cfg, entropy=ent)
    # policy -1.5; aggregated entropy (seq mean of token means) = mean(1, 3) = 2 -> loss = -1.5 - 0.1 * 2.
    assert float(loss) == pytest.approx(-1.7, abs=1e-6)
    assert float(m["entropy"]) == pytest.approx((1 + 2 + 3 + 4) / 4, abs=1e-6)  # token mean
    # coef 0: logged, not in the loss; coef != 0 without entropy is an error.
    loss, m = losses.policy_loss(lp, lp, None, adv, mask, cfg_with(), entropy=ent)
    assert float(loss) == pytest.approx(-1.5, abs=1e-6) and "entropy" in m
    with pytest.raises(ValueError, match="entropy"):
        losses.policy_loss(lp, lp, None, adv, mask, cfg)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_mask_truncated_drops_rows_from_every_denominator(aggregation):
    lp, adv, mask = _aggregation_batch()
    truncated = np.array([False, True])
    cfg = cfg_with(aggregation=aggregation, mask_truncated=True)
    loss, m = losses.policy_loss(lp, lp, None, adv, mask, cfg, norm_length=4, truncated=truncated)
    # Only sequence 0 (A = 1, one token) is left: 1 sequence, 1 token.
    expected = {"seq_mean_token_mean": -1.0, "token_mean": -1.0, "seq_mean_token_sum": -1.0,
                "seq_mean_token_sum_norm": -1.0 / 4}[aggregation]
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    dens = losses.batch_denominators(mask, cfg, 4, truncated)
    assert float(dens["num_tokens"]) == 1.0 and float(dens["num_sequences"]) == 1.0
    # Off: the flag is ignored, so the same call equals the untruncated loss.
    off = losses.policy_loss(lp, lp, None, adv, mask, cfg_with(aggregation=aggregation), norm_length=4,
                             truncated=truncated)[0]
    full = losses.policy_loss(lp, lp, None, adv, mask, cfg_with(aggregation=aggregation), norm_length=4)[0]
    assert float(off) == float(full) != pytest.approx(expected)
    with pytest.raises(ValueError, match="truncated"):
        losses.policy_loss(lp, lp, None, adv, mask, cfg, norm_length=4)


def test_keep_mask_drops_rows():
    lp, adv, mask = _aggregation_batch()
    loss = losses.policy_loss(lp, lp, None, adv, mask, cfg_with(), keep=np.array([False, True]))[0]
    assert float(loss) == pytest.approx(-2.0, abs=1e-6)


# ---------------------------------------------------------------- switch isolation


@pytest.mark.parametrize("variant", VARIANTS)
def test_ratio_one_and_zero_advantage_give_zero_policy_gradient(variant):
    rng = np.random.default_rng(0)
    lp = jnp.asarray(rng.normal(size=(3, 4)) - 1.0, jnp.float32)
    cfg = cfg_with(variant=variant)
    grad = jax.grad(lambda x: losses.policy_loss(x, lp, None, jnp.zeros(3), jnp.ones((3, 4)), cfg)[0])(lp)
    assert np.all(np.asarray(grad) == 0.0)
    # Non-zero advantages do give a gradient (the test above can fail).
    grad = jax.grad(lambda x: losses.policy_loss(x, lp, None, jnp.ones(3), jnp.ones((3, 4)), cfg)[0])(lp)
    assert np.all(np.abs(np.asarray(grad)) > 0)


def test_kl_beta_zero_never_reads_reference():
    lp, adv, mask = _aggregation_batch()
    cfg = cfg_with(kl_beta=0.0)
    loss, m = losses.policy_loss(lp, lp, None, adv, mask, cfg)
    assert "kl" not in m and float(loss) == pytest.approx(-1.5, abs=1e-6)
    # Even a reference full of NaN is not touched when beta = 0.
    nan_ref = np.full_like(lp, np.nan)
    assert float(losses.policy_loss(lp, lp, nan_ref, adv, mask, cfg)[0]) == pytest.approx(-1.5, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logps"):
        losses.policy_loss(lp, lp, None, adv, mask, cfg_with(kl_beta=0.04))


def test_kl_term_only_adds_its_own_gradient():
    rng = np.random.default_rng(1)
    lp, old, ref = (jnp.asarray(rng.normal(size=(2, 3)) - 1, jnp.float32) for _ in range(3))
    adv, mask = jnp.array([0.7, -1.3]), jnp.ones((2, 3))
    g = lambda cfg: jax.grad(lambda x: losses.policy_loss(x, old, ref, adv, mask, cfg)[0])(lp)
    g_kl = jax.grad(lambda x: jnp.mean(jnp.mean(0.1 * losses.kl_k3(x, ref), axis=1)))(lp)
    np.testing.assert_allclose(g(cfg_with(kl_beta=0.1)) - g(cfg_with(kl_beta=0.0)), g_kl, atol=1e-6)


def test_masked_positions_are_never_read():
    lp, adv, mask = _aggregation_batch()
    junk = np.where(mask > 0, lp, np.nan).astype(np.float32)
    for variant in VARIANTS:
        cfg = cfg_with(variant=variant, kl_beta=0.1)
        f = lambda x: losses.policy_loss(x, junk, junk, adv, mask, cfg, entropy=junk)[0]
        loss, grad = jax.value_and_grad(f)(jnp.asarray(junk))
        assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))


def test_old_logps_none_is_on_policy():
    lp, adv, mask = _aggregation_batch()
    a = losses.policy_loss(lp, None, None, adv, mask, cfg_with())
    b = losses.policy_loss(lp, lp, None, adv, mask, cfg_with())
    assert float(a[0]) == float(b[0]) and float(a[1]["ratio/mean"]) == 1.0


# ---------------------------------------------------------------- an independent loop reference on random inputs


def reference_loss(lp, old, ref, adv, mask, cfg, norm_length, truncated, ent):
    """Plain-Python reference written from the papers' formulas, one token at a time."""
    n, t = lp.shape
    kept = [not (cfg.mask_truncated and truncated[i]) for i in range(n)]
    lo, hi, c, beta = 1 - cfg.clip_low, 1 + cfg.clip_high, cfg.dual_clip, cfg.kl_beta
    clip = lambda r: min(max(r, lo), hi)
    rows = []
    for i in range(n):
        valid = [j for j in range(t) if mask[i][j] > 0 and kept[i]]
        a = float(adv[i])
        s = math.exp(sum(lp[i][j] - old[i][j] for j in valid) / max(len(valid), 1))
        row = []
        for j in valid:
            r = math.exp(lp[i][j] - old[i][j])
            if cfg.variant == "cispo":
                term = -clip(r) * a * lp[i][j]
            else:
                x = s if cfg.variant == "gspo" else r
                obj = min(x * a, clip(x) * a)
                if c and a < 0:
                    obj = max(obj, c * a)
                term = -obj
            d = ref[i][j] - lp[i][j]
            kl = {"k1": -d, "k2": 0.5 * d * d, "k3": math.exp(d) - d - 1}[cfg.kl_estimator]
            row.append(term + beta * kl - cfg.entropy_coef * ent[i][j])
        rows.append(row)
    n_seq, n_tok = sum(kept), sum(len(r) for r in rows)
    total = sum(sum(r) for r in rows)
    return {
        "seq_mean_token_mean": sum(sum(r) / max(len(r), 1) for r in rows) / n_seq,
        "token_mean": total / n_tok,
        "seq_mean_token_sum": total / n_seq,
        "seq_mean_token_sum_norm": total / (n_seq * norm_length),
    }[cfg.aggregation]


def random_batch(seed, n=8, t=6):
    rng = np.random.default_rng(seed)
    lp = (rng.normal(size=(n, t)) - 2.0).astype(np.float32)
    old = (lp + rng.normal(scale=0.4, size=(n, t))).astype(np.float32)
    ref = (lp + rng.normal(scale=0.4, size=(n, t))).astype(np.float32)
    lengths = rng.integers(1, t + 1, size=n)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    adv = rng.normal(size=n).astype(np.float32)
    truncated = lengths == t
    ent = rng.uniform(0.5, 2.0, size=(n, t)).astype(np.float32)
    return lp, old, ref, adv, mask, truncated, ent


@pytest.mark.parametrize("variant, estimator", list(itertools.product(VARIANTS, ("k1", "k2", "k3"))))
def test_matches_loop_reference(variant, estimator):
    lp, old, ref, adv, mask, truncated, ent = random_batch(2)
    for aggregation, dual, mask_truncated in zip(AGGREGATIONS, (0.0, 1.5, 0.0, 3.0), (False, True, True, False)):
        cfg = cfg_with(variant=variant, kl_estimator=estimator, aggregation=aggregation, kl_beta=0.04,
                       entropy_coef=0.01, mask_truncated=mask_truncated, clip_high=0.28,
                       dual_clip=0.0 if variant == "cispo" else dual)
        got = losses.policy_loss(lp, old, ref, adv, mask, cfg, norm_length=6, truncated=truncated, entropy=ent)[0]
        want = reference_loss(lp, old, ref, adv, mask, cfg, 6, truncated, ent)
        assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6), (aggregation, dual, mask_truncated)


# ---------------------------------------------------------------- micro-batch equivalence


@pytest.mark.parametrize("variant, aggregation", list(itertools.product(VARIANTS, AGGREGATIONS)))
def test_micro_batches_give_the_full_batch_loss_gradient_and_metrics(variant, aggregation):
    lp, old, ref, adv, mask, truncated, ent = random_batch(3)
    keep = np.array([True, True, False, True, True, True, True, False])
    cfg = cfg_with(variant=variant, aggregation=aggregation, kl_beta=0.04, entropy_coef=0.01,
                   mask_truncated=True, dual_clip=0.0 if variant == "cispo" else 2.0)

    def run(sl, dens):
        f = lambda x: losses.policy_loss(x, old[sl], ref[sl], adv[sl], mask[sl], cfg, norm_length=6,
                                         truncated=truncated[sl], entropy=ent[sl], denominators=dens, keep=keep[sl])
        return jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp[sl]))

    (full_loss, full_metrics), full_grad = run(slice(None), None)
    assert np.any(np.asarray(full_grad) != 0)
    dens = losses.batch_denominators(mask, cfg, 6, truncated, keep)
    for k in (1, 2, 4):
        size = 8 // k
        parts = [run(slice(i * size, (i + 1) * size), dens) for i in range(k)]
        loss = sum(float(p[0][0]) for p in parts)
        grad = np.concatenate([np.asarray(p[1]) for p in parts])
        metrics = parts[0][0][1]
        for p in parts[1:]:
            metrics = losses.accumulate_metrics(metrics, p[0][1])
        assert loss == pytest.approx(float(full_loss), abs=1e-6), k
        np.testing.assert_allclose(grad, np.asarray(full_grad), atol=1e-6, rtol=0)
        for name, value in full_metrics.items():
            assert float(metrics[name]) == pytest.approx(float(value), abs=1e-6), (k, name)


def test_policy_loss_jits_with_denominators_as_arguments():
    lp, old, ref, adv, mask, truncated, ent = random_batch(4)
    cfg = cfg_with(kl_beta=0.04, aggregation="token_mean")
    dens = losses.batch_denominators(mask, cfg)
    f = jax.jit(lambda x, d: losses.policy_loss(x, old, ref, adv, mask, cfg, denominators=d)[0])
    eager = losses.policy_loss(lp, old, ref, adv, mask, cfg)[0]
    assert float(f(lp, dens)) == pytest.approx(float(eager), abs=1e-6)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("variant", "ppo2", "'ppo2'.*'cispo', 'grpo', 'gspo'"),
        ("kl_estimator", "k4", "'k4'.*'k1', 'k2', 'k3'"),
        ("aggregation", "sum", "'sum'.*seq_mean_token_mean"),
        ("advantage_scale", "std", "'std'.*'batch', 'group', 'none'"),
        ("advantage_baseline", "median", "'median'.*'group_mean', 'rloo'"),
        ("clip_low", -0.1, "clip_low.*-0.1"),
        ("clip_low", 1.5, "clip_low.*1.5"),
        ("clip_high", -0.2, "clip_high.*-0.2"),
        ("dual_clip", 0.5, "dual_clip.*0.5"),
        ("dual_clip", 1.0, "dual_clip.*1.0"),
        ("kl_beta", -0.01, "kl_beta.*-0.01"),
        ("num_iterations", 0, "num_iterations.*0"),
        ("mask_truncated", "yes", "mask_truncated.*'yes'"),
        ("std_eps", -1e-4, "std_eps"),
    ],
)
def test_bad_config_is_a_value_error_naming_the_value(field, value, match):
    cfg = ml_collections.ConfigDict(loss_config().to_dict(), type_safe=False)  # as a plain dict would be
    cfg[field] = value
    with pytest.raises(ValueError, match=match):
        validate_loss_config(cfg)
    lp, adv, mask = _aggregation_batch()
    with pytest.raises(ValueError, match=match):
        losses.policy_loss(lp, lp, lp, adv, mask, cfg, norm_length=4)


def test_dual_clip_with_cispo_and_bad_shapes_are_errors():
    cfg = cfg_with(variant="cispo", dual_clip=3.0)
    with pytest.raises(ValueError, match="cispo"):
        validate_loss_config(cfg)
    lp, adv, mask = _aggregation_batch()
    with pytest.raises(ValueError, match=r"advantages must be \[N\]"):
        losses.policy_loss(lp, lp, None, adv[:1], mask, cfg_with())
    with pytest.raises(ValueError, match="mask has shape"):
        losses.policy_loss(lp, lp, None, adv, mask[:, :2], cfg_with())


def test_defaults_are_grpo_as_in_deepseekmath_and_trl():
    cfg = loss_config()
    validate_loss_config(cfg)
    assert (cfg.variant, cfg.clip_low, cfg.clip_high, cfg.dual_clip) == ("grpo", 0.2, 0.2, 0.0)
    assert (cfg.kl_beta, cfg.kl_estimator, cfg.aggregation) == (0.04, "k3", "seq_mean_token_mean")
    assert (cfg.advantage_scale, cfg.advantage_baseline, cfg.std_eps) == ("group", "group_mean", 1e-4)
    assert (cfg.entropy_coef, cfg.mask_truncated, cfg.num_iterations, cfg.drop_zero_std_groups) == (
        0.0, False, 1, False)
    for variant in PAPER_CLIP_BOUNDS:
        validate_loss_config(loss_config(variant))
    with pytest.raises(ValueError, match="'ppo'"):
        loss_config("ppo")


def test_a_registered_variant_is_a_config_value():
    @losses.register_variant("reinforce_test")
    def reinforce(logps, old_logps, advantages, mask, config):
        """Plain REINFORCE, -A logp (for this test only)."""
        ratio = jnp.ones_like(logps)
        return losses.PolicyTerm(-advantages[:, None] * logps, ratio, ratio < 0, ratio < 0)

    try:
        lp, adv, mask = _aggregation_batch()
        loss = losses.policy_loss(lp, lp, None, adv, mask, cfg_with(variant="reinforce_test"))[0]
        assert float(loss) == pytest.approx((1.0 * 1 + 2.0 * 1) / 2, abs=1e-6)  # -A * -1, seq means
    finally:
        losses.VARIANTS.pop("reinforce_test")
