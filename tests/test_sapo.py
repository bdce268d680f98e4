"""Loss variant 'sapo' (grpo_jax/losses/sapo.py): the soft gate's value and gradient by hand, against GRPO, its
temperatures by advantage sign, its metric, exact micro-batching, validation, and its ablation config."""

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import losses, registry
from grpo_jax.config import loss_config
from grpo_jax.losses import validate_loss_config


def cfg_with(**overrides):
    cfg = loss_config("sapo")
    cfg.kl_beta = 0.0
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def one_token(ratio, adv, **cfg):
    """(loss, metrics, d loss / d logp) of one one-token sequence with ratio `ratio` and advantage `adv`."""
    old = np.array([[-0.5 - math.log(ratio)]], np.float32)
    f = lambda lp: losses.policy_loss(lp, old, None, np.array([adv], np.float32), np.ones((1, 1)), cfg_with(**cfg))
    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.array([[-0.5]], jnp.float32))
    return float(loss), metrics, float(grad[0, 0])


# ---------------------------------------------------------------- hand-computed values


def test_on_policy_token_by_hand():
    # r = 1: f(1) = sigmoid(0) * 4 / tau = 2 / tau, so the loss is -2 A / tau_pos = -2; the gradient weight is
    # w(1) = 4 * 0.5 * 0.5 = 1: d loss / d logp = -A * w * r = -1, GRPO's unclipped policy gradient.
    loss, m, grad = one_token(1.0, 1.0)
    assert loss == pytest.approx(-2.0, abs=1e-6)
    assert grad == pytest.approx(-1.0, abs=1e-6)
    assert float(m["sapo/gate_weight_min"]) == pytest.approx(1.0, abs=1e-6)
    # A < 0 uses tau_neg = 1.05: loss = +2 / 1.05, gradient still -A * 1 = +1.
    loss, _, grad = one_token(1.0, -1.0)
    assert loss == pytest.approx(2.0 / 1.05, abs=1e-6)
    assert grad == pytest.approx(1.0, abs=1e-6)


def test_off_policy_tokens_by_hand():
    # r = 1.5, A = 2, tau_pos = 1: s = sigmoid(0.5) = 0.62245933; loss = -(4 / 1) * s * 2 = -4.97967465;
    # w = 4 s (1 - s) = 0.94001484; d loss / d logp = -A * w * r = -2 * 0.94001484 * 1.5 = -2.82004452.
    loss, m, grad = one_token(1.5, 2.0)
    assert loss == pytest.approx(-4.97967465, abs=1e-5)
    assert grad == pytest.approx(-2.82004452, abs=1e-5)
    assert float(m["sapo/gate_weight_min"]) == pytest.approx(0.94001484, abs=1e-6)
    # r = 0.5, A = -1, tau_neg = 1.05: s = sigmoid(-0.525) = 0.37168; loss = (4 / 1.05) * s = 1.41594;
    # d loss / d logp = -A * 4 s (1 - s) * r = 4 * 0.37168 * 0.62832 * 0.5 = 0.46707.
    s = sigmoid(1.05 * (0.5 - 1.0))
    assert s == pytest.approx(0.371684, abs=1e-6)
    loss, _, grad = one_token(0.5, -1.0)
    assert loss == pytest.approx(4.0 / 1.05 * s, abs=1e-6)
    assert grad == pytest.approx(4.0 * s * (1.0 - s) * 0.5, abs=1e-6)
    assert (4.0 / 1.05 * s, 4.0 * s * (1.0 - s) * 0.5) == pytest.approx((1.415938, 0.467070), abs=1e-6)


@pytest.mark.parametrize("ratio", [0.3, 0.9, 1.0, 1.1, 1.3, 2.0, 4.0])
@pytest.mark.parametrize("adv", [1.5, -0.7])
def test_matches_the_formula_and_stays_bounded(ratio, adv):
    tau = 1.0 if adv > 0 else 1.05
    s = sigmoid(tau * (ratio - 1.0))
    loss, _, grad = one_token(ratio, adv)
    assert loss == pytest.approx(-4.0 / tau * s * adv, rel=1e-5, abs=1e-6)
    assert grad == pytest.approx(-adv * 4.0 * s * (1.0 - s) * ratio, rel=1e-4, abs=1e-6)
    assert abs(loss) <= 4.0 * abs(adv) / tau  # bounded: nothing for dual clip to do


def test_soft_where_grpo_is_hard():
    # r = 1.3 > 1 + 0.2 with A = 1: GRPO's clipped branch has no gradient; SAPO's gradient is attenuated, not cut.
    grpo = losses.policy_loss
    old = np.array([[-0.5 - math.log(1.3)]], np.float32)
    cfg = loss_config("grpo")
    cfg.kl_beta = 0.0
    g_grpo = jax.grad(lambda lp: grpo(lp, old, None, np.array([1.0]), np.ones((1, 1)), cfg)[0])(jnp.array([[-0.5]]))
    assert float(g_grpo[0, 0]) == 0.0
    _, m, g_sapo = one_token(1.3, 1.0)
    s = sigmoid(0.3)
    assert g_sapo == pytest.approx(-4.0 * s * (1.0 - s) * 1.3, abs=1e-6) and g_sapo < -1.0
    assert float(m["clip_ratio/region_mean"]) == 0.0  # no hard clip ever happens


