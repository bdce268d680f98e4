"""The logical-axis rules hold in both phases: on a data 2 x fsdp 2 x tensor 2 mesh of 8 virtual CPU devices, the
lowered train step and the lowered sampler (prefill + decode steps) carry the shardings the rules tables give the
model's hidden states, attention heads, MLP units and KV caches, and the sampler's weights arrive placed by its own
table (`partitioning.SAMPLER_RULES`: whole over fsdp, split over tensor) while the trainer's are split over fsdp.

Read from the lowered StableHLO text (`jitted.lower(...).as_text()`): every `sdy.sharding_constraint` on an array
of a model activation's or cache's shape, and the `sdy.sharding` of the program's parameter arguments. If the
trainer's or the sampler's table stopped being active while tracing, the model's constraints would be missing (or,
for the decode loop's caches, replicate the KV heads) and this test fails.

XLA fixes the number of CPU devices when jax is first imported, so the check runs in a fresh interpreter: this
file is also a script (`python tests/test_sharding_rules_hlo.py`) that prints one JSON line.
"""

import json
import os
import re
import sys

from virtual_devices import run_report

DEVICES = 8
HERE = os.path.dirname(os.path.abspath(__file__))

# CFG of train_fixtures: D 16, MLP 32, 4 heads, 2 KV heads, head_dim 4, vocab 64, 2 layers
D, F, H, HKV, HD, V, L = 16, 32, 4, 2, 4, 64, 2
ROWS = ("data", "fsdp")
T = ("tensor",)
EXPECTED = {  # activation kind -> the spec of every constraint on it: ((mesh axes of dim 0), (of dim 1), ...)
    "hidden [B, T, D]": (ROWS, (), ()),
    "mlp [B, T, F]": (ROWS, (), T),
    "q [B, T, H, hd]": (ROWS, (), T, ()),
    "k/v [B, T, Hkv, hd]": (ROWS, (), T, ()),
}
CACHE = "kv cache [L, B, Hkv, ., .]"
EXPECTED_CACHE = ((), ROWS, T, (), ())

_CONSTRAINT = re.compile(r"sdy\.sharding_constraint %\S+ <@mesh, \[(.*?)\]> : tensor<([0-9x]+)x[a-z]+[0-9]*>")
_ARG = re.compile(r"%arg\d+: tensor<([0-9x]+)x[a-z]+[0-9]*> \{sdy\.sharding = #sdy\.sharding<@mesh, \[(.*?)\]>")


def _spec(text: str) -> tuple:
    """'{"data", "fsdp"}, {}, {"tensor"}' -> (('data', 'fsdp'), (), ('tensor',))"""
    return tuple(tuple(re.findall(r'"(\w+)"', dim)) for dim in re.findall(r"\{[^}]*\}", text))


def constraints(hlo: str) -> list:
    """[(shape, spec)] of every sharding constraint in the lowered module."""
    return [(tuple(int(d) for d in shape.split("x")), _spec(spec)) for spec, shape in _CONSTRAINT.findall(hlo)]


def args(hlo: str) -> list:
    """[(shape, spec)] of the program's arguments placed on the mesh."""
    return [(tuple(int(d) for d in shape.split("x")), _spec(spec)) for shape, spec in _ARG.findall(hlo)]


def kind(shape: tuple):
    """Which model array a constrained shape is (tiny dims all differ where it matters), or None."""
    if len(shape) == 3 and shape[-1] == D:
        return "hidden [B, T, D]"
    if len(shape) == 3 and shape[-1] == F:
        return "mlp [B, T, F]"
    if len(shape) == 4 and shape[-2:] == (H, HD):
        return "q [B, T, H, hd]"
    if len(shape) == 4 and shape[-2:] == (HKV, HD):
        return "k/v [B, T, Hkv, hd]"
    if len(shape) == 5 and shape[0] == L and shape[2] == HKV:
        return CACHE
    return None


