"""The population train step: K members updated in one jitted program (the single step mapped over members: one at
a time, a few vmapped at once, or all vmapped: population.members_at_once) each
give the single-policy step's result for their own state, batch and hyperparameters (written into the config), for
LoRA members over one frozen base and for full finetuning; per-member packing plans stack; take_members copies
parents' params and optimizer moments; traced loss hyperparameters equal the config's values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import losses, packing, population, sharding, train_step
from grpo_jax.population import train as population_train
from train_fixtures import CFG, FAST_COMPILE, batch, config, max_abs_diff, params

MESH = sharding.make_mesh(sharding.mesh_config())
TOL = 1e-6
VMAP_TOL = 5e-6  # all members in one vmap: batched matmuls sum in another order (1.3e-6 seen at XLA -O0)
NAMES = ("lr", "temperature", "kl_beta", "clip_low", "clip_high", "entropy_coef")


def _config(lora_rank, **kw):
    """The members' traced entropy_coef keeps the population step from skipping zero-advantage completions, so the
    single steps it is compared with compute them too (the entropy metric is then over the same rows)."""
    cfg = config(**kw)
    cfg.model.lora_rank = lora_rank
    cfg.optim.skip_zero_advantage = False
    return cfg


def _start(cfg, seed=3):
    """(state, frozen): the init state; LoRA adapters with B != 0, so the policy is not the base (KL, clip and
    entropy all shape the gradient from the first update)."""
    state, frozen = train_step.init_train_state(CFG, params(0), cfg, MESH)
    if frozen is not None:  # on the host: no program to compile
        rng = np.random.RandomState(seed)
        state = state.replace(params=jax.tree.map(
            lambda x: jnp.asarray(np.asarray(x) + 0.3 * rng.randn(*x.shape).astype(np.float32)), state.params))
    return state, frozen


def _copy(state):
    return jax.tree.map(jnp.copy, state)  # the steps donate their states


_STEPS = {}  # config text -> the jitted single or population step: tests with the same config share compilations


def _single(cfg, state, frozen, ref, b):
    """The single-policy step's (state, metrics) on one member's batch, with that member's config."""
    key = ("single", str(cfg))
    if key not in _STEPS:
        _STEPS[key] = train_step.make_train_step(CFG, cfg, MESH, FAST_COMPILE)
    return _STEPS[key](_copy(state), frozen, ref, b)


def _population_step(cfg):
    key = ("population", str(cfg))
    if key not in _STEPS:
        _STEPS[key] = population_train.make_population_train_step(CFG, cfg, MESH, FAST_COMPILE)
    return _STEPS[key]


def _config_values(cfg, k):
    return {name: np.full(k, population.hyperparameters.config_value(cfg, name), np.float32) for name in NAMES}


def _member_batches():
    """Three members' batches of the same prompts: different completions, lengths and advantages; member 1's
    completions are short, so its packing plan needs fewer packed rows per micro-batch (R) than the others'."""
    base = batch(p=4, g=2, seed=5, model_params=params(0))
    out = []
    for seed in (6, 7, 8):
        other = batch(p=4, g=2, seed=seed, model_params=params(0))
        out.append(dict(other, prompt_tokens=base["prompt_tokens"], prompt_mask=base["prompt_mask"]))
    out[1]["completion_mask"][1:, 2:] = 0.0
    return out


MICRO_CONFIG = dict(micro_batch_size=4)  # 2 micro-batches of 2 prompt groups


def _stack_batches(batches):
    return {k: np.stack([np.asarray(b[k]) for b in batches]) for k in batches[0]}


def _assert_member(states, metrics, k, want_state, want_metrics, tol=TOL):
    got = population_train.member(states, k)
    assert max_abs_diff(got.params, want_state.params) < tol, k
    assert max_abs_diff(got.opt_state, want_state.opt_state) < tol, k
    assert int(got.step) == int(want_state.step)
    for name in want_metrics:  # every single-run metric (a member with kl_beta = 0 also logs kl)
        np.testing.assert_allclose(float(metrics[name][k]), float(want_metrics[name]), rtol=tol, atol=tol,
                                   err_msg=f"member {k}: {name}")


def _at_once(cfg, members_at_once):
    """cfg with population.members_at_once set (the population step's own copy: the single step's stays as is)."""
    out = cfg.copy_and_resolve_references()
    out.population.members_at_once = members_at_once
    return out


def test_identical_members_equal_the_single_step():
    """K = 3 LoRA members with the same state, batch and hyperparameters (given explicitly, at the config's
    values), 2 micro-batches, updated 2 at a time (members_at_once = 2: one vmapped pair, then the third): each is
    the single step's result, metrics included."""
    cfg = _config(2, **MICRO_CONFIG)
    state, frozen = _start(cfg)
    b = _member_batches()[0]
    want_state, want_metrics = _single(cfg, state, frozen, None, b)
    k = 3
    states = population_train.stack_states([_copy(state)] * k)
    out, metrics = _population_step(_at_once(cfg, 2))(states, frozen, None, _stack_batches([b] * k),
                                                      _config_values(cfg, k))
    assert set(want_metrics) <= set(metrics) and metrics["loss"].shape == (k,)
    for i in range(k):
        _assert_member(out, metrics, i, want_state, want_metrics)
    assert max_abs_diff(want_state.params, state.params) > 1e-4  # the step did move the adapters


