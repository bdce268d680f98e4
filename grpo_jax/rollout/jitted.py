"""Rollout engine 'jitted' (the default): G completions of each of P prompts in one compiled program
(grpo_jax/rollout/program.py), with exact log-probs.

    out = rollout.make("jitted", model_config, mesh).generate(params, prompt_tokens, prompt_mask, key, settings)
    out, stats = run(model_config, params, prompt_tokens, prompt_mask, key, settings, mesh, stats=True)

`run` checks the inputs (one clear ValueError naming the bad value), puts them on the mesh, calls the program that
`program.compiled(model_config, settings, mesh)` gives for these settings and drops the padding rows. The program
prefills each prompt once, then decodes the rows in `lax.while_loop`s that compact the batch as rows finish and,
with settings.max_decode_rows < N, refill finished rows' slots (grpo_jax/rollout/decode_loop.py).

The decode step is the model's own (`models.decode_step`): the same decoder that the trainer's
`logprobs.completion_logprobs` runs over all completion tokens at once, on one token per row with a cache. The
log-probs therefore equal the trainer's (|difference| <= 1e-5 in float32, tested): GRPO's ratio is 1 at the first
iteration and needs no sampler/trainer mismatch correction. Log-probs are log softmax(logits / temperature) of the
chosen token over the FULL vocabulary, even when top-k/top-p truncate the distribution the token is drawn from;
greedy decoding reports log-probs at temperature 1.

With a mesh (axes ('data', 'fsdp', 'tensor')), prompts and rows are split over ('data', 'fsdp'); the params are
placed by the sampler's rules table (`place_params`: the trainer's fsdp split of 'embed' gathered once per call, the
tensor split kept) and the program is traced under that table (`partitioning.rules_for('sample')`); P need not divide the number of data shards (the batch is
padded with copies of the last prompt and their rows dropped). The same key gives the same rollout on 1 device and
on 8, with or without compaction and refill (tested).

Population members (`generate_members`, `run(members=lora.Members(adapters [K, ...], alpha))`, params the shared
LoRA base): the K members' rows -- K * P * G, member-major -- are decoded in the same one program: each member's
prompts are prefilled with its adapters, every matmul of the base runs over all rows at once and each row adds its
own member's unmerged low-rank update (`lora.MemberAdapters`), temperature and top-p are one value per member, and
row (k, r) draws with the single policy's key of row r. Member k's rows equal a one-policy run on the base merged
with member k's adapters (tested), so members share random numbers.

Static (recompile when changed): the model config, the Settings but temperature and the top-p value (whether top-p
is on is static), the mesh and the number of members K. Traced: temperature, top-p (per member with members), the
members' adapters.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax import partitioning
from grpo_jax.models import decoder, lora
from grpo_jax.models.config import ModelConfig
from grpo_jax.rollout import decode_loop
from grpo_jax.rollout.engine import register_engine
from grpo_jax.rollout.program import compiled, data_axes, resolve
from grpo_jax.rollout.result import Rollout
from grpo_jax.rollout.settings import Settings


class DecodeStats(NamedTuple):
    """The decode loop's work (`run(stats=True)`): decode steps run at each batch size of the compaction
    ladder, and rows that took a slot another row had freed (refill)."""
    buckets: tuple       # the ladder's batch sizes (rows per decode step), largest first
    steps: np.ndarray    # int [len(buckets)]: decode steps run at each size
    refilled: int

    def tokens_computed(self, rows: int) -> int:
        """Token positions the call computed for `rows` rows: token 0 of each from the prefill, then every decode
        step's batch (finished rows' idle slots included)."""
        return int(rows + np.dot(np.asarray(self.buckets), np.asarray(self.steps)))


class JittedGroupSampler:
    """Every row decoded until it stops or reaches max_new_tokens, at most settings.max_decode_rows at once
    (0 = all); exact log-probs."""

    def __init__(self, model_config, mesh=None):
        self.model_config, self.mesh = model_config, mesh
        self.last_tokens_computed = None  # token positions the last call decoded (see RolloutEngine)

    def generate(self, params, prompt_tokens, prompt_mask, key, settings: Settings) -> Rollout:
        out, stats = run(self.model_config, params, prompt_tokens, prompt_mask, key, settings, self.mesh,
                         stats=True)
        self.last_tokens_computed = stats.tokens_computed(out.lengths.shape[0])
        return out

    def generate_members(self, params, members, prompt_tokens, prompt_mask, key, settings: Settings) -> Rollout:
        """K population members' rows in one decode loop: `params` the shared base, `members` a `lora.Members` of
        K adapters, settings.temperature / top_p K values (one per member) or one for all. -> Rollout of
        K * P * G rows, member-major; member k's rows are what `generate` gives for member k's merged params and
        settings with the same key. settings.max_decode_rows bounds all K members' rows decoded at once."""
        out, stats = run(self.model_config, params, prompt_tokens, prompt_mask, key, settings, self.mesh,
                         stats=True, members=members)
        self.last_tokens_computed = stats.tokens_computed(out.lengths.shape[0])
        return out


