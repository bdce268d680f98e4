"""The sampler gives the same rollout on 1 device and on 8 (virtual CPU) devices for the same key, with and without
compaction and refill.

XLA fixes the number of CPU devices when jax is first imported, and pytest (and its xdist workers) import jax long
before this module runs, so the 8-device half runs in a fresh interpreter: this file is also a script
(`python tests/test_sampling_sharded.py`) that sets XLA_FLAGS before importing jax and checks 1 device == 8.
"""

import json
import os

from virtual_devices import run_report

DEVICES = 8


def test_same_rollout_on_one_and_eight_devices():
    report = run_report(__file__, DEVICES)
    assert report["devices"] == DEVICES
    assert report["checked"] == ["data8_replicated", "data2_fsdp2_tensor2_sharded", "data8_uneven_prompts",
                                 "plain_loop", "data8_compaction", "data8_refill"]


def _check() -> dict:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from grpo_jax import batching, sampling
    from grpo_jax.models import ModelConfig, init_params, param_logical_axes

    assert jax.device_count() == DEVICES, f"expected {DEVICES} devices, got {jax.devices()}"
    config = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, max_position_embeddings=128, tie_word_embeddings=False)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 40.0  # a spread-out next-token distribution
    rng = np.random.RandomState(0)
    prompts = [list(rng.randint(3, 96, rng.randint(1, 9))) for _ in range(8)]
    tokens, mask = batching.left_pad(prompts, pad_id=0, bucket=4)
    settings = dict(group_size=3, max_new_tokens=80, temperature=0.9, top_k=40, top_p=0.95, stop_ids=(5, 6))
    key = jax.random.PRNGKey(42)

    def run(toks, msk, mesh=None, p=params):
        out = sampling.generate(config, p, toks, msk, key, mesh=mesh, **settings)
        return jax.tree.map(np.asarray, out)

    def same(a, b, name):
        for field in ("tokens", "mask", "lengths", "truncated"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{name}: {field}")
        np.testing.assert_allclose(a.logps, b.logps, atol=1e-5, err_msg=f"{name}: logps")

    devices = np.array(jax.devices())
    axes = ("data", "fsdp", "tensor")
    single = run(tokens, mask)
    assert single.mask.sum() > 8 * 3 * 2 and len(np.unique(single.tokens)) > 10
    # rows that end in both phases of the decode loop (caches of 64 and 80 slots), and rows that stop early
    assert sampling.cache_phases(80) == (64, 80) and single.lengths.max() > 64 and single.lengths.min() < 64
    checked = []

    # 8-way data parallel, params given as single-device arrays (replicated by the sampler)
    data8 = Mesh(devices.reshape(8, 1, 1), axes)
    out = sampling.generate(config, params, tokens, mask, key, mesh=data8, **settings)
    assert out.tokens.sharding.spec[0] in (("data", "fsdp"), "data"), out.tokens.sharding
    same(single, jax.tree.map(np.asarray, out), "data8")
    checked.append("data8_replicated")

    # 2 x 2 x 2: rows over data and fsdp, params sharded over fsdp (embed) and tensor (heads, mlp, vocab)
    mesh = Mesh(devices.reshape(2, 2, 2), axes)
    rules = {"embed": "fsdp", "mlp": "tensor", "q_heads": "tensor", "kv_heads": "tensor", "vocab": "tensor"}
    specs = param_logical_axes(config)
    sharded = jax.tree.map(
        lambda a, spec: jax.device_put(a, NamedSharding(mesh, PartitionSpec(*(rules.get(n) for n in spec)))),
        params, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    assert any(len(x.sharding.device_set) == DEVICES and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(sharded))
    same(single, run(tokens, mask, mesh, sharded), "data2_fsdp2_tensor2")
    checked.append("data2_fsdp2_tensor2_sharded")

    # 3 prompts over 8 data shards: padded to 8 inside, the padding dropped
    same(jax.tree.map(lambda x: x[:9], single), run(tokens[:3], mask[:3], data8), "uneven")
    checked.append("data8_uneven_prompts")

    # the plain loop (no compaction) on 1 device; compaction over 8 shards (24 -> 16 -> 8 rows) and refill (10
    # slots, rounded up to 16) on 8 devices: the same rollout
    same(single, jax.tree.map(np.asarray, sampling.generate(config, params, tokens, mask, key, compact=False,
                                                            **settings)), "plain")
    checked.append("plain_loop")
    out, stats = sampling.generate_with_stats(config, params, tokens, mask, key, mesh=data8, **settings)
    same(single, jax.tree.map(np.asarray, out), "data8 compaction")
    assert stats.buckets == (24, 16, 8) and stats.steps[1:].sum() > 0 and stats.refilled == 0, stats
    assert 0 < (single.lengths > 65).sum() <= 16  # the second cache phase runs on a compacted batch
    checked.append("data8_compaction")
    out, stats = sampling.generate_with_stats(config, params, tokens, mask, key, mesh=data8, max_decode_rows=10,
                                              **settings)
    same(single, jax.tree.map(np.asarray, out), "data8 refill")
    assert stats.buckets == (16, 8) and stats.refilled > 0, stats
    assert out.tokens.sharding.spec[0] in (("data", "fsdp"), "data"), out.tokens.sharding
    checked.append("data8_refill")
    return {"devices": jax.device_count(), "checked": checked}


if __name__ == "__main__":
    if f"device_count={DEVICES}" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print(json.dumps(_check()))
