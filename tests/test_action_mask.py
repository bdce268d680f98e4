"""The train step's action_mask (a multi-turn rollout's observation tokens: present and attended, never trained):
equal to the completion mask it changes nothing, bit for bit; a position with action_mask 0 adds nothing to the
loss, the gradient or a metric; every denominator counts model tokens only (by hand); packed == padded with holes
in the action mask and 2 micro-batches; a bad action_mask is one clear ValueError; the population step carries each
member's own (each member = its single step)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import logprobs, losses, packing, sharding, train_step
from grpo_jax.population import train as population_train
from train_fixtures import CFG, FAST_COMPILE as FAST, assert_gradients_close, batch, config, model_logprobs, params

MESH = sharding.make_mesh(sharding.mesh_config())


def _holes_batch(seed=1, p=4, g=4, t=8):
    """A ragged rollout batch whose completions hold inserted observation tokens: action_mask 0 at about a third of
    the present positions (row 0 at columns 2 and 3), old log-probs 0 there as the multi-turn rollout writes them.
    The completions pack into fewer rows than the padded layout's."""
    b = dict(batch(p=p, g=g, t=t, seed=seed, model_params=params(0)))
    rng = np.random.RandomState(seed + 100)
    present = b["completion_mask"]
    observation = rng.rand(*present.shape) < 0.3
    observation[0, :] = False
    observation[0, 2:4] = True
    action = (present * ~observation).astype(np.float32)
    assert 0 < action.sum() < present.sum()
    b["action_mask"] = action
    b["old_logps"] = np.where(action > 0, b["old_logps"], 0.0).astype(np.float32)
    plan = packing.plan(packing.lengths_from_mask(present), g, 1, t)
    assert plan.source.shape[1] < p * g  # really packs
    return b


def _tree_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _metrics_equal(m1, m2):
    assert set(m1) == set(m2)
    for k in m1:
        x, y = np.asarray(m1[k]), np.asarray(m2[k])
        assert np.array_equal(x, y), (k, x, y)


def _same_gradient_and_metrics(cfg, b0, b1):
    """The train step's gradient function gives bit-identical (non-trivial) gradients and metrics for b0 and b1;
    returns b0's."""
    fn = train_step.make_grad_fn(CFG, cfg, MESH, FAST)
    g0, m0 = fn(params(0), None, params(1), b0)
    g1, m1 = fn(params(0), None, params(1), b1)
    assert max(float(np.max(np.abs(x))) for x in jax.tree.leaves(g0)) > 1e-3
    assert _tree_equal(g0, g1)
    _metrics_equal(m0, m1)
    return g0, m0


# --------------------------------------------------------------------------- action_mask == completion_mask


def test_action_mask_equal_to_completion_mask_is_bit_identical_to_omitting_it():
    """Through the train step (2 micro-batches, packed, KL and an entropy bonus) and its gradient function."""
    cfg = config(group_size=4, max_new_tokens=8, micro_batch_size=8, entropy_coef=0.01, mask_truncated=True)
    b = dict(batch(p=4, g=4, t=8, seed=2, model_params=params(0)))
    with_mask = dict(b, action_mask=b["completion_mask"].copy())
    _same_gradient_and_metrics(cfg, b, with_mask)
    step = train_step.make_train_step(CFG, cfg, MESH, FAST)
    out = []
    for bb in (b, with_mask):
        state, _ = train_step.init_train_state(CFG, params(0), cfg, MESH)
        state, metrics = step(state, None, params(1), bb)
        out.append((jax.tree.map(np.asarray, state.params), metrics))
    assert _tree_equal(out[0][0], out[1][0])
    _metrics_equal(out[0][1], out[1][1])


# --------------------------------------------------------------------------- observation positions are inert


