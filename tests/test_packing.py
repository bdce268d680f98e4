"""Packed completions (grpo_jax/packing.py): the plan by hand, and the packed train step equal to the padded one
(loss, every metric, gradients) for every aggregation, variant and KL estimator, with micro-batching."""

import jax
import ml_collections
import numpy as np
import pytest

from grpo_jax import losses, optim, packing, sharding, train_step
from train_fixtures import CFG, FAST_COMPILE as FAST, assert_gradients_close, batch, config, model_logprobs, params

MESH = sharding.make_mesh(sharding.mesh_config())


# ------------------------------------------------------------------------------------------------- the plan


def test_plan_by_hand():
    """One group of 4 completions of lengths 3, 1, 2, 0 in rows of width 4. First-fit by decreasing length: row 0
    holds completion 0 (columns 0-2) then completion 1 (column 3); row 1 holds completion 2; completion 3 has no
    tokens. Two packed rows instead of four."""
    plan = packing.plan([3, 1, 2, 0], group_size=4, num_micro=1, width=4)
    np.testing.assert_array_equal(plan.source[0], [[0, 1, 2, 4], [8, 9, -1, -1]])
    np.testing.assert_array_equal(plan.prompt, [[0, 0]])
    np.testing.assert_array_equal(plan.unpack, [[0, 1, 2, 0], [3, 0, 0, 0], [4, 5, 0, 0], [0, 0, 0, 0]])
    assert plan.tokens_computed == 8


def test_plan_keeps_groups_apart_and_follows_the_micro_batch_split():
    """Two micro-batches of 2 prompts x 2 (prompts 0, 2 in micro-batch 0; 1, 3 in micro-batch 1, as the train
    step splits them); a packed row never mixes prompts, and unpack inverts source on every real token."""
    lengths = np.array([2, 2, 3, 1, 4, 1, 1, 1])   # rows p-major: prompt p holds rows 2p, 2p + 1
    plan = packing.plan(lengths, group_size=2, num_micro=2, width=4)
    order = packing.micro_batch_rows(np.arange(8), 2, 2)             # [[0, 1, 4, 5], [2, 3, 6, 7]]
    np.testing.assert_array_equal(order, [[0, 1, 4, 5], [2, 3, 6, 7]])
    for m in range(2):
        for b in range(plan.source.shape[1]):
            local_rows = {int(i) // 4 for i in plan.source[m, b] if i >= 0}
            assert len({r // 2 for r in local_rows}) <= 1           # one prompt per packed row
            if local_rows:
                assert plan.prompt[m, b] == next(iter(local_rows)) // 2
        for local, row in enumerate(order[m]):
            for j in range(lengths[row]):
                flat = plan.unpack[row, j]
                assert plan.source[m, flat // 4, flat % 4] == local * 4 + j
    # micro-batch 0: prompt 0 (2 + 2) -> 1 row, prompt 2 (4, 1) -> 2 rows; micro-batch 1: (3 + 1), (1 + 1) -> 2
    assert plan.source.shape == (2, 3, 4)


def test_bucketed_rows_and_bad_lengths():
    assert packing.bucket_rows(1, 64, 1) == 8            # a multiple of ceil(64 / 8)
    assert packing.bucket_rows(9, 64, 1) == 16
    assert packing.bucket_rows(64, 64, 1) == 64
    assert packing.bucket_rows(3, 16, 8) == 8            # a multiple of the data shards
    assert packing.bucket_rows(3, 12, 1) == 4
    # geometric (optim.skip_zero_advantage): the step times a power of two, at most the padded rows
    assert [packing.bucket_rows(n, 64, 1, geometric=True) for n in (0, 1, 8, 9, 17, 24, 33, 64)] == \
        [8, 8, 8, 16, 32, 32, 64, 64]
    assert packing.bucket_rows(40, 48, 1, geometric=True) == 48
    assert packing.plan([1] * 8, 4, 1, 4, geometric=True).source.shape == (1, 2, 4)
    every_row_full = packing.plan([4] * 8, 4, 1, 4)
    assert every_row_full.source.shape == (1, 8, 4)    # nothing to save: the padded layout's rows
    all_one = packing.plan([1] * 8, 4, 1, 4)
    assert all_one.source.shape == (1, 2, 4)           # 4 completions of 1 token per row, one row per prompt
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 4\]"):
        packing.plan([5, 1], 2, 1, 4)
    with pytest.raises(ValueError, match="do not split"):
        packing.plan([1, 1, 1], 2, 1, 4)
    np.testing.assert_array_equal(packing.lengths_from_mask([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]]), [2, 0, 3])


# ---------------------------------------------------------------------------------- packed == padded step


def _ragged_batch(seed, p=4, g=4, t=8):
    b = batch(p=p, g=g, t=t, seed=seed, model_params=params(0))
    lengths = packing.lengths_from_mask(b["completion_mask"])
    plan = packing.plan(lengths, g, 1, t)
    assert plan.source.shape[1] < p * g  # the batch really packs into fewer rows
    return b


def _both(cfg, b, ref):
    out = {}
    for pack in (False, True):
        c = cfg.copy_and_resolve_references()
        c.optim.pack_completions = pack
        out[pack] = train_step.make_grad_fn(CFG, c, MESH, FAST)(params(0), None, ref, b)
    return out


def _assert_same(out):
    (g_pad, m_pad), (g_pack, m_pack) = out[False], out[True]
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(g_pad))
    assert scale > 1e-3  # a real gradient
    worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                zip(jax.tree.leaves(g_pad), jax.tree.leaves(g_pack)))
    assert worst <= 1e-6 * scale, (worst, scale)
    assert set(m_pad) == set(m_pack)
    for k in m_pad:
        a, b = float(m_pad[k]), float(m_pack[k])
        assert abs(a - b) <= 1e-6 * max(1.0, abs(a)), (k, a, b)


