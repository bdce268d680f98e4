"""Advantage estimator 'gdpo' (grpo_jax/advantages/gdpo.py): hand-computed values, the case where GRPO lets one
reward flatten another and GDPO does not, zero-std groups, R = 1, an independent loop reference, and its config."""

import importlib
import math
import statistics

import numpy as np
import pytest

from grpo_jax import advantages
from grpo_jax.config import loss_config
from grpo_jax.losses import validate_loss_config


def cfg_with(**overrides):
    cfg = loss_config()
    cfg.advantage_estimator = "gdpo"
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def gdpo(per_reward, weights, **cfg):
    """GDPO advantages through the public entry point, with the total it is given computed as the runner does."""
    s = np.asarray(per_reward, np.float32)
    w = np.asarray(weights, np.float32)
    total = np.sum(s * w, axis=-1)
    return np.asarray(advantages.group_advantages(total, cfg_with(**cfg), per_reward=s, reward_weights=w))


def pgr(*rewards):
    """Per-reward lists [P][G] -> [P, G, R]."""
    return np.stack([np.asarray(r, np.float32) for r in rewards], axis=-1)


def reference_gdpo(per_reward, weights, eps):
    """Plain-Python loops over the paper's three steps, with statistics.stdev (ddof = 1)."""
    p, g, r = per_reward.shape
    total = [[0.0] * g for _ in range(p)]
    for i in range(p):
        for k in range(r):
            col = [float(per_reward[i, j, k]) for j in range(g)]
            if max(col) == min(col):
                continue
            mean, std = sum(col) / g, statistics.stdev(col)
            for j in range(g):
                total[i][j] += float(weights[k]) * (col[j] - mean) / (std + eps)
    flat = [x for row in total for x in row]
    mean, std = sum(flat) / len(flat), statistics.stdev(flat)
    out = [[(x - mean) / (std + eps) for x in row] for row in total]
    for i in range(p):  # the package rule: a group whose weighted total is constant gets 0
        tot = [sum(float(weights[k]) * float(per_reward[i, j, k]) for k in range(r)) for j in range(g)]
        if max(tot) == min(tot):
            out[i] = [0.0] * g
    return np.array(out)


# ---------------------------------------------------------------- hand-computed values


def test_one_reward_cannot_flatten_another():
    # One group of G = 4: correctness c = [1, 0, 1, 0] and a length penalty l = [0, 0, -s, -s] (weights 1, 1).
    # GDPO: c's group std is sqrt(1/3), so A_c = [1, -1, 1, -1] * sqrt(3)/2; l gives [1, 1, -1, -1] * sqrt(3)/2
    # for every s > 0; S = [sqrt(3), 0, 0, -sqrt(3)], batch std sqrt(2): A = [sqrt(1.5), 0, 0, -sqrt(1.5)].
    c = [[1, 0, 1, 0]]
    for s in (5.0, 100.0):
        got = gdpo(pgr(c, [[0, 0, -s, -s]]), [1.0, 1.0], std_eps=0.0)
        np.testing.assert_allclose(got, [[math.sqrt(1.5), 0.0, 0.0, -math.sqrt(1.5)]], atol=1e-6)
    # GRPO on the total [1, 0, -99, -100] (s = 100): mean -49.5, std sqrt((2 * 50.5^2 + 2 * 49.5^2) / 3) = 57.735,
    # A = [0.8747, 0.8574, -0.8574, -0.8747]: the correct and the wrong short answers differ by 0.017, not 1.22.
    grpo_cfg = loss_config()
    grpo_cfg.std_eps = 0.0
    grpo = np.asarray(advantages.group_advantages(np.array([[1, 0, -99, -100]], np.float32), grpo_cfg))
    std = math.sqrt((2 * 50.5 ** 2 + 2 * 49.5 ** 2) / 3)
    np.testing.assert_allclose(grpo, [[50.5 / std, 49.5 / std, -49.5 / std, -50.5 / std]], rtol=1e-6)
    assert grpo[0, 0] - grpo[0, 1] == pytest.approx(1.0 / std, rel=1e-5) and 1.0 / std < 0.02
    got = gdpo(pgr(c, [[0, 0, -100, -100]]), [1.0, 1.0], std_eps=0.0)
    assert got[0, 0] - got[0, 1] == pytest.approx(math.sqrt(1.5), rel=1e-6)