@pytest.mark.parametrize("variant", ["grpo", "gspo"])
def test_old_logps_at_observation_positions_change_nothing(variant):
    """Perturbing old_logps where action_mask is 0 (present, attended tokens) leaves the loss, the gradient and every
    metric of the train step's gradient function unchanged, bit for bit (2 micro-batches, packed, k3 KL, entropy
    bonus); the token metrics are means over the model tokens only."""
    cfg = config(group_size=4, max_new_tokens=8, micro_batch_size=8, entropy_coef=0.01, variant=variant,
                 aggregation="token_mean")
    b = _holes_batch()
    observation = (b["completion_mask"] > 0) & (b["action_mask"] == 0)
    perturbed = dict(b, old_logps=np.where(observation, b["old_logps"] + 3.0, b["old_logps"]).astype(np.float32))
    g0, m0 = _same_gradient_and_metrics(cfg, b, perturbed)
    # the step's token means count model tokens only
    lp, ent = (np.asarray(x) for x in model_logprobs(params(0), b["prompt_tokens"], b["prompt_mask"],
                                                      b["completions"], 4, 0.9))
    trained = b["action_mask"] > 0
    kept = trained & b["keep"][:, None]  # the loss's token means leave the dropped group out
    np.testing.assert_allclose(float(m0["entropy"]), ent[kept].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m0["logp_mismatch/mean"]), np.abs(b["old_logps"] - lp)[trained].mean(),
                               rtol=1e-4)
    np.testing.assert_allclose(float(m0["logp_mismatch/max"]), np.abs(b["old_logps"] - lp)[trained].max(),
                               rtol=1e-5)
    # and the gradient is the direct one: policy_loss on the trainer's log-probs with the action mask
    ref, _ = model_logprobs(params(1), b["prompt_tokens"], b["prompt_mask"], b["completions"], 4, 0.9)

    def loss(p):
        lp_, ent_ = logprobs.completion_logprobs(CFG, p, b["prompt_tokens"], b["prompt_mask"], b["completions"],
                                                 4, 0.9)
        return losses.policy_loss(lp_, b["old_logps"], ref, b["advantages"], b["action_mask"], cfg.loss,
                                  norm_length=8, truncated=b["truncated"], entropy=ent_, keep=b["keep"])[0]

    want = jax.jit(jax.grad(loss), compiler_options=FAST)(params(0))
    assert_gradients_close(want, g0, rel=1e-5)


@pytest.mark.parametrize("aggregation", sorted(losses.AGGREGATIONS))
@pytest.mark.parametrize("variant", ["grpo", "gspo", "cispo", "sapo"])
def test_policy_loss_gradient_is_zero_at_action_mask_zero(variant, aggregation):
    """jax.grad of losses.policy_loss with respect to the log-probs and the entropy, with KL (k3) and an entropy
    bonus on and truncated rows masked, is exactly 0 where the mask is 0 (and not at the model tokens)."""
    assert set(losses.VARIANTS) <= {"grpo", "gspo", "cispo", "sapo"}
    cfg = config(variant=variant, aggregation=aggregation, kl_beta=0.1, entropy_coef=0.05, mask_truncated=True)
    rng = np.random.RandomState(0)
    n, t = 4, 6
    present = np.ones((n, t), np.float32)
    present[1, 4:] = 0.0
    present[3, 2:] = 0.0
    action = present.copy()
    action[0, 1:3] = 0.0
    action[1, 0] = 0.0
    action[2, 3:5] = 0.0
    logps = jnp.asarray(rng.randn(n, t).astype(np.float32) * 0.3 - 2.0)
    old = jnp.asarray(np.asarray(logps) + rng.randn(n, t).astype(np.float32) * 0.1)
    ref = jnp.asarray(np.asarray(logps) + rng.randn(n, t).astype(np.float32) * 0.2)
    ent = jnp.asarray(rng.rand(n, t).astype(np.float32) + 0.5)
    adv = jnp.asarray([1.0, -0.5, 0.7, -1.2], jnp.float32)
    truncated = np.array([False, False, False, True])

    def f(lp, e):
        return losses.policy_loss(lp, old, ref, adv, action, cfg.loss, norm_length=t, truncated=truncated,
                                  entropy=e)[0]

    g_lp, g_ent = jax.grad(f, argnums=(0, 1))(logps, ent)
    g_lp, g_ent = np.asarray(g_lp), np.asarray(g_ent)
    assert np.all(np.isfinite(g_lp))
    off = action == 0
    assert np.all(g_lp[off] == 0.0) and np.all(g_ent[off] == 0.0)
    kept = (action > 0) & ~truncated[:, None]
    assert np.all(g_lp[kept] != 0.0) and np.all(g_ent[kept] != 0.0)


# --------------------------------------------------------------------------- denominators by hand


