"""Run as a subprocess by tests/test_population_sampling.py, with XLA_FLAGS=--xla_force_host_platform_device_count=4
set before jax is imported. K = 2 LoRA members in the joint decode loop (`sampling.generate(members=)`) on one
device and on a (data 4) mesh, with 3 prompts (padded to 4 over the mesh, each member's padding rows dropped),
compaction and refill. Prints one JSON object: per case, whether the tokens are equal and the largest log-prob
difference."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from grpo_jax import batching, sampling
from grpo_jax.models import ModelConfig, init_params, lora


def main() -> dict:
    config = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=False)
    base = jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
    base["lm_head"]["kernel"] = base["lm_head"]["kernel"] * 10.0
    trees = []
    for seed in range(2):
        rng = np.random.RandomState(seed)
        tree = lora.init_lora(base, 4, jax.random.PRNGKey(seed))
        trees.append(jax.tree.map(lambda x: x + 0.1 * rng.randn(*x.shape).astype(np.float32), tree))
    members = lora.Members(jax.tree.map(lambda *xs: jnp.stack(xs), *trees), 8.0)
    tokens, mask = batching.left_pad([[5, 6, 7], [8, 9, 10, 11, 12], [3]], pad_id=0, bucket=8)
    mesh = Mesh(np.array(jax.devices()).reshape(4, 1, 1), ("data", "fsdp", "tensor"))
    settings = dict(group_size=2, max_new_tokens=16, stop_ids=(1, 2, 3, 4, 5, 6), temperature=(1.0, 0.8),
                    top_p=(0.9, 0.95), members=members)
    report = {"devices": jax.device_count()}
    for name, loop in (("compacted", dict(compact=True)), ("refilled", dict(compact=True, max_decode_rows=4))):
        one = sampling.generate(config, base, tokens, mask, jax.random.PRNGKey(3), **settings, **loop)
        four = sampling.generate(config, base, tokens, mask, jax.random.PRNGKey(3), mesh=mesh, **settings, **loop)
        report[name] = {"rows": int(np.asarray(four.tokens).shape[0]),
                        "tokens_equal": bool(np.array_equal(np.asarray(one.tokens), np.asarray(four.tokens))),
                        "lengths_equal": bool(np.array_equal(np.asarray(one.lengths), np.asarray(four.lengths))),
                        "logps_diff": float(np.abs(np.asarray(one.logps) - np.asarray(four.logps)).max())}
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