def check_constraints(hlo: str, want: tuple) -> dict:
    """{kind: count} of the model's constraints; AssertionError naming the first one whose spec the rules do
    not give, or a kind in `want` that has none."""
    found = {}
    for shape, spec in constraints(hlo):
        k = kind(shape)
        if k is None:
            continue
        assert shape[1 if k == CACHE else 0] % 4 == 0, f"{k} {shape}: rows not divisible by data x fsdp"
        expected = EXPECTED_CACHE if k == CACHE else EXPECTED[k]
        assert spec == expected, f"{k} of shape {shape} constrained to {spec}, the rules give {expected}"
        found[k] = found.get(k, 0) + 1
    missing = [k for k in want if k not in found]
    assert not missing, f"no sharding constraint on {missing} (found {found}): the rules table is not active"
    return found


def test_rules_hold_in_train_step_and_sampler():
    report = run_report(__file__, DEVICES)
    assert report["devices"] == DEVICES
    assert set(report["train"]) == set(EXPECTED), report
    assert set(report["grad"]) == set(EXPECTED), report
    assert set(report["sample"]) == set(EXPECTED) | {CACHE}, report


def _check() -> dict:
    import jax
    import numpy as np

    sys.path.insert(0, HERE)
    from grpo_jax import sampling, sharding, train_step
    from grpo_jax.rollout import jitted as jitted_engine
    from train_fixtures import CFG, batch, config, params

    assert jax.device_count() == DEVICES, f"expected {DEVICES} devices, got {jax.devices()}"
    assert (CFG.hidden_size, CFG.intermediate_size, CFG.num_heads, CFG.num_kv_heads, CFG.head_dim, CFG.vocab_size,
            CFG.num_layers) == (D, F, H, HKV, HD, V, L)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    report = {"devices": jax.device_count()}

    # the train step (2 micro-batches of 4 prompts, completions packed): traced under the trainer's table
    cfg = config(kl_beta=0.0, micro_batch_size=8)
    state, frozen = train_step.init_train_state(CFG, params(0), cfg, mesh)
    step = train_step.make_train_step(CFG, cfg, mesh)
    b = batch(p=8, g=2)
    inputs = step.prepare(state, frozen, None, b).args
    hlo = step.jitted.lower(*inputs).as_text()
    report["train"] = check_constraints(hlo, tuple(EXPECTED))
    placed = dict(args(hlo))
    assert placed[(V, D)] == (T, ("fsdp",)), placed  # the trainer's embedding: vocab over tensor, embed over fsdp
    # the gradient function (`make_grad_fn`'s trace): the same table
    grad_fn = train_step._build(CFG, cfg, mesh).grad_fn
    report["grad"] = check_constraints(jax.jit(grad_fn).lower(state.params, None, None, inputs[3]).as_text(),
                                       tuple(EXPECTED))

    # the sampler: generate() places the (trainer-placed) params by the sampler's table and calls its program,
    # traced under the sampler's table; captured at the call and lowered with the very arguments it was given
    captured = {}
    real = jitted_engine.compiled

    def spy(*a, **k):
        fn = real(*a, **k)

        def call(*arguments):
            captured["fn"], captured["args"] = fn, arguments
            raise _Captured
        return call
    jitted_engine.compiled = spy
    tokens = np.ones((4, 6), np.int32)
    try:
        sampling.generate(CFG, state.params, tokens, np.ones((4, 6), bool), jax.random.PRNGKey(0), group_size=2,
                          max_new_tokens=4, mesh=mesh)
    except _Captured:
        pass
    finally:
        jitted_engine.compiled = real
    hlo = captured["fn"].lower(*captured["args"]).as_text()
    report["sample"] = check_constraints(hlo, tuple(EXPECTED) + (CACHE,))
    placed = dict(args(hlo))
    assert placed[(V, D)] == (T, ()), placed                 # vocab over tensor, whole over fsdp
    assert placed[(L, D, F)] == ((), (), T), placed          # MLP units over tensor, embed whole
    assert placed[(D, V)] == ((), T), placed                 # lm_head
    weights = [spec for _, spec in args(hlo) if spec[:1] != (ROWS,)]  # all but the prompts' rows
    assert len(weights) >= len(jax.tree.leaves(state.params)), placed
    assert not any("fsdp" in sum(spec, ()) for spec in weights), placed
    return report


class _Captured(Exception):
    pass


if __name__ == "__main__":
    if f"device_count={DEVICES}" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print(json.dumps(_check()))
