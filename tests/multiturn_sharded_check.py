"""Run on 8 virtual CPU devices (tests/test_multiturn_sharded.py): the same key gives the same episodes with no mesh
and on meshes of 8 devices (data 8; data 2 x fsdp 2 x tensor 2), with a prompt count that does not divide the row
shards, with compaction on, in waves of max_decode_rows (two groups, then one), and with each row's history re-run
at every turn boundary (keep_cache False). Prints one JSON line."""

import json

import jax
import numpy as np

from grpo_jax import sharding
from grpo_jax.rollout import multiturn
from test_multiturn_rollout import CODEC, CONFIG, KEY, KNOBS, _envs, _params, _prompts, _settings

assert jax.device_count() == 8, jax.devices()
tokens, mask = _prompts()  # 3 prompts x G 3 = 9 rows
settings = _settings()
settings = settings.replace(compact=False)
base, base_stats = multiturn.generate_episodes(CONFIG, _params(), tokens, mask, KEY, settings, _envs(), CODEC, **KNOBS)
base = jax.tree.map(np.asarray, base)
report = {"turns": base_stats.turns.tolist(), "observation_tokens": base_stats.observation_tokens}
for name, shape, changes in (("data8", dict(data=8, fsdp=1, tensor=1), {}),
                             ("d2f2t2", dict(data=2, fsdp=2, tensor=2), {}),
                             ("d2f2t2_compact", dict(data=2, fsdp=2, tensor=2), dict(compact=True)),
                             ("d2f2t2_waves", dict(data=2, fsdp=2, tensor=2), dict(compact=True, max_decode_rows=6)),
                             ("d2f2t2_rebuilt", dict(data=2, fsdp=2, tensor=2), dict(compact=True, keep_cache=False))):
    mesh = sharding.make_mesh(shape)
    keep_cache = changes.pop("keep_cache", True)
    out, stats = multiturn.generate_episodes(CONFIG, _params(), tokens, mask, KEY, settings.replace(**changes),
                                             _envs(), CODEC, mesh=mesh, keep_cache=keep_cache, **KNOBS)
    out = jax.tree.map(np.asarray, out)
    same = all(np.array_equal(getattr(out, f), getattr(base, f))
               for f in ("tokens", "mask", "action_mask", "lengths", "truncated"))
    report[name] = {"tokens_computed": stats.tokens_computed, "same_tokens": bool(same),
                    "logp_diff": float(np.abs(out.logps - base.logps).max()),
                    "same_turns": bool(np.array_equal(stats.turns, base_stats.turns)),
                    "same_observation_tokens": stats.observation_tokens == base_stats.observation_tokens,
                    "rows": int(out.tokens.shape[0])}
print(json.dumps(report))