def test_denominators_count_model_tokens_only_by_hand():
    """2 rows of width 6: row 0 has 5 present tokens of which 3 are the model's (columns 0, 1, 4), row 1 two, both
    the model's. With advantage 0 and an entropy bonus of coefficient 1 the per-token loss is -entropy; the
    observation tokens' entropies (100) must count nowhere:
      token_mean              -(1 + 2 + 3 + 4 + 5) / 5                = -3
      seq_mean_token_mean     -((1 + 2 + 3) / 3 + (4 + 5) / 2) / 2    = -3.25
      seq_mean_token_sum      -(6 + 9) / 2                            = -7.5
      seq_mean_token_sum_norm -(6 + 9) / (2 * 6)  (Dr.GRPO, constant) = -1.25"""
    present = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]], np.float32)
    action = np.array([[1, 1, 0, 0, 1, 0], [1, 1, 0, 0, 0, 0]], np.float32)
    ent = np.array([[1, 2, 100, 100, 3, 100], [4, 5, 100, 100, 100, 100]], np.float32)
    lp = np.full((2, 6), -1.0, np.float32)
    want = {"token_mean": -3.0, "seq_mean_token_mean": -3.25, "seq_mean_token_sum": -7.5,
            "seq_mean_token_sum_norm": -1.25}
    assert set(want) == set(losses.AGGREGATIONS)
    for aggregation, value in want.items():
        cfg = config(aggregation=aggregation, kl_beta=0.0, entropy_coef=1.0).loss
        dens = losses.batch_denominators(action, cfg, norm_length=6)
        assert float(dens["num_tokens"]) == 5.0 and float(dens["num_sequences"]) == 2.0
        assert float(dens["norm_length"]) == 6.0
        loss, metrics = losses.policy_loss(lp, lp, None, np.zeros(2, np.float32), action, cfg, norm_length=6,
                                           entropy=ent, denominators=dens)
        np.testing.assert_allclose(float(loss), value, rtol=1e-6)
        np.testing.assert_allclose(float(metrics["entropy"]), 3.0, rtol=1e-6)
        # the present-token mask would count the observations: a different number
        wrong, _ = losses.policy_loss(lp, lp, None, np.zeros(2, np.float32), present, cfg, norm_length=6,
                                      entropy=ent)
        assert abs(float(wrong) - value) > 1.0


def test_the_train_step_denominators_are_the_action_masks():
    """prepare_batch's global denominators and token count read action_mask, not completion_mask."""
    b = _holes_batch()
    cfg = config(group_size=4, max_new_tokens=8, micro_batch_size=8, aggregation="token_mean", kl_beta=0.0)
    program = train_step.build_program(CFG, cfg, MESH)
    checked = program.check_batch(b)
    np.testing.assert_array_equal(checked["action_mask"], b["action_mask"])
    prepare = jax.jit(lambda bb: train_step.prepare_batch(CFG, program.settings, cfg.loss, MESH, bb, None, None,
                                                          0.9), compiler_options=FAST)
    prepared = prepare(checked)
    kept = b["keep"][:, None]  # loss.mask_truncated is off
    assert float(prepared.denominators["num_tokens"]) == float((b["action_mask"] * kept).sum())
    assert program.settings.skip_zero_advantage  # 'auto', exact here: the token metrics count the trained rows
    trained_rows = (b["advantages"] != 0)[:, None]
    assert float(prepared.num_valid) == float((b["action_mask"] * trained_rows).sum())
    assert float(prepared.num_valid) < float((b["completion_mask"] * trained_rows).sum())
    assert "action_mask" in prepared.micro_batches  # travels with its rows into the micro-batches
    assert prepared.micro_batches["action_mask"].shape == (2, 8, 8)


# --------------------------------------------------------------------------- packed == padded


@pytest.mark.parametrize("variant,aggregation", [("grpo", "seq_mean_token_mean"), ("gspo", "token_mean")])
def test_packed_equals_padded_with_holes_in_the_action_mask(variant, aggregation):
    """2 micro-batches, truncated rows masked, the k3 KL and an entropy bonus: the packed step (which packs the
    present tokens, observations included) gives the padded step's loss, metrics and gradient."""
    b = _holes_batch(seed=3)
    out = {}
    for pack in (False, True):
        cfg = config(group_size=4, max_new_tokens=8, micro_batch_size=8, variant=variant, aggregation=aggregation,
                     mask_truncated=True, entropy_coef=0.01)
        cfg.optim.pack_completions = pack
        out[pack] = train_step.make_grad_fn(CFG, cfg, MESH, FAST)(params(0), None, params(1), b)
    (g_pad, m_pad), (g_pack, m_pack) = out[False], out[True]
    assert_gradients_close(g_pad, g_pack)
    assert set(m_pad) == set(m_pack)
    for k in m_pad:
        x, y = float(m_pad[k]), float(m_pack[k])
        assert abs(x - y) <= 1e-6 * max(1.0, abs(x)), (k, x, y)


# --------------------------------------------------------------------------- bad batches