def test_each_temperature_acts_on_its_sign_only():
    # A larger tau decays the gradient weight faster away from r = 1: w = 4 s (1 - s), s = sigmoid(tau (r - 1)).
    w = lambda tau, r: 4.0 * sigmoid(tau * (r - 1.0)) * (1.0 - sigmoid(tau * (r - 1.0)))
    _, m_pos, _ = one_token(2.0, 1.0, sapo_tau_pos=1.0, sapo_tau_neg=8.0)
    _, m_neg, _ = one_token(2.0, -1.0, sapo_tau_pos=1.0, sapo_tau_neg=8.0)
    assert float(m_pos["sapo/gate_weight_min"]) == pytest.approx(w(1.0, 2.0), abs=1e-6)  # 0.7864
    assert float(m_neg["sapo/gate_weight_min"]) == pytest.approx(w(8.0, 2.0), abs=1e-6)  # 0.0013
    assert w(8.0, 2.0) < 0.01 < 0.7 < w(1.0, 2.0)


def test_zero_advantage_is_zero_loss_and_gradient():
    loss, _, grad = one_token(1.7, 0.0)
    assert loss == 0.0 and grad == 0.0


def test_metric_is_the_min_over_valid_tokens_and_combines_over_micro_batches():
    lp = np.zeros((2, 3), np.float32)
    old = -np.log(np.array([[1.0, 2.0, 9.0], [0.5, 1.0, 1.0]], np.float32))  # ratios; [0, 2] is masked out
    mask = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    adv = np.array([1.0, -1.0], np.float32)
    cfg = cfg_with()
    w = lambda tau, r: 4.0 * sigmoid(tau * (r - 1.0)) * (1.0 - sigmoid(tau * (r - 1.0)))
    want = min(w(1.0, 1.0), w(1.0, 2.0), w(1.05, 0.5), w(1.05, 1.0))  # = w(1.0, 2.0), not the masked r = 9
    _, m = losses.policy_loss(lp, old, None, adv, mask, cfg)
    assert float(m["sapo/gate_weight_min"]) == pytest.approx(want, abs=1e-6)
    dens = losses.batch_denominators(mask, cfg)
    parts = [losses.policy_loss(lp[i:i + 1], old[i:i + 1], None, adv[i:i + 1], mask[i:i + 1], cfg,
                                denominators=dens)[1] for i in range(2)]
    total = losses.accumulate_metrics(parts[0], parts[1])
    assert float(total["sapo/gate_weight_min"]) == pytest.approx(want, abs=1e-6)
    assert float(total["loss"]) == pytest.approx(float(m["loss"]), abs=1e-6)


def test_micro_batches_give_the_full_batch_gradient():
    rng = np.random.RandomState(0)
    lp = rng.randn(4, 5).astype(np.float32) * 0.3 - 1.0
    old = lp + rng.randn(4, 5).astype(np.float32) * 0.4
    adv = rng.randn(4).astype(np.float32)
    mask = (np.arange(5)[None] < np.array([5, 3, 1, 4])[:, None]).astype(np.float32)
    for aggregation in ("seq_mean_token_mean", "token_mean"):
        cfg = cfg_with(aggregation=aggregation)
        full = jax.grad(lambda x: losses.policy_loss(x, old, None, adv, mask, cfg)[0])(jnp.asarray(lp))
        dens = losses.batch_denominators(mask, cfg)
        halves = [jax.grad(lambda x, s=s: losses.policy_loss(x, old[s], None, adv[s], mask[s], cfg,
                                                               denominators=dens)[0])(jnp.asarray(lp[s]))
                  for s in (slice(0, 2), slice(2, 4))]
        np.testing.assert_allclose(np.concatenate(halves), full, atol=1e-7)
        assert float(jnp.max(jnp.abs(full))) > 1e-2


# ---------------------------------------------------------------- config


def test_fields_are_declared_with_the_paper_defaults():
    cfg = loss_config("sapo")
    assert (cfg.sapo_tau_pos, cfg.sapo_tau_neg) == (1.0, 1.05)
    assert registry.section_fields("loss")["sapo_tau_neg"] == 1.05
    validate_loss_config(cfg)


@pytest.mark.parametrize("field, value, match", [
    ("sapo_tau_pos", 0.0, r"loss.sapo_tau_pos must be > 0.*0\.0"),
    ("sapo_tau_neg", -1.0, r"loss.sapo_tau_neg must be > 0.*-1\.0"),
    ("sapo_tau_neg", float("inf"), r"loss.sapo_tau_neg must be a finite number.*inf"),
    ("dual_clip", 3.0, r"loss.dual_clip must be 0 with variant 'sapo'.*3\.0"),
])
def test_bad_values_name_the_field_and_value(field, value, match):
    cfg = cfg_with(**{field: value})
    with pytest.raises(ValueError, match=match):
        validate_loss_config(cfg)


@pytest.mark.parametrize("arg", [None, "countdown"])
def test_ablation_config(arg):
    c = importlib.import_module("configs.ablations.sapo").get_config(arg)
    assert (c.loss.variant, c.loss.sapo_tau_pos, c.loss.sapo_tau_neg) == ("sapo", 1.0, 1.05)
    assert c.loss.aggregation == "seq_mean_token_mean"
    validate_loss_config(c.loss)
