"""LoRA: the merge is W + (alpha / r) A @ B, the merged model equals base + adapters applied on the side, only the
adapters are trained and held by the optimizer, and the reference is the base with the adapters off."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import sharding, train_step
from grpo_jax.models import forward, lora
from train_fixtures import CFG, FAST_COMPILE, batch, config, max_abs_diff, model_logprobs, params

MESH = sharding.make_mesh(sharding.mesh_config())
_init_lora = jax.jit(lora.init_lora, static_argnums=(1, 3))  # eager ops compile one by one: slow on a busy CPU


@jax.jit
def _random_adapters(adapters, key):
    return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(key, x.shape), adapters)


def test_init_and_merge_by_hand():
    base = params(0)
    adapters = _init_lora(base, 3, jax.random.PRNGKey(1), lora.DEFAULT_TARGETS)
    q = adapters["layers"]["attn"]["q_proj"]
    assert q["a"].shape == (2, 16, 3) and q["b"].shape == (2, 3, 16)
    assert adapters["layers"]["mlp"]["down_proj"]["a"].shape == (2, 32, 3)
    assert float(jnp.max(jnp.abs(q["a"]))) <= 1 / 4 and float(jnp.max(jnp.abs(q["a"]))) > 0  # U(+-1/sqrt(16))
    assert max_abs_diff(jax.jit(lora.merge, static_argnums=(2, 3))(base, adapters, 16.0, 3), base) == 0.0  # B = 0

    adapters = _random_adapters(adapters, jax.random.PRNGKey(2))
    merged = lora.merge(base, adapters, alpha=6.0, rank=3)
    a = np.asarray(adapters["layers"]["mlp"]["up_proj"]["a"][1], np.float64)
    b = np.asarray(adapters["layers"]["mlp"]["up_proj"]["b"][1], np.float64)
    w = np.asarray(base["layers"]["mlp"]["up_proj"]["kernel"][1], np.float64)
    np.testing.assert_allclose(merged["layers"]["mlp"]["up_proj"]["kernel"][1], w + 2.0 * a @ b, atol=1e-6)
    assert merged["embed"]["embedding"] is base["embed"]["embedding"]  # untouched leaves are shared
    assert max_abs_diff(base, params(0)) == 0.0  # the base is not modified

    only_qv = jax.eval_shape(lambda: lora.init_lora(base, 2, jax.random.PRNGKey(3), targets=("q_proj", "v_proj")))
    assert sorted(only_qv["layers"]["attn"]) == ["q_proj", "v_proj"] and "mlp" not in only_qv["layers"]
    with pytest.raises(ValueError, match=r"LoRA targets \['qkv'\] are not kernels of this model"):
        lora.init_lora(base, 2, jax.random.PRNGKey(3), targets=("qkv",))
    with pytest.raises(ValueError, match="LoRA rank must be a positive integer, got 0"):
        lora.init_lora(base, 0, jax.random.PRNGKey(3))


def _side_branch_logits(base, adapters, alpha, rank, tokens):
    """Independent of `merge`: the base model with y = x W + (alpha / r) (x A) B added in each adapted Dense
    (Hu et al. 2021, eq. 3), via a Flax method interceptor. A and B ride along in the params tree so that the
    layer scan slices them per layer."""
    side = jax.tree.map(lambda x: x, base)
    for group, modules in adapters["layers"].items():
        for name, ab in modules.items():
            side["layers"][group][name] = dict(side["layers"][group][name], lora_a=ab["a"], lora_b=ab["b"])

    def add_adapter(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        module = context.module
        if isinstance(module, nn.Dense) and context.method_name == "__call__" and \
                module.has_variable("params", "lora_a"):
            a, b = module.get_variable("params", "lora_a"), module.get_variable("params", "lora_b")
            y = y + (alpha / rank) * (args[0] @ a) @ b
        return y

    with nn.intercept_methods(add_adapter):  # a fresh jit, traced inside the interceptor
        return jax.jit(lambda p, t: forward(CFG, p, t))(side, tokens)


def test_lora_training_reference_and_merge():
    base = params(0)
    b = batch(p=4, g=2, seed=11, model_params=base)
    cfg = config(lr=1e-2, kl_beta=0.1)
    cfg.model.lora_rank, cfg.model.lora_alpha = 4, 8.0
    state, frozen = train_step.init_train_state(CFG, base, cfg, MESH)
    assert frozen is not None and max_abs_diff(frozen, base) == 0.0
    adapter_sizes = sum(x.size for x in jax.tree.leaves(state.params))
    opt_sizes = [x.size for x in jax.tree.leaves(state.opt_state)]
    assert sum(opt_sizes) - sum(s for s in opt_sizes if s == 1) == 2 * adapter_sizes  # Adam's m, v of adapters
    assert adapter_sizes < sum(x.size for x in jax.tree.leaves(base)) / 2

    step = train_step.make_train_step(CFG, cfg, MESH, FAST_COMPILE)
    with pytest.raises(ValueError, match="with LoRA .* pass ref_params=None"):
        step(state, frozen, base, b)
    with pytest.raises(ValueError, match="frozen must be the LoRA base params"):
        step(state, None, None, b)
    state, first = step(state, frozen, None, b)
    assert float(first["kl"]) < 1e-7  # B = 0 at the first update: policy == reference
    assert float(jnp.max(jnp.abs(state.params["layers"]["mlp"]["up_proj"]["b"]))) > 1e-4  # adapters trained
    assert max_abs_diff(frozen, params(0)) == 0.0  # the base never moves

    # The next step's KL is against the base with the adapters off: recompute it by hand (k3, token mean).
    policy = jax.tree.map(jnp.copy, train_step.policy_params(CFG, state, frozen))
    adapters = jax.tree.map(jnp.copy, state.params)
    state, second = step(state, frozen, None, b)
    args = (b["prompt_tokens"], b["prompt_mask"], b["completions"], 2, 0.9)
    pol = np.asarray(model_logprobs(policy, *args)[0], np.float64)
    ref = np.asarray(model_logprobs(base, *args)[0], np.float64)
    mask = b["completion_mask"] * b["keep"][:, None]
    k3 = np.exp(ref - pol) - (ref - pol) - 1
    want = (k3 * mask).sum() / mask.sum()
    assert want > 1e-6
    np.testing.assert_allclose(float(second["kl"]), want, rtol=1e-3, atol=1e-9)

    # trained adapters merged into the base == base + adapters on the side
    tokens = jnp.asarray(np.random.RandomState(0).randint(1, CFG.vocab_size, (3, 9)))
    plain = jax.jit(lambda p, t: forward(CFG, p, t))
    merged = plain(policy, tokens)
    side = _side_branch_logits(base, adapters, 8.0, 4, tokens)
    np.testing.assert_allclose(merged, side, atol=1e-5)
    assert float(jnp.max(jnp.abs(side - plain(base, tokens)))) > 1e-3  # the adapters matter