def test_two_binary_rewards_keep_three_advantage_levels():
    # The paper's figure: G = 2, two binary rewards. GRPO maps (0,1) vs (1,1) [one reward differs] and (0,0) vs
    # (1,1) [both differ] to the same +-1/sqrt(2); GDPO's per-reward sums keep them apart (+-1/sqrt(2) vs +-sqrt(2)).
    grpo_cfg = loss_config()
    grpo_cfg.std_eps = 0.0
    one = advantages.group_advantages(np.array([[1, 2]], np.float32), grpo_cfg)
    both = advantages.group_advantages(np.array([[0, 2]], np.float32), grpo_cfg)
    np.testing.assert_allclose(one, both, atol=1e-7)
    got = gdpo(pgr([[0, 1], [0, 1]], [[1, 1], [0, 1]]), [1.0, 1.0], std_eps=0.0)
    # Group 0 (totals 1, 2): only the first reward differs; group 1 (totals 0, 2): both do.
    # S = [[-1/sqrt(2), 1/sqrt(2)], [-sqrt(2), sqrt(2)]]: mean 0, sum of squares 5, batch std sqrt(5/3).
    k = math.sqrt(3.0 / 5.0)
    np.testing.assert_allclose(got, [[-k / math.sqrt(2), k / math.sqrt(2)], [-math.sqrt(2) * k, math.sqrt(2) * k]],
                               atol=1e-6)


def test_weights_batch_normalisation_and_a_zero_std_group():
    # Group 0 as in test_one_reward_cannot_flatten_another but weights (2, 1): S0 = sqrt(3)/2 * [3, -1, 1, -3].
    # Group 1: every reward constant (correct, no penalty): A_k = 0, S1 = 0. Batch of 8: mean 0,
    # std = sqrt((3/4) * (9 + 1 + 1 + 9) / 7) = sqrt(15/7); A0 = S0 / std, A1 = 0 exactly.
    per_reward = pgr([[1, 0, 1, 0], [1, 1, 1, 1]], [[0, 0, -3, -3], [0, 0, 0, 0]])
    got = gdpo(per_reward, [2.0, 1.0], std_eps=0.0)
    s0 = np.array([3.0, -1.0, 1.0, -3.0]) * math.sqrt(3) / 2
    np.testing.assert_allclose(got[0], s0 / math.sqrt(15 / 7), atol=1e-6)
    assert np.all(got[1] == 0.0)
    # With the default eps = 1e-4 the values move by O(eps) only, and the constant group is still exactly 0.
    got_eps = gdpo(per_reward, [2.0, 1.0])
    np.testing.assert_allclose(got_eps, got, atol=1e-3)
    assert np.all(got_eps[1] == 0.0)


def test_a_reward_constant_in_a_group_adds_nothing_there():
    # Group 0: correctness varies, the penalty is the same for all (-2): only correctness counts in that group.
    # Group 1: correctness is constant, the penalty varies: only the penalty counts.
    per_reward = pgr([[1, 0, 0], [1, 1, 1]], [[-2, -2, -2], [0, -1, -2]])
    got = gdpo(per_reward, [1.0, 1.0], std_eps=0.0)
    only_c = gdpo(pgr([[1, 0, 0], [1, 1, 1]], [[0, 0, 0], [0, -1, -2]]), [1.0, 1.0], std_eps=0.0)
    np.testing.assert_allclose(got, only_c, atol=1e-7)
    # A_c of group 0 = ([1, 0, 0] - 1/3) / sqrt(1/3) = [2, -1, -1] / sqrt(3); A_l of group 1 = [1, 0, -1].
    s = np.array([[2, -1, -1] / np.sqrt(3), [1, 0, -1]]).reshape(-1)
    np.testing.assert_allclose(got.reshape(-1), s / s.std(ddof=1), atol=1e-6)


