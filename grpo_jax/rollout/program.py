"""The jitted engine's compiled program: prefill, token 0, the decode loop; one program per model config, Settings
(its `program_key()`), mesh, stats flag and number of population members.

    fn = compiled(model_config, settings, mesh)     # jitted (params, prompt_tokens, prompt_mask, key, temperature,
    rollout = fn(params, tokens, mask, key, t, p)   #         top_p[, lora.Members]) -> Rollout

The program gets the Settings object whole: it is the cache key (so an engine option declared with
`register_engine("jitted", fields=...)` reaches the program as `settings.option(name)` and a new value compiles a
new program) and the program reads every static setting from it. temperature and top_p are the program's traced
arguments (scalars, or [K] with K members), so changing them does not recompile.

  1. prefill: each prompt is run once (`logprobs.encode_prompt`, the trainer's function); its keys/values are read
     by all G completions of the group -- no G copies of the prompt cache;
  2. completion token 0 is drawn from the prompt's last hidden state (`models.unembed`, the trainer's head);
  3. `decode_loop.decode` decodes the rest in `lax.while_loop`s (see grpo_jax/rollout/decode_loop.py).

Row r (p-major, r = p * G + g) at its own step t draws with fold_in(fold_in(key, r), t) (`draw.sample_logits` on
one uniform per row), so a row's draws do not depend on the batch size, on other rows, on compaction or refill, or
on how the batch is split over devices.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax import partitioning
from grpo_jax.logprobs import encode_prompt
from grpo_jax.models import decoder, lora
from grpo_jax.models.config import ModelConfig
from grpo_jax.rollout import decode_loop
from grpo_jax.rollout.draw import sample_logits
from grpo_jax.rollout.result import Rollout
from grpo_jax.rollout.settings import Settings


def resolve(config: ModelConfig, settings: Settings) -> Settings:
    """The settings a program runs: compact None -> on from `decode_loop.COMPACT_MIN_NEW_TOKENS` new tokens,
    top_k capped at the vocabulary (a larger top_k keeps every token, as top_k = vocab does)."""
    compact = settings.compact
    if compact is None:
        compact = settings.max_new_tokens >= decode_loop.COMPACT_MIN_NEW_TOKENS
    return settings.replace(compact=compact, top_k=min(settings.top_k, config.vocab_size))


def data_axes(mesh: Optional[Mesh]) -> tuple:
    """The mesh axes the rows are split over: ('data', 'fsdp') where the mesh has them."""
    return tuple(a for a in ("data", "fsdp") if mesh is not None and a in mesh.axis_names)


def _decode_program(config: ModelConfig, settings: Settings, mesh: Optional[Mesh], members: int = 0):
    """The traced function (params, prompt_tokens, prompt_mask, key, temperature, top_p[, members]) -> (Rollout,
    decode_loop.Outputs): prefill, token 0 of every row, then `decode_loop.decode`.

    members = K > 0: `members` is a `lora.Members` of K adapters over the base `params`, temperature and top_p are
    [K]; the rows are member-major (row = k * P * G + p * G + g): each member's prefill of the P prompts (K * P
    prefix rows, its adapted keys/values its own), each row decoded with its member's adapters and settings and
    the key of its row within the member (the single policy's key of that row)."""
    g, t_max = settings.group_size, settings.max_new_tokens
    axes = data_axes(mesh)
    shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1

    def constrain(x, axis=0):  # keep the row axis split over the data axes inside the loop
        if not axes:
            return x
        spec = [None] * x.ndim
        spec[axis] = axes
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))

    def program(params, prompt_tokens, prompt_mask, key, temperature, top_p, member_adapters=None):
        p = prompt_tokens.shape[0]
        n = p * g
        adapters = None
        if not members:
            prompt = encode_prompt(config, params, prompt_tokens, prompt_mask)
            row_index = jnp.arange(n, dtype=jnp.int32)
        else:  # K members' rows, member-major
            ids = jnp.arange(members, dtype=jnp.int32)
            prompt = encode_prompt(config, params, jnp.tile(prompt_tokens, (members, 1)),
                                   jnp.tile(prompt_mask, (members, 1)),
                                   lora.member_adapters(member_adapters, jnp.repeat(ids, p)))
            adapters = lora.member_adapters(member_adapters, constrain(jnp.repeat(ids, n)))
            temperature, top_p = jnp.repeat(temperature, n), jnp.repeat(top_p, n)   # [K * N], per row
            row_index = jnp.arange(members * n, dtype=jnp.int32) % n                # the row within its member
            n = members * n
        row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, row_index)

        def draw(logits, u, rows):
            def per_row(x):
                return x if jnp.ndim(x) == 0 else x[rows]
            return sample_logits(logits, u, per_row(temperature), per_row(top_p), top_k=settings.top_k,
                                 use_top_p=settings.use_top_p, greedy=settings.greedy)

        first_logits = jnp.repeat(decoder.unembed(config, params, prompt.last_hidden), g, axis=0)   # [N, V]
        params, prefix = decoder.for_decoding(config, params, prompt.prefix)
        adapters = decoder.adapters_for_decoding(config, adapters)
        tok0, lp0 = draw(constrain(first_logits), decode_loop.row_uniforms(row_keys, 0),
                         jnp.arange(n, dtype=jnp.int32))
        start = jnp.repeat(prompt.length, g)  # completion token j sits at position length + j
        problem = decode_loop.Problem(config, params, prefix, constrain(start), constrain(tok0), row_keys, draw, g,
                                      t_max, settings.stop_ids, constrain, adapters)
        out = decode_loop.decode(problem, constrain(lp0), pad_id=settings.pad_id, shards=shards,
                                 compact=settings.compact, max_decode_rows=settings.max_decode_rows)
        mask = (jnp.arange(t_max, dtype=jnp.int32)[None, :] < out.lengths[:, None]).astype(jnp.float32)
        return Rollout(out.tokens, mask, out.logps, out.lengths, ~out.stopped, mask), out

    return program


def compiled(config: ModelConfig, settings: Settings, mesh: Optional[Mesh] = None, stats: bool = False,
             members: int = 0):
    """The jitted program (params, prompt_tokens, prompt_mask, key, temperature, top_p[, lora.Members]) -> Rollout
    (with `stats`: (Rollout, decode_loop.Outputs), for the loop's work counters); one per
    `resolve(config, settings).program_key()`, mesh, stats and members (K, static; 0 = one policy)."""
    return _jitted(config, resolve(config, settings).program_key(), mesh, bool(stats), int(members))


@functools.lru_cache(maxsize=64)
def _jitted(config: ModelConfig, settings: Settings, mesh: Optional[Mesh], stats: bool, members: int):
    program = _decode_program(config, settings, mesh, members)
    if not stats:
        with_stats = program

        def program(*args):
            return with_stats(*args)[0]
    if mesh is None:
        return jax.jit(program)
    rows = NamedSharding(mesh, PartitionSpec(data_axes(mesh)))
    rows2 = NamedSharding(mesh, PartitionSpec(data_axes(mesh), None))
    out_shardings = Rollout(rows2, rows2, rows2, rows, rows, rows2)
    if stats:
        replicated = NamedSharding(mesh, PartitionSpec())
        out_shardings = (out_shardings, decode_loop.Outputs(rows2, rows2, rows, rows, replicated, replicated))
    # The model's activations and caches are constrained by the sampler's rules table (see grpo_jax.partitioning).
    return jax.jit(partitioning.with_rules(program, mesh, partitioning.rules_for("sample")),
                   out_shardings=out_shardings)