# Member 0: no KL (the single run then has no reference pass); 1: a larger lr, a lower temperature and tight clip
# bounds (many tokens clipped); 2: a smaller lr, a higher temperature, a strong KL, tight clip bounds the other way
# round and an entropy bonus.
# The config: lr 1e-3, kl_beta 0.04, clip bounds 0.2, no entropy bonus.
MEMBERS = [
    dict(lr=1e-3, temperature=1.0, kl_beta=0.0, clip_low=0.2, clip_high=0.2, entropy_coef=0.0),
    dict(lr=3e-3, temperature=0.7, kl_beta=0.04, clip_low=0.02, clip_high=0.01, entropy_coef=0.0),
    dict(lr=5e-4, temperature=1.3, kl_beta=0.3, clip_low=0.01, clip_high=0.03, entropy_coef=0.05),
]


@pytest.mark.parametrize("lora_rank,members", [(2, (0, 1, 2)), (0, (0, 2))], ids=["lora", "full"])
def test_members_with_their_own_hyperparameters_give_their_own_single_runs(lora_rank, members):
    """Each member's result is the single run with its hyperparameters written into the config
    (population.with_hyperparameters), over mu = 2 updates with weight decay: lr, temperature (the log-probs', the
    reference's included), kl_beta, clip bounds and entropy_coef are traced per member, not the config's. (Full finetuning: two members, to save compilations.)"""
    chosen = [MEMBERS[i] for i in members]
    cfg = _config(lora_rank, num_iterations=2)
    cfg.optim.weight_decay = 0.1
    ref = None if lora_rank else params(1)
    state, frozen = _start(cfg)
    b = batch(p=4, g=2, seed=2, model_params=params(0))
    k = len(chosen)
    values = {name: np.asarray([m[name] for m in chosen], np.float32) for name in NAMES}
    out, metrics = _population_step(cfg)(population_train.stack_states([_copy(state)] * k), frozen, ref,
                                         _stack_batches([b] * k), values)
    for i, hp in enumerate(chosen):
        want_state, want_metrics = _single(population.with_hyperparameters(cfg, hp), state, frozen, ref, b)
        assert ("kl" in want_metrics) == (hp["kl_beta"] > 0)
        _assert_member(out, metrics, i, want_state, want_metrics)
    np.testing.assert_allclose(metrics["learning_rate"], values["lr"], rtol=1e-6)
    assert float(metrics["clip_ratio/region_mean"][chosen.index(MEMBERS[2]) if lora_rank == 0 else 1]) > 0.1
    for i in range(k):  # the members really differ (the check above would catch an ignored hyperparameter)
        for j in range(i):
            assert max_abs_diff(population_train.member(out, i).params,
                                population_train.member(out, j).params) > 1e-5, (i, j)


def test_members_with_their_own_batches_and_packing_plans():
    """Members train on different completions / advantages of the same prompts, in 2 micro-batches: each gives the
    single step on its own batch; their packing plans need different packed-row counts R and are padded to the
    largest. All three members in one vmapped update (members_at_once = 0)."""
    cfg = _config(2, **MICRO_CONFIG)
    state, frozen = _start(cfg)
    batches = _member_batches()
    rows = [packing.plan(packing.lengths_from_mask(b["completion_mask"]), 2, 2, 5).source.shape[1]
            for b in batches]
    assert rows[1] < rows[0] == rows[2], rows  # the plans differ in R
    out, metrics = _population_step(_at_once(cfg, 0))(population_train.stack_states([_copy(state)] * 3), frozen, None,
                                         _stack_batches(batches), _config_values(cfg, 3))
    for i, b in enumerate(batches):
        want_state, want_metrics = _single(cfg, state, frozen, None, b)
        _assert_member(out, metrics, i, want_state, want_metrics, VMAP_TOL)
    assert max_abs_diff(population_train.member(out, 0).params, population_train.member(out, 1).params) > 1e-5