@pytest.mark.parametrize("aggregation", sorted(losses.AGGREGATIONS))
def test_packed_step_equals_padded_for_every_aggregation(aggregation):
    """2 micro-batches, truncated rows masked, an entropy bonus and the k3 KL to a reference."""
    cfg = config(group_size=4, max_new_tokens=8, micro_batch_size=8, aggregation=aggregation, mask_truncated=True,
                 entropy_coef=0.01)
    _assert_same(_both(cfg, _ragged_batch(1), params(1)))


VARIANT_CASES = [("grpo", "k1", {"dual_clip": 3.0}), ("gspo", "k2", {}), ("cispo", "k3", {}),
                 ("sapo", "full", {})]


@pytest.mark.parametrize("variant,estimator,extra", VARIANT_CASES, ids=[c[0] for c in VARIANT_CASES])
def test_packed_step_equals_padded_for_every_variant_and_kl_estimator(variant, estimator, extra):
    assert {c[0] for c in VARIANT_CASES} == set(losses.VARIANTS)
    assert {c[1] for c in VARIANT_CASES} == set(losses.KL_ESTIMATORS)
    cfg = config(group_size=4, max_new_tokens=8, micro_batch_size=8, variant=variant, kl_estimator=estimator,
                 **extra)
    _assert_same(_both(cfg, _ragged_batch(2), params(1)))


