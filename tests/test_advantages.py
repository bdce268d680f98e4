"""advantages.group_advantages / group_stats against hand-computed values and an independent loop reference."""

import itertools
import statistics

import jax
import ml_collections
import numpy as np
import pytest

from grpo_jax import advantages
from grpo_jax.config import loss_config


def cfg_with(**overrides):
    cfg = loss_config()
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def reference_advantages(rewards, baseline, scale, eps):
    """Plain-Python loops: TRL / verl / RLOO / Dr.GRPO formulas with statistics.stdev (ddof = 1)."""
    flat = [x for row in rewards for x in row]
    batch_std = statistics.stdev(flat)
    out = []
    for row in rewards:
        g = len(row)
        mean = sum(row) / g
        group_std = statistics.stdev(row)
        adv_row = []
        for i, r in enumerate(row):
            b = mean if baseline == "group_mean" else (sum(row) - r) / (g - 1)
            d = {"group": group_std + eps, "batch": batch_std + eps, "none": 1.0}[scale]
            adv_row.append(0.0 if max(row) == min(row) else (r - b) / d)
        out.append(adv_row)
    return np.array(out)


def test_grpo_advantages_by_hand():
    # Group [1, 0, 0, 0]: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5.
    adv = advantages.group_advantages(np.array([[1.0, 0.0, 0.0, 0.0]]), cfg_with())
    np.testing.assert_allclose(np.asarray(adv), [[0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001]],
                               rtol=1e-6)
    # std_eps is read from the config (verl's 1e-6 here).
    adv = advantages.group_advantages(np.array([[1.0, 0.0, 0.0, 0.0]]), cfg_with(std_eps=1e-6))
    assert float(adv[0, 0]) == pytest.approx(0.75 / 0.500001, rel=1e-6)


def test_rloo_by_hand():
    # Leave-one-out: 1 - mean(0, 0, 0) = 1; 0 - mean(1, 0, 0) = -1/3 (= 4/3 * (r - 0.25)).
    adv = advantages.group_advantages(np.array([[1.0, 0.0, 0.0, 0.0]]),
                                      cfg_with(advantage_baseline="rloo", advantage_scale="none"))
    np.testing.assert_allclose(np.asarray(adv), [[1.0, -1 / 3, -1 / 3, -1 / 3]], rtol=1e-6)


def test_dr_grpo_and_batch_scale_by_hand():
    rewards = np.array([[1.0, 0.0], [3.0, 3.0], [2.0, 0.0]])
    adv = advantages.group_advantages(rewards, cfg_with(advantage_scale="none"))
    np.testing.assert_allclose(np.asarray(adv), [[0.5, -0.5], [0.0, 0.0], [1.0, -1.0]], atol=1e-7)
    # Batch std of [1, 0, 3, 3, 2, 0]: mean 1.5, sum of squares 0.25 + 2.25 + 2.25 + 2.25 + 0.25 + 2.25 = 9.5,
    # unbiased var 9.5 / 5 = 1.9.
    adv = advantages.group_advantages(rewards, cfg_with(advantage_scale="batch"))
    d = 1.9**0.5 + 1e-4
    np.testing.assert_allclose(np.asarray(adv), [[0.5 / d, -0.5 / d], [0, 0], [1 / d, -1 / d]], rtol=1e-6)


@pytest.mark.parametrize("baseline, scale", list(itertools.product(("group_mean", "rloo"), ("group", "batch", "none"))))
def test_matches_loop_reference(baseline, scale):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(5, 6)).astype(np.float32)
    rewards[1] = 0.3  # a zero-variance group among random ones
    rewards[3] = rng.integers(0, 2, size=6)  # binary rewards, as a verifier gives
    cfg = cfg_with(advantage_baseline=baseline, advantage_scale=scale)
    got = np.asarray(advantages.group_advantages(rewards, cfg))
    want = reference_advantages(rewards.astype(np.float64).tolist(), baseline, scale, 1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", ("group", "batch", "none"))
def test_zero_variance_groups_give_zero_not_nan(scale):
    rewards = np.array([[0.1, 0.1, 0.1], [1.0, 1.0, 1.0]])
    for eps in (1e-4, 0.0):
        for baseline in ("group_mean", "rloo"):
            cfg = cfg_with(advantage_scale=scale, advantage_baseline=baseline, std_eps=eps)
            adv = np.asarray(advantages.group_advantages(rewards, cfg))
            assert np.all(adv == 0.0), (eps, baseline, adv)


def test_group_stats_by_hand():
    rewards = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 2.0, 0.0]])
    stats = advantages.group_stats(rewards, cfg_with())
    assert float(stats["reward"]) == pytest.approx(9.0 / 16)
    # Group stds (ddof = 1): 0.5, 0, 0, sqrt(4 * 1 / 3); TRL's reward_std is their mean.
    assert float(stats["reward_std"]) == pytest.approx((0.5 + (4 / 3) ** 0.5) / 4, rel=1e-6)
    assert float(stats["frac_reward_zero_std"]) == 0.5
    assert np.asarray(stats["keep_mask"]).tolist() == [True, True, True, True]
    # DAPO's dynamic-sampling filter: drop the two zero-variance groups.
    stats = advantages.group_stats(rewards, cfg_with(drop_zero_std_groups=True))
    assert np.asarray(stats["keep_mask"]).tolist() == [True, False, False, True]


def test_jit_and_numpy_input():
    rewards = np.random.default_rng(1).normal(size=(3, 4))
    cfg = cfg_with(advantage_baseline="rloo", advantage_scale="batch")
    eager = advantages.group_advantages(rewards, cfg)
    jitted = jax.jit(lambda r: advantages.group_advantages(r, cfg))(rewards)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)
    stats = jax.jit(lambda r: advantages.group_stats(r, cfg))(rewards)
    assert float(stats["frac_reward_zero_std"]) == 0.0


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match=r"\[P, G\].*\(6,\)"):
        advantages.group_advantages(np.zeros(6), cfg_with())
    with pytest.raises(ValueError, match="G = 1"):
        advantages.group_advantages(np.zeros((6, 1)), cfg_with())
    for field, value in (("advantage_baseline", "median"), ("advantage_scale", "std")):
        cfg = ml_collections.ConfigDict(loss_config().to_dict(), type_safe=False)
        cfg[field] = value
        with pytest.raises(ValueError, match=f"{field}.*'{value}'"):
            advantages.group_advantages(np.zeros((2, 2)), cfg)
        with pytest.raises(ValueError, match=f"'{value}'"):
            advantages.group_stats(np.zeros((2, 2)), cfg)


def test_a_registered_baseline_is_a_config_value():
    @advantages.register_baseline("group_max_test")
    def group_max(rewards):
        """Best-of-group baseline (for this test only)."""
        return rewards.max(axis=1, keepdims=True)

    try:
        adv = advantages.group_advantages(np.array([[3.0, 1.0]]),
                                          cfg_with(advantage_baseline="group_max_test", advantage_scale="none"))
        np.testing.assert_allclose(np.asarray(adv), [[0.0, -2.0]])
    finally:
        advantages.BASELINES.pop("group_max_test")