@register_engine("jitted")
def jitted(model_config, mesh=None) -> JittedGroupSampler:
    """The jitted group sampler (`sampling.generate`)."""
    return JittedGroupSampler(model_config, mesh)


# --------------------------------------------------------------------------------------------------------------
# One call: validation, placement on the mesh, the compiled program.
# --------------------------------------------------------------------------------------------------------------
def run(config: ModelConfig, params, prompt_tokens, prompt_mask, key, settings: Settings,
        mesh: Optional[Mesh] = None, *, stats: bool = False, members: Optional[lora.Members] = None):
    """The rollout of all rows (see the module docstring); with `stats`, (Rollout, DecodeStats)."""
    mask = np.asarray(prompt_mask).astype(bool)
    k = 0 if members is None else lora.num_members(members)
    if members is not None:
        temperature, top_p = (_member_values(name, v, k) for name, v in (("temperature", settings.temperature),
                                                                          ("top_p", settings.top_p)))
        for t_k, p_k in zip(temperature, top_p):
            _validate(config, mask, settings, t_k, p_k)
    else:
        if settings.members:
            raise ValueError("generate: temperature / top_p hold one value per population member; a single "
                             "policy takes one value (pass members= for K members)")
        temperature, top_p = settings.temperature, settings.top_p
        _validate(config, mask, settings, temperature, top_p)
    max_decode_rows = settings.max_decode_rows
    if not isinstance(max_decode_rows, (int, np.integer)) or max_decode_rows < 0:
        raise ValueError(f"generate: max_decode_rows must be an integer >= 0 (0 = all rows), got {max_decode_rows!r}")
    tokens = np.asarray(prompt_tokens).astype(np.int32)
    if tokens.shape != mask.shape:
        raise ValueError(f"generate: prompt_tokens {tokens.shape} and prompt_mask {mask.shape} differ in shape")
    bad = mask & ((tokens < 0) | (tokens >= config.vocab_size))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"generate: prompt {i} holds token id {tokens[i, j]} outside the vocabulary "
                         f"[0, {config.vocab_size})")
    settings = resolve(config, settings)
    group_size, compact, greedy = settings.group_size, settings.compact, settings.greedy
    fn = compiled(config, settings, mesh, stats, k)
    if members is None:
        temperature = jnp.float32(1.0 if greedy else temperature)
        top_p = jnp.float32(top_p)
        extra_args = ()
    else:
        temperature = jnp.asarray([1.0] * k if greedy else temperature, jnp.float32)
        top_p = jnp.asarray(top_p, jnp.float32)
        extra_args = (members,)
    p = tokens.shape[0]
    per_member = max(k, 1)
    if mesh is None:
        return _with_stats(fn(params, tokens, mask, key, temperature, top_p, *extra_args), stats,
                           per_member * mask.shape[0] * group_size, 1, compact, max_decode_rows)
    shards = int(np.prod([mesh.shape[a] for a in data_axes(mesh)]))
    extra = -p % shards
    if extra:  # pad with copies of the last prompt; their rows are dropped below
        tokens = np.concatenate([tokens, np.repeat(tokens[-1:], extra, 0)])
        mask = np.concatenate([mask, np.repeat(mask[-1:], extra, 0)])
    rows = NamedSharding(mesh, PartitionSpec(data_axes(mesh), None))
    replicated = NamedSharding(mesh, PartitionSpec())
    out = fn(place_params(config, params, mesh), jax.device_put(tokens, rows), jax.device_put(mask, rows),
             jax.device_put(key, replicated), temperature, top_p, *_place(extra_args, replicated))
    rollout = out[0] if stats else out
    if extra and not k:
        rollout = Rollout(*(x[: p * group_size] for x in rollout))
    elif extra:  # each member's rows of the real prompts
        rollout = Rollout(*(x.reshape(per_member, (p + extra) * group_size, *x.shape[1:])[:, : p * group_size]
                            .reshape(per_member * p * group_size, *x.shape[1:]) for x in rollout))
    return _with_stats((rollout, out[1]) if stats else rollout, stats, per_member * (p + extra) * group_size, shards,
                       compact, max_decode_rows)