def test_packed_adamw_steps_equal_padded_ones():
    """Two real AdamW updates (mu = 2) in one call: the same params with and without packing; and the edge
    batches: every completion one token long, and every completion at the full width (nothing to pack)."""
    for lengths in ("ragged", 1, 8):
        b = _ragged_batch(3) if lengths == "ragged" else dict(batch(p=4, g=4, t=8, seed=3, model_params=params(0)))
        if lengths != "ragged":
            b["completion_mask"] = (np.arange(8)[None, :] < lengths).astype(np.float32).repeat(16, 0)
        new = {}
        for pack in (False, True):
            cfg = config(group_size=4, max_new_tokens=8, num_iterations=2)
            cfg.optim.pack_completions = pack
            state, _ = train_step.init_train_state(CFG, params(0), cfg, MESH)
            state, metrics = train_step.make_train_step(CFG, cfg, MESH, FAST)(state, None, params(1), b)
            new[pack] = (jax.tree.map(np.asarray, state.params), float(metrics["loss"]))
        moved = max(float(np.max(np.abs(a - np.asarray(b)))) for a, b in
                    zip(jax.tree.leaves(new[False][0]), jax.tree.leaves(params(0))))
        assert moved > 1e-4
        diff = max(float(np.max(np.abs(a - b))) for a, b in
                   zip(jax.tree.leaves(new[False][0]), jax.tree.leaves(new[True][0])))
        assert diff < 1e-6, (lengths, diff)
        assert abs(new[False][1] - new[True][1]) < 1e-6


# ------------------------------------------------------------------- optim.skip_zero_advantage


def _logprobs_and_entropy(b):
    lp, ent = model_logprobs(params(0), b["prompt_tokens"], b["prompt_mask"], b["completions"], 4, 0.9)
    return np.asarray(lp), np.asarray(ent)


def _zero_advantage_batch():
    """The ragged batch with groups 0, 1 and 2 at advantage 0 (all rewards equal) and one more row, of group 3, at 0:
    micro-batch 0 (prompts 0 and 2) has nothing to train, micro-batch 1 three completions of prompt 3."""
    b = dict(_ragged_batch(4))
    adv = np.array(b["advantages"], np.float32)
    adv[0:12] = 0.0
    adv[13] = 0.0
    b["advantages"] = adv
    # at the first iteration the skipped rows' old log-probs are the policy's own (exact sampler): ratio 1
    lp, _ = _logprobs_and_entropy(b)
    b["old_logps"] = np.where((adv == 0)[:, None], lp, b["old_logps"]).astype(np.float32)
    return b


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_skipping_zero_advantage_rows_keeps_loss_and_gradient(aggregation):
    """Leaving advantage-0 rows out of the packed step (optim.skip_zero_advantage): the same loss, gradient and
    ratio/clip metrics as computing them (denominators still count them; skipped rows at ratio 1, as they are at the
    first iteration), with 2 micro-batches; the entropy and
    logp_mismatch/mean become means over the trained rows; the plan holds only the trained rows' tokens."""
    b = _zero_advantage_batch()
    out = {}
    for skip in (False, True):
        cfg = config(group_size=4, max_new_tokens=8, micro_batch_size=8, kl_beta=0.0, aggregation=aggregation,
                     variant="grpo", dual_clip=3.0)
        cfg.optim.skip_zero_advantage = skip
        out[skip] = train_step.make_grad_fn(CFG, cfg, MESH, FAST)(params(0), None, None, b)
    (g_all, m_all), (g_skip, m_skip) = out[False], out[True]
    assert_gradients_close(g_all, g_skip)
    assert set(m_all) == set(m_skip)
    assert abs(float(m_all["loss"])) > 1e-4
    for k in set(m_all) - {"entropy", "logp_mismatch/mean"}:
        x, y = float(m_all[k]), float(m_skip[k])
        assert abs(x - y) <= 1e-6 * max(1.0, abs(x)), (k, x, y)
    # the entropy of the trained rows, from the padded step's per-token entropies
    lp, ent = _logprobs_and_entropy(b)
    trained = (np.asarray(b["advantages"]) != 0)[:, None] & (np.asarray(b["completion_mask"]) > 0)
    np.testing.assert_allclose(float(m_skip["entropy"]), ent[trained].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m_skip["logp_mismatch/mean"]),
                               np.abs(np.asarray(b["old_logps"]) - lp)[trained].mean(), rtol=1e-4)

    s = train_step._settings(cfg)
    plan = train_step._packing_plan(b["completion_mask"], s, 2, MESH, advantages=b["advantages"])
    lengths = packing.lengths_from_mask(b["completion_mask"])
    assert int((plan["pack_source"] >= 0).sum()) == int(lengths[np.asarray(b["advantages"]) != 0].sum())
    full = train_step._packing_plan(b["completion_mask"], s, 2, MESH)
    assert plan["pack_source"].shape[0] < full["pack_source"].shape[0]  # fewer packed rows computed