def test_a_bad_action_mask_is_one_clear_value_error():
    b = dict(batch(p=4, g=2, t=5, seed=6))
    cfg = config(kl_beta=0.0)
    program = train_step.build_program(CFG, cfg, MESH)
    outside = b["completion_mask"].copy()
    row = int(np.argmin(outside.sum(1)))
    assert outside[row, -1] == 0.0
    outside[row, -1] = 1.0  # a trained token where no token is present
    with pytest.raises(ValueError, match=rf"action_mask.*0 wherever completion_mask is 0.*row {row}, column 4"):
        program.check_batch(dict(b, action_mask=outside))
    half = b["completion_mask"] * 0.5
    with pytest.raises(ValueError, match=r"action_mask'\] must be 0 or 1.*action_mask = 0.5"):
        program.check_batch(dict(b, action_mask=half))
    with pytest.raises(ValueError, match=r"batch\['action_mask'\] has shape \(8, 4\), expected \(8, 5\)"):
        program.check_batch(dict(b, action_mask=b["completion_mask"][:, :4]))
    fn = train_step.make_grad_fn(CFG, cfg, MESH, FAST)  # the same check before the program runs
    with pytest.raises(ValueError, match="0 wherever completion_mask is 0"):
        fn(params(0), None, None, dict(b, action_mask=outside))
    # not forwarded to the loss as an extra input; defaults to the completion mask
    checked = program.check_batch(b)
    assert "action_mask" in train_step.ROW_KEYS
    np.testing.assert_array_equal(checked["action_mask"], b["completion_mask"])
    assert checked["action_mask"].dtype == np.float32


# --------------------------------------------------------------------------- population


def test_population_step_carries_each_members_action_mask():
    """The population step stacks its members' checked batches by key: each member's own action_mask reaches the
    program (the completion mask for a batch without one)."""
    cfg = config(group_size=4, max_new_tokens=8, kl_beta=0.0)
    cfg.optim.skip_zero_advantage = False
    b0, b1 = _holes_batch(seed=1), _holes_batch(seed=2)
    b1 = dict(b1, prompt_tokens=b0["prompt_tokens"], prompt_mask=b0["prompt_mask"])
    batches = {k: np.stack([b0[k], b1[k]]) for k in b0}
    step = population_train.make_population_train_step(CFG, cfg, MESH, FAST)
    states, frozen = population_train.init_population_state(CFG, params(0), cfg, MESH, size=2)
    prepared = step.prepare(states, frozen, None, batches)
    placed = prepared.args[3]
    np.testing.assert_array_equal(np.asarray(placed["action_mask"]), batches["action_mask"])
    without = {k: v for k, v in batches.items() if k != "action_mask"}
    placed = step.prepare(states, frozen, None, without).args[3]
    np.testing.assert_array_equal(np.asarray(placed["action_mask"]), batches["completion_mask"])
    with pytest.raises(ValueError, match="0 wherever completion_mask is 0"):
        bad = dict(batches, action_mask=np.ones_like(batches["action_mask"]))
        step.prepare(states, frozen, None, bad)


def test_population_members_train_as_their_single_steps_with_holes():
    """Two members, each with its own action_mask: each member's update is the single step's on its batch."""
    cfg = config(group_size=4, max_new_tokens=8, kl_beta=0.0, entropy_coef=0.01)
    cfg.optim.skip_zero_advantage = False
    b0, b1 = _holes_batch(seed=1), _holes_batch(seed=2)
    b1 = dict(b1, prompt_tokens=b0["prompt_tokens"], prompt_mask=b0["prompt_mask"])
    batches = {k: np.stack([b0[k], b1[k]]) for k in b0}
    states, frozen = population_train.init_population_state(CFG, params(0), cfg, MESH, size=2)
    states, metrics = population_train.make_population_train_step(CFG, cfg, MESH, FAST)(states, frozen, None,
                                                                                         batches)
    single = train_step.make_train_step(CFG, cfg, MESH, FAST)
    for k, b in enumerate((b0, b1)):
        state, _ = train_step.init_train_state(CFG, params(0), cfg, MESH)
        state, m = single(state, None, None, b)
        diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
                   zip(jax.tree.leaves(population_train.member(states, k).params), jax.tree.leaves(state.params)))
        assert diff < 1e-6, (k, diff)
        assert abs(float(metrics["loss"][k]) - float(m["loss"])) < 1e-6
        assert abs(float(metrics["entropy"][k]) - float(m["entropy"])) < 1e-6