def _validate(config: ModelConfig, mask: np.ndarray, settings: Settings, temperature, top_p):
    group_size, max_new_tokens, top_k = settings.group_size, settings.max_new_tokens, settings.top_k
    if mask.ndim != 2 or mask.shape[0] == 0:
        raise ValueError(f"generate: empty prompt list (prompt_mask has shape {mask.shape}; need [P >= 1, S])")
    if not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"generate: group_size must be an integer >= 1, got {group_size!r}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"generate: top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not (0.0 < float(top_p) <= 1.0):
        raise ValueError(f"generate: top_p must be in (0, 1] (1 = off), got {top_p!r}")
    if float(temperature) < 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature!r}")
    if float(temperature) == 0 and not settings.greedy:
        raise ValueError("generate: temperature 0 is undefined for sampling; pass greedy=True for argmax decoding")
    for s in settings.stop_ids:
        if not 0 <= int(s) < config.vocab_size:
            raise ValueError(f"generate: stop id {s} is outside the vocabulary [0, {config.vocab_size})")
    lengths = mask.sum(axis=-1)
    for i in range(mask.shape[0]):
        if lengths[i] == 0:
            raise ValueError(f"generate: prompt {i} is empty (its mask has no real token)")
        if np.any(np.diff(mask[i].astype(np.int8)) < 0):
            raise ValueError(f"generate: prompt {i} is not left-padded (mask must be 0...0 1...1); "
                             "use batching.left_pad")
    longest = int(lengths.max())
    if longest + max_new_tokens > config.max_position_embeddings:
        i = int(lengths.argmax())
        raise ValueError(f"generate: prompt {i} has {longest} tokens; with max_new_tokens={max_new_tokens} that is "
                         f"{longest + max_new_tokens} positions, more than the model's context of "
                         f"{config.max_position_embeddings}")


@functools.lru_cache(maxsize=16)
def _sampler_param_shardings(config: ModelConfig, mesh: Mesh):
    """NamedShardings of the model's params by the sampler's table (`partitioning.SAMPLER_RULES`)."""
    shapes = jax.eval_shape(lambda: decoder.init_params(config, jax.random.PRNGKey(0)))
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, partitioning.logical_to_mesh_spec(spec, x.shape, mesh,
                                                                              partitioning.SAMPLER_RULES)),
        decoder.param_logical_axes(config), shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def place_params(config: ModelConfig, params, mesh: Mesh):
    """The params placed on `mesh` by the sampler's table: weights keep their tensor split and are whole over
    fsdp (a no-op for params already so placed, e.g. the trainer's when mesh fsdp = 1)."""
    return jax.device_put(params, _sampler_param_shardings(config, mesh))


def _place(tree, sharding: NamedSharding):
    """Arrays already laid out on the mesh's devices stay as they are (e.g. params sharded by the caller); anything
    else (numpy, single-device arrays) is put with `sharding`."""
    devices = set(sharding.mesh.devices.flat)

    def put(x):
        if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
            return x
        return jax.device_put(x, sharding)
    return jax.tree.map(put, tree)


def _member_values(name: str, values, k: int) -> tuple:
    """One float per member, from a sequence of K values (or one value for all)."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, k)
    if v.size != k:
        raise ValueError(f"generate: {name} must hold one value per member ({k}), got {v.size}")
    return tuple(float(x) for x in v)


def _with_stats(out, stats: bool, rows: int, shards: int, compact: bool, max_decode_rows: int):
    """The rollout, or (rollout, DecodeStats) from the program's (Rollout, decode_loop.Outputs)."""
    if not stats:
        return out
    rollout, loop = out
    b = -(-max_decode_rows // shards) * shards if max_decode_rows > 0 else rows
    sizes = decode_loop.buckets(min(b, rows), shards, compact)
    return rollout, DecodeStats(sizes, np.asarray(loop.steps), int(loop.refilled))