def test_no_signal_anywhere_is_zero_even_without_eps():
    got = gdpo(pgr([[1, 1, 1], [0, 0, 0]], [[0.5, 0.5, 0.5], [2, 2, 2]]), [1.0, 1.0], std_eps=0.0)
    assert np.all(got == 0.0)


@pytest.mark.parametrize("weight", [1.0, 3.0, -1.0])
def test_one_reward_is_batch_normalised_grpo(weight):
    rng = np.random.RandomState(0)
    r = rng.randn(3, 4).astype(np.float32)
    r[1] = 0.5  # a zero-std group
    grpo = np.asarray(advantages.group_advantages(r, loss_config()), np.float64)
    # S = w * grpo, so A = w (grpo - mean) / (|w| std + eps): the weight's size cancels up to eps, its sign stays.
    want = weight * (grpo - grpo.mean()) / (abs(weight) * grpo.std(ddof=1) + 1e-4)
    got = gdpo(r[..., None], [weight])
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(got, np.sign(weight) * (grpo - grpo.mean()) / grpo.std(ddof=1), atol=3e-4)
    assert np.all(got[1] == 0.0)


def test_matches_a_loop_reference():
    rng = np.random.RandomState(1)
    per_reward = np.concatenate([rng.randint(0, 2, (5, 6, 1)), rng.randn(5, 6, 2)], axis=-1).astype(np.float32)
    per_reward[2, :, 0] = 1.0  # a reward constant within one group
    per_reward[3] = per_reward[3, :1]  # a group where nothing varies
    weights = np.array([1.0, 0.5, 2.0], np.float32)
    got = gdpo(per_reward, weights)
    want = reference_gdpo(per_reward, weights, 1e-4)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.all(got[3] == 0.0) and np.abs(got).max() > 0.5


def test_a_constant_total_is_zero_by_the_package_rule():
    # Weights (2, 1), c = [1, 0, 0, 0], f = [0, 2, 2, 2]: the total 2c + f = 2 for all, so group_advantages
    # zeroes the group (and drop_zero_std_groups would drop it), although GDPO's S = [1.5, -0.5, -0.5, -0.5] != 0.
    per_reward = pgr([[1, 0, 0, 0], [1, 0, 1, 0]], [[0, 2, 2, 2], [0, 0, 1, 1]])
    got = gdpo(per_reward, [2.0, 1.0])
    assert np.all(got[0] == 0.0) and np.abs(got[1]).max() > 0.5


# ---------------------------------------------------------------- the contract and the config


def test_without_per_reward_scores_it_is_a_clear_error():
    with pytest.raises(ValueError, match="'gdpo'.*per_reward"):
        advantages.group_advantages(np.array([[1.0, 0.0]]), cfg_with())


def test_grpo_estimator_ignores_per_reward_scores():
    per_reward = pgr([[1, 0, 1, 0]], [[0, 0, -3, -3]])
    total = per_reward.sum(-1)
    with_scores = advantages.group_advantages(total, loss_config(), per_reward=per_reward,
                                              reward_weights=np.ones(2, np.float32))
    np.testing.assert_allclose(with_scores, advantages.group_advantages(total, loss_config()), atol=0)


@pytest.mark.parametrize("arg, names", [(None, {"arithmetic", "overlong"}), ("countdown", {"format", "countdown"})])
def test_ablation_config(arg, names):
    c = importlib.import_module("configs.ablations.gdpo").get_config(arg)
    assert c.loss.advantage_estimator == "gdpo"
    assert set(c.rewards.to_dict()) == names
    validate_loss_config(c.loss)
    if arg is None:
        c.rollout.max_new_tokens = 64  # the penalty's window follows the rollout length
        assert c.reward_options.overlong.max_length == 64 and c.reward_options.overlong.buffer_length == 16