def test_skipping_every_row_gives_a_zero_update():
    b = _zero_advantage_batch()
    b["advantages"] = np.zeros_like(b["advantages"])
    cfg = config(group_size=4, max_new_tokens=8, kl_beta=0.0)
    cfg.optim.skip_zero_advantage = True
    grads, metrics = train_step.make_grad_fn(CFG, cfg, MESH, FAST)(params(0), None, None, b)
    assert all(float(np.max(np.abs(g))) == 0.0 for g in jax.tree.leaves(grads))
    assert float(metrics["loss"]) == 0.0 and np.isfinite(float(metrics["entropy"]))


INEXACT = [("loss.kl_beta", 0.04, "the KL term"), ("loss.entropy_coef", 0.01, "the entropy bonus"),
           ("optim.pack_completions", False, "pack_completions = False")]


@pytest.mark.parametrize("field,value,why", INEXACT)
def test_skip_zero_advantage_auto_stands_aside_where_inexact_and_true_refuses(field, value, why):
    cfg = config(group_size=4, max_new_tokens=8, kl_beta=0.0)
    assert cfg.optim.skip_zero_advantage == "auto"
    assert train_step._settings(cfg).skip_zero_advantage  # exact here: on
    section, name = field.split(".")
    cfg[section][name] = value
    assert not train_step._settings(cfg).skip_zero_advantage  # 'auto' stands aside
    cfg.optim.skip_zero_advantage = True
    with pytest.raises(ValueError, match=f"skip_zero_advantage = True is not exact here: .*{why}"):
        train_step._settings(cfg)
    cfg.optim.skip_zero_advantage = False
    assert not train_step._settings(cfg).skip_zero_advantage


def test_skip_zero_advantage_follows_what_each_plug_in_declares():
    """A loss variant that does not declare `vanishes_at_zero_advantage` is never skipped under 'auto' and refused
    under True; a KL estimator that declares it lets 'auto' skip with kl_beta > 0; a member's traced entropy_coef
    counts as possibly non-zero; a non-bool value is refused."""
    @losses.register_variant("undeclared_for_test")
    def undeclared(logps, old_logps, advantages, mask, config):
        return losses.VARIANTS["grpo"](logps, old_logps, advantages, mask, config)

    @losses.register_kl_estimator("zero_at_a0_for_test", vanishes_at_zero_advantage=True)
    def declared(logps, ref_logps):
        return losses.KL_ESTIMATORS["k3"](logps, ref_logps)
    try:
        cfg = config(group_size=4, max_new_tokens=8, kl_beta=0.0)
        cfg.loss.variant = "undeclared_for_test"
        assert not train_step._settings(cfg).skip_zero_advantage
        cfg.optim.skip_zero_advantage = True
        with pytest.raises(ValueError, match="policy term of loss.variant 'undeclared_for_test'"):
            train_step._settings(cfg)
        cfg = config(group_size=4, max_new_tokens=8, kl_beta=0.04)
        assert not train_step._settings(cfg).skip_zero_advantage
        cfg.loss.kl_estimator = "zero_at_a0_for_test"
        assert train_step._settings(cfg).skip_zero_advantage
        cfg = config(group_size=4, max_new_tokens=8, kl_beta=0.0)
        assert not train_step._settings(cfg, traced=("entropy_coef",)).skip_zero_advantage
        assert train_step._settings(cfg, traced=("clip_low",)).skip_zero_advantage
    finally:
        losses.VARIANTS.unregister("undeclared_for_test")
        losses.KL_ESTIMATORS.unregister("zero_at_a0_for_test")
    with pytest.raises(ValueError, match="must be 'auto', true or false"):
        optim.validate_optim_config(ml_collections.ConfigDict({**optim.optim_config(), "skip_zero_advantage": 1}))