def test_take_members_copies_params_and_optimizer_moments():
    cfg = _config(2)
    states, frozen = population_train.init_population_state(CFG, params(0), cfg, MESH, size=3)
    assert frozen is not None and population_train.num_members(states) == 3
    marked = jax.tree.map(lambda x: x + jnp.arange(3, dtype=x.dtype).reshape((3,) + (1,) * (x.ndim - 1)) + 1,
                          states)  # member k's every leaf (params, moments, counter) shifted by k + 1
    out = population_train.take_members(marked, [2, 2, 0])
    for k, parent in enumerate((2, 2, 0)):
        got, want = population_train.member(out, k), population_train.member(marked, parent)
        assert max_abs_diff(got.params, want.params) == 0.0
        assert max_abs_diff(got.opt_state, want.opt_state) == 0.0
        assert int(got.step) == int(want.step) == parent + 1
    assert max_abs_diff(population_train.member(out, 2).opt_state,
                        population_train.member(marked, 2).opt_state) > 0.5  # member 2 really was replaced
    for bad in ([0, 1], [0, 1, 3], [0.0, 1.0, 2.0]):
        with pytest.raises(ValueError, match="parents must"):
            population_train.take_members(marked, bad)


@pytest.mark.parametrize("variant", ["grpo", "gspo", "cispo"])
def test_traced_loss_hyperparameters_equal_the_config_values(variant):
    """policy_loss(hyperparameters=) under jit and vmap equals policy_loss with the values in the config, for every
    traceable field, and each field changes the loss or its gradient (so an ignored value would show)."""
    from grpo_jax import config as config_lib

    rng = np.random.RandomState(0)
    n, t = 6, 4
    logps = jnp.asarray(rng.randn(n, t) * 0.3 - 2.0, jnp.float32)
    old = logps + jnp.asarray(rng.randn(n, t) * 0.2, jnp.float32)
    ref = logps + jnp.asarray(rng.randn(n, t) * 0.2, jnp.float32)
    entropy = jnp.asarray(rng.rand(n, t), jnp.float32)
    adv = jnp.asarray(rng.randn(n), jnp.float32)
    mask = jnp.asarray(rng.rand(n, t) > 0.2, jnp.float32)
    cfg = config_lib.loss_config(variant)
    cfg.kl_beta = 0.04
    values = [dict(kl_beta=0.0, clip_low=cfg.clip_low, clip_high=cfg.clip_high, entropy_coef=0.0),
              dict(kl_beta=0.1, clip_low=cfg.clip_low * 0.1, clip_high=cfg.clip_high * 0.2, entropy_coef=0.0),
              dict(kl_beta=0.04, clip_low=cfg.clip_low, clip_high=cfg.clip_high, entropy_coef=0.3)]

    def loss_and_grad(c, hp):
        return jax.value_and_grad(lambda lp: losses.policy_loss(lp, old, ref, adv, mask, c, entropy=entropy,
                                                                hyperparameters=hp)[0])(logps)

    stacked = {k: jnp.asarray([v[k] for v in values], jnp.float32) for k in values[0]}
    got = jax.jit(jax.vmap(lambda hp: loss_and_grad(cfg, hp)))(stacked)
    results = []
    for i, v in enumerate(values):
        c = cfg.copy_and_resolve_references()
        for name, value in v.items():
            c[name] = float(value)
        want = loss_and_grad(c, None)
        results.append(want)
        np.testing.assert_allclose(got[0][i], want[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[1][i], want[1], rtol=1e-5, atol=1e-7)
    assert max_abs_diff(results[0], results[1]) > 1e-3 and max_abs_diff(results[0], results[2]) > 1e-3
    with pytest.raises(ValueError, match="may be given as traced values"):
        losses.policy_loss(logps, old, ref, adv, mask, cfg, hyperparameters={"dual_clip": 2.0})


def test_reference_pass_and_bad_hyperparameters():
    cfg = _config(2, kl_beta=0.0)
    assert not population_train.reference_needed(cfg)
    pop = cfg.copy_and_resolve_references()
    pop.population.size = 4
    pop.population.mutate = ("lr", "kl_beta")
    assert population_train.reference_needed(pop)  # kl_beta may mutate above 0: the reference pass runs
    pop.population.ranges.kl_beta = (0.0, 0.0)
    assert not population_train.reference_needed(pop)

    states, frozen = population_train.init_population_state(CFG, params(0), cfg, MESH, size=2)
    b = _stack_batches([batch(p=4, g=2, seed=1)] * 2)
    step = population_train.make_population_train_step(CFG, cfg, MESH, FAST_COMPILE)
    with pytest.raises(ValueError, match="runs no reference pass"):
        step.prepare(states, frozen, None, b, {"kl_beta": np.asarray([0.0, 0.1])})
    with pytest.raises(ValueError, match="not 'top_p'"):
        step.prepare(states, frozen, None, b, {"top_p": np.asarray([1.0, 0.9])})
    with pytest.raises(ValueError, match="temperature.*must be > 0"):
        step.prepare(states, frozen, None, b, {"temperature": np.asarray([1.0, 0.0])})
    with pytest.raises(ValueError, match=r"shape \(2,\), got \(3,\)"):
        step.prepare(states, frozen, None, b, {"lr": np.ones(3)})
    with pytest.raises(ValueError, match="leading member axis"):
        step.prepare(states, frozen, None, {**b, "advantages": b["advantages"][0]}, {})
