"""Multi-turn rollouts, token-in/token-out: each row's keys/values kept across turns, observations inserted as tokens.

    codec = multiturn.TurnCodec(stop_sequences=[encode("</calc>")], decode=decode, encode=encode,
                                marker_ids=encode("...[truncated]"), roles={"tool": (open_ids, close_ids)})
    out, stats = multiturn.generate_episodes(model_config, params, prompt_tokens, prompt_mask, key, settings, envs,
                                             codec, max_turns=4, max_turn_tokens=0, max_observation_tokens=64,
                                             timeout_s=5.0)

`envs` holds one environment object per row (N = P * G, p-major), already `reset`. An episode alternates model
turns and observations inside the row's completion of T = settings.max_new_tokens tokens (the episode's budget):

    [prompt] turn 1 (sampled, action_mask 1) | observation 1 (inserted, action_mask 0) | turn 2 | ... | turn k

Phases, each one jitted program reused across turns and calls (keyed on the model config and the Settings):

  1. prefill: each prompt is run once (`logprobs.encode_prompt`); its keys/values are read by the G rows of its
     group (`PrefixKV`, never copied per row); each row gets its own KV cache of T slots (`KVCache` with a per-row
     fill `index` [N]: row r's completion token j lies in slot j, at position prompt_length + j);
  2. turn: a `lax.while_loop` draws one token for every row still in its turn and feeds it through the model
     (one forced position per row per step, written into the row's cache at its own slot), until every row's turn
     has ended: a stop id (EOS, settings.stop_ids), an environment stop string, max_turn_tokens, or the budget T.
     A stop string is detected on device: the row's last tokens (within the current turn) equal the string's token
     ids (`TurnCodec.stop_sequences`, the string as the tokenizer encodes it; a different tokenisation of the same
     text does not end the turn, which then runs on to EOS, max_turn_tokens or the budget). Rows whose turn
     ended idle and write nothing until the longest turn ends. With settings.compact (None: the single-turn
     engine's rule) the turn runs in chunks, each on the rows still in their turn only: they are gathered (cache,
     state, their prompts' keys/values) into a batch of a power of two times the row shards (padded with rows
     that are not running) and scattered back after it; a chunk ends as soon as the running rows fit the next
     smaller batch, so idle rows cost at most as many positions as running ones; a row's draws do not depend on
     its place in the batch;
  3. one host round-trip for the batch: each row whose turn ended is stepped (`environments.safe_step`) with the
     text of its turn (decoded from its sampled tokens, stop string included; never re-tokenised into the
     sequence); the observation's text is tokenised once (`TurnCodec.observation_ids`), cut to
     max_observation_tokens (head kept, marker appended) and to the row's remaining budget;
  4. observe: the observation tokens of all rows (with settings.compact, only the rows that get one, gathered as
     in 2) are run through the model in one multi-token step (each row at its own positions, causal within the
     observation, reading its prompt and its cache): only the new tokens are computed, never the history; their
     keys/values join the row's cache, its sequence gets them with action_mask 0 and logp 0, and the hidden state
     of the last one predicts the row's next turn.
     With keep_cache=False (a baseline that computes more, for measurement: a sampler that re-prefills the chat
     each turn) every row that goes on to another turn instead re-runs its whole history at the boundary: its
     prompt (each row then holds its own prompt keys/values, computed again) and its whole completion so far
     (turns and observations), run through the same step from slot 0; the episodes are the same up to float
     rounding in the keys/values, and `EpisodeStats.tokens_computed` counts the extra positions.

A row is done when its turn ends with a stop id (the environment is still stepped, to see the final turn; nothing
follows), when its environment answers done, after max_turns model turns (stepped, nothing inserted), or when its
budget is spent: a turn reaching T tokens (not stepped: the turn is unfinished), or an observation that does not
fit in the tokens left. Such an observation is cut to the tokens left (head + `marker_ids`), inserted, and the row
ends `truncated` (the budget-cut rule: truncate the observation's tail and mark the row, rather than roll the turn
back). A row that ends with exactly no token left after an observation is truncated too.

Invariants (tested against `multiturn_reference`, which re-runs each row's whole history with `models.forward`):
- row r's token at completion position j, when sampled, is drawn with the uniform fold_in(fold_in(key, r), j)
  (`decode_loop.row_uniforms`) from softmax(logits / temperature) with top-k / top-p as the single-turn engine
  (`draw.sample_logits`); its logp is the exact log softmax(logits / temperature) over the full vocabulary, so the
  trainer's `logprobs.completion_logprobs` over the final sequences (observations included as completion tokens)
  gives the same log-probs on every action_mask = 1 token;
- a single turn with no stop strings samples exactly what the single-turn engine samples for the same key;
- cache.index == lengths after every phase: every token of a row's sequence is in its cache exactly once;
- action_mask <= mask; logps are 0 where action_mask is 0; tokens are pad_id after lengths.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax import environments, partitioning
from grpo_jax.logprobs import encode_prompt
from grpo_jax.models import decoder
from grpo_jax.models.config import ModelConfig
from grpo_jax.rollout import decode_loop
from grpo_jax.rollout.draw import sample_logits
from grpo_jax.rollout.jitted import place_params
from grpo_jax.rollout.program import data_axes, resolve
from grpo_jax.rollout.result import Rollout
from grpo_jax.rollout.settings import Settings

# Why a row's turn ended (`EpisodeStats.turn_ends` counts them by name).
RUNNING, STOP_ID, STOP_STRING, TURN_TOKENS, BUDGET = 0, 1, 2, 3, 4
END_NAMES = {STOP_ID: "stop_id", STOP_STRING: "stop_string", TURN_TOKENS: "turn_tokens", BUDGET: "budget"}
_MIN_OBSERVATION_WIDTH = 8  # observe batches are padded to a power of two columns, at least this many

Role = Union[str, tuple]


@dataclasses.dataclass(frozen=True)
class TurnCodec:
    """The tokenizer's part of a multi-turn rollout.

    stop_sequences  the token ids of each environment stop string (one tuple per string), as `encode` gives them
    decode          ids -> text: a model turn's text for the environment
    encode          text -> ids: an observation's text, tokenised once (no special tokens added)
    marker_ids      appended to an observation that is cut (`environments.truncate_tokens`)
    roles           role name -> (prefix_ids, suffix_ids): the chat-template pieces that close the assistant turn
                    and open a turn in that role (prefix), and close it and reopen an assistant turn (suffix);
                    'inline' needs none (the observation's tokens follow the turn directly)
    """
    stop_sequences: tuple
    decode: Callable[[Sequence[int]], str]
    encode: Callable[[str], Sequence[int]]
    marker_ids: tuple = ()
    roles: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "stop_sequences", tuple(tuple(int(i) for i in s) for s in self.stop_sequences))
        object.__setattr__(self, "marker_ids", tuple(int(i) for i in self.marker_ids))
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError("TurnCodec: a stop string encodes to no tokens")

    @classmethod
    def from_tokenizer(cls, tokenizer, stop_strings: Sequence[str], *, marker: str = "...[truncated]",
                       roles: Optional[dict] = None) -> "TurnCodec":
        """The codec of a transformers tokenizer: stop strings and observations encoded without special tokens,
        turns decoded with them kept (a turn's text is what the model wrote); roles: role name -> (prefix text,
        suffix text), each encoded once here (e.g. the chat template's pieces around a tool turn)."""
        def encode(text: str) -> list:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        def decode(ids: Sequence[int]) -> str:
            return tokenizer.decode(list(ids), skip_special_tokens=False)
        pieces = {name: (encode(prefix), encode(suffix)) for name, (prefix, suffix) in (roles or {}).items()}
        # A stop string after a space is often other tokens (a BPE merges the space into its first piece, e.g.
        # ' </' in ' </calc>'): both spellings end the turn.
        stops = []
        for s in stop_strings:
            for ids in (tuple(encode(s)), tuple(encode(" " + s))):
                if ids not in stops:
                    stops.append(ids)
        return cls(tuple(stops), decode, encode, tuple(encode(marker)), pieces)

    def wrapping(self, role: Role) -> tuple:
        """(prefix_ids, suffix_ids) of `role`: () for 'inline', the codec's pieces for a named role, or the role
        itself when it is given as a (prefix_ids, suffix_ids) pair."""
        if isinstance(role, tuple):
            prefix, suffix = role
        elif role == "inline":
            prefix, suffix = (), ()
        elif role in self.roles:
            prefix, suffix = self.roles[role]
        else:
            raise ValueError(f"TurnCodec has no pieces for observation role {role!r}; give roles={{{role!r}: "
                             f"(prefix_ids, suffix_ids)}} or use 'inline'")
        return tuple(int(i) for i in prefix), tuple(int(i) for i in suffix)

    def observation_ids(self, text: str, role: Role, max_tokens: int = 0) -> tuple[list, bool]:
        """(ids, cut): the observation's text tokenised once, cut to `max_tokens` tokens (0 = no bound; head kept,
        `marker_ids` appended), wrapped in the role's pieces (which `max_tokens` does not count)."""
        prefix, suffix = self.wrapping(role)
        ids, cut = [int(i) for i in self.encode(text)], False
        if max_tokens:
            ids, cut = environments.truncate_tokens(ids, max_tokens, self.marker_ids)
        return list(prefix) + ids + list(suffix), cut


@dataclasses.dataclass
class EpisodeStats:
    """What the episodes did. turns [N]: model turns per row; env_stats: each `env.stats` counter summed over the
    rows (tool_calls / tool_errors / parse_errors read its 'calls' / 'tool_errors' / 'parse_errors'); faults: safe_step
    faults by kind; turn_ends: turns by how they ended (`END_NAMES`); observation_tokens: tokens inserted;
    observations_cut: observations cut to max_observation_tokens; budget_cut: rows whose observation did not fit
    in their budget; environment_seconds: wall time of the steps; tokens_computed: token positions the model ran
    (prompt prefill P x S, every turn step's rows, every observe step's rows x width; N rows, or the compacted
    batch; with keep_cache False, S for each row whose prompt is run again), padding and idle rows included;
    infos: each row's last `Observation.info`."""
    turns: np.ndarray
    env_stats: dict
    faults: dict
    turn_ends: dict
    observation_tokens: int
    observations_cut: int
    budget_cut: int
    environment_seconds: float
    tokens_computed: int
    infos: list

    @property
    def tool_calls(self) -> float:
        return self.env_stats.get("calls", 0)

    @property
    def tool_errors(self) -> float:
        return self.env_stats.get("tool_errors", 0)

    @property
    def parse_errors(self) -> float:
        return self.env_stats.get("parse_errors", 0)


class _State(NamedTuple):
    """The rows' episodes on device, carried from phase to phase."""
    cache: decoder.KVCache   # per-row fill: index [N] == lengths
    hidden: jax.Array        # [N, D]: the final hidden state that predicts each row's next token
    tokens: jax.Array        # int32 [N, T]
    logps: jax.Array         # float32 [N, T]
    action: jax.Array        # float32 [N, T]
    lengths: jax.Array       # int32 [N]


def _write_cache(cache: decoder.KVCache, k: jax.Array, v: jax.Array, slots: jax.Array) -> decoder.KVCache:
    """`cache` with the new keys/values k, v [L, N, t, Hkv, hd] written at slots [N, t] of their rows (a slot
    >= S is dropped)."""
    n, t = slots.shape
    rows = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, t))
    kt = k.transpose(1, 2, 0, 3, 4)  # [N, t, L, Hkv, hd]: the scatter's update layout (advanced indices first)
    vt = v.transpose(1, 2, 0, 3, 4)
    if isinstance(cache.k, tuple):  # per-layer [N, Hkv, hd, S] / [N, Hkv, S, hd]
        ck = tuple(b.at[rows, :, :, slots].set(kt[:, :, l].astype(b.dtype), mode="drop")
                   for l, b in enumerate(cache.k))
        cv = tuple(b.at[rows, :, slots, :].set(vt[:, :, l].astype(b.dtype), mode="drop")
                   for l, b in enumerate(cache.v))
    else:  # stacked [L, N, Hkv, hd, S] / [L, N, Hkv, S, hd]
        ck = cache.k.at[:, rows, :, :, slots].set(kt.astype(cache.k.dtype), mode="drop")
        cv = cache.v.at[:, rows, :, slots, :].set(vt.astype(cache.v.dtype), mode="drop")
    return cache._replace(k=ck, v=cv)


def _row_axis(cache: decoder.KVCache) -> int:
    """The row axis of the cache's key/value buffers: 1 when stacked over layers, else 0 (per-layer tuples)."""
    return 0 if isinstance(cache.k, tuple) else 1


@jax.jit
def _take_rows(state: _State, prefix: decoder.PrefixKV, rows: jax.Array, prompts: jax.Array):
    """The rows `rows` of the state, and the prompt of each (`prompts` [B']) as a prefix of B' rows (group 1)."""
    axis = _row_axis(state.cache)
    cache = state.cache._replace(
        k=jax.tree.map(lambda b: jnp.take(b, rows, axis=axis), state.cache.k),
        v=jax.tree.map(lambda b: jnp.take(b, rows, axis=axis), state.cache.v),
        index=state.cache.index[rows], start=state.cache.start[rows])
    sub = _State(cache, state.hidden[rows], state.tokens[rows], state.logps[rows], state.action[rows],
                 state.lengths[rows])
    return sub, _row_prefix(prefix, prompts)


@functools.partial(jax.jit, donate_argnums=0)
def _put_rows(state: _State, sub: _State, rows: jax.Array) -> _State:
    """`state` with rows `rows` replaced by `sub`'s (the inverse of `_take_rows`; rows distinct)."""
    axis = _row_axis(state.cache)

    def put(whole, part, row_axis=0):
        index = (slice(None),) * row_axis + (rows,)
        return whole.at[index].set(part)
    cache = state.cache._replace(
        k=jax.tree.map(lambda w, p: put(w, p, axis), state.cache.k, sub.cache.k),
        v=jax.tree.map(lambda w, p: put(w, p, axis), state.cache.v, sub.cache.v),
        index=put(state.cache.index, sub.cache.index), start=put(state.cache.start, sub.cache.start))
    return _State(cache, put(state.hidden, sub.hidden), put(state.tokens, sub.tokens), put(state.logps, sub.logps),
                  put(state.action, sub.action), put(state.lengths, sub.lengths))


def _compact_rows(take: np.ndarray, shards: int) -> Optional[np.ndarray]:
    """The rows a compacted turn runs: every taking row, padded with rows that take no turn up to the smallest
    power of two times `shards` that holds them; None when that is not fewer than all rows (no compaction)."""
    n, count = len(take), int(take.sum())
    size = shards
    while size < count:
        size *= 2
    if size >= n:
        return None
    idle = np.flatnonzero(~take)[: size - count]
    return np.sort(np.concatenate([np.flatnonzero(take), idle])).astype(np.int32)


def extend(config: ModelConfig, params, prefix: decoder.PrefixKV, cache: decoder.KVCache, tokens: jax.Array,
           counts: jax.Array):
    """Run tokens [N, t] (row r's first counts[r] are real) at each row's next positions, reading its prompt and its
    cache, causal among themselves; write their keys/values into the cache at slots index .. index + counts - 1.
    Returns (the hidden state at each row's last real token [N, D] (arbitrary where counts is 0), the cache with
    index + counts). Only the new tokens are computed."""
    n, t = tokens.shape
    cols = jnp.arange(t, dtype=jnp.int32)[None, :]
    valid = cols < counts[:, None]
    positions = cache.start[:, None] + cache.index[:, None] + cols
    own_mask = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]
    hidden, (k, v) = decoder.hidden_states(config, params, tokens, positions, own_mask, prefix, cache)
    slots = jax.tree.leaves(cache.v)[0].shape[-2]
    cache = _write_cache(cache, k, v, jnp.where(valid, cache.index[:, None] + cols, slots))
    last = jnp.take_along_axis(hidden, jnp.maximum(counts - 1, 0)[:, None, None], axis=1)[:, 0]
    return last, cache._replace(index=cache.index + counts)


def _stop_table(stop_sequences: tuple) -> tuple:
    """(ids [M, W] right-aligned, -1 before each string's tokens; lengths [M]) of the stop strings, W = longest."""
    width = max(len(s) for s in stop_sequences)
    table = np.full((len(stop_sequences), width), -1, np.int32)
    for i, s in enumerate(stop_sequences):
        table[i, width - len(s):] = s
    return table, np.asarray([len(s) for s in stop_sequences], np.int32)


def _ends_with_stop(tokens: jax.Array, lengths: jax.Array, turn_start: jax.Array, stop_sequences: tuple) -> jax.Array:
    """bool [N]: row r's tokens [turn_start, lengths) end with one of the stop strings' ids."""
    if not stop_sequences:
        return jnp.zeros(lengths.shape, bool)
    table, sizes = _stop_table(stop_sequences)
    width = table.shape[1]
    idx = lengths[:, None] - width + jnp.arange(width, dtype=jnp.int32)[None, :]           # [N, W]
    tail = jnp.take_along_axis(tokens, jnp.clip(idx, 0, tokens.shape[1] - 1), axis=1)     # [N, W]
    need = jnp.asarray(table >= 0)                                                         # [M, W]
    same = (tail[:, None, :] == jnp.asarray(table)[None]) | ~need[None]                  # [N, M, W]
    inside = (lengths[:, None] - jnp.asarray(sizes)[None, :]) >= turn_start[:, None]        # [N, M]
    return jnp.any(jnp.all(same, axis=-1) & inside, axis=-1)


@functools.lru_cache(maxsize=16)
def _programs(config: ModelConfig, settings: Settings, stop_sequences: tuple, mesh: Optional[Mesh] = None):
    """The three jitted phases (prefill, turn, observe) for one model config, Settings (program key), stop strings
    and mesh (None: one device; else each traced under the sampler's rules table)."""
    g, t_max = settings.group_size, settings.max_new_tokens

    def jit(fn):
        if mesh is None:
            return jax.jit(fn)
        return jax.jit(partitioning.with_rules(fn, mesh, partitioning.rules_for("sample")))

    @jit
    def prefill(params, prompt_tokens, prompt_mask):
        prompt = encode_prompt(config, params, prompt_tokens, prompt_mask)
        n = prompt_tokens.shape[0] * g
        start = jnp.repeat(prompt.length, g)
        cache = decoder.new_cache(config, n, t_max, start)._replace(index=jnp.zeros((n,), jnp.int32))
        state = _State(cache, jnp.repeat(prompt.last_hidden, g, axis=0),
                       jnp.full((n, t_max), settings.pad_id, jnp.int32), jnp.zeros((n, t_max), jnp.float32),
                       jnp.zeros((n, t_max), jnp.float32), jnp.zeros((n,), jnp.int32))
        return prompt.prefix, state

    @jit
    def turn(params, prefix, state: _State, live: jax.Array, why: jax.Array, turn_start: jax.Array,
             limit: jax.Array, row_keys, temperature, top_p, exit_at: jax.Array):
        """Every row with `live` samples until its turn ends (see the module docstring), or until no more than
        `exit_at` rows are live (a chunk of the turn: the caller re-compacts and goes on); turn_start [N]: the
        length at which the row's turn began (stop strings match within the turn); limit [N]: the length at which
        its turn stops (max_turn_tokens or the budget); why [N]: how each row's turn ended so far.
        -> (state, live, why, steps)."""
        n = state.lengths.shape[0]

        def cond(carry):
            return jnp.sum(carry[1].astype(jnp.int32)) > exit_at

        def body(carry):
            s, live, why, steps = carry
            logits = decoder.unembed(config, params, s.hidden)
            u = decode_loop.row_uniforms(row_keys, s.lengths)
            tok, lp = sample_logits(logits, u, temperature, top_p, top_k=settings.top_k,
                                    use_top_p=settings.use_top_p, greedy=settings.greedy)
            w = jnp.where(live, jnp.arange(n, dtype=jnp.int32), n)   # row n is out of bounds: the write is dropped
            j = jnp.minimum(s.lengths, t_max - 1)
            tokens = s.tokens.at[w, j].set(tok, mode="drop")
            logps = s.logps.at[w, j].set(lp, mode="drop")
            action = s.action.at[w, j].set(1.0, mode="drop")
            count = live.astype(jnp.int32)
            hidden, cache = extend(config, params, prefix, s.cache, tok[:, None], count)
            lengths = s.lengths + count
            hit_stop = _ends_with_stop(tokens, lengths, turn_start, stop_sequences)
            reason = jnp.where(decode_loop.is_stop(tok, settings.stop_ids), STOP_ID,
                               jnp.where(hit_stop, STOP_STRING,
                                         jnp.where(lengths >= t_max, BUDGET,
                                                   jnp.where(lengths >= limit, TURN_TOKENS, RUNNING))))
            ended = live & (reason != RUNNING)
            s = _State(cache, jnp.where(live[:, None], hidden, s.hidden), tokens, logps, action, lengths)
            return s, live & ~ended, jnp.where(ended, reason, why), steps + 1

        return jax.lax.while_loop(cond, body, (state, live, why, jnp.int32(0)))

    @jit
    def observe(params, prefix, state: _State, obs: jax.Array, counts: jax.Array, restart: jax.Array):
        """Insert obs [N, W] (row r's first counts[r] tokens) after each row's sequence: tokens, action_mask 0,
        logp 0, keys/values into its cache; rows with counts > 0 predict their next token from the last one.
        restart [N]: the row's obs is its whole completion so far plus the new tokens, written from slot 0 (its
        cache rebuilt; the tokens already there are written again unchanged, action_mask and logps kept)."""
        n, width = obs.shape
        cols = jnp.arange(width, dtype=jnp.int32)[None, :]
        valid = cols < counts[:, None]
        start = jnp.where(restart, 0, state.lengths)
        at = jnp.where(valid, start[:, None] + cols, t_max)                  # column t_max: dropped
        rows = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, width))
        tokens = state.tokens.at[rows, at].set(obs, mode="drop")
        cache = state.cache._replace(index=jnp.where(restart, 0, state.cache.index))
        hidden, cache = extend(config, params, prefix, cache, obs, counts)
        hidden = jnp.where((counts > 0)[:, None], hidden, state.hidden)
        return state._replace(cache=cache, hidden=hidden, tokens=tokens, lengths=start + counts)

    @jit
    def reencode(params, prompt_tokens, prompt_mask):
        """The prompts' keys/values computed again (the no-cache baseline's prompt re-prefill)."""
        return encode_prompt(config, params, prompt_tokens, prompt_mask).prefix

    return prefill, turn, observe, reencode


@jax.jit
def _row_prefix(prefix: decoder.PrefixKV, prompts: jax.Array) -> decoder.PrefixKV:
    """The prefix of each row: prompts [B] -> a prefix of B rows (group 1)."""
    return decoder.PrefixKV(jnp.take(prefix.k, prompts, axis=1), jnp.take(prefix.v, prompts, axis=1),
                            prefix.mask[prompts], prefix.positions[prompts])


@functools.partial(jax.jit, donate_argnums=0)
def _put_prefix(prefix: decoder.PrefixKV, part: decoder.PrefixKV, rows: jax.Array) -> decoder.PrefixKV:
    """A per-row prefix with rows `rows` replaced by `part`'s."""
    return decoder.PrefixKV(prefix.k.at[:, rows].set(part.k), prefix.v.at[:, rows].set(part.v),
                            prefix.mask.at[rows].set(part.mask), prefix.positions.at[rows].set(part.positions))


def _width(longest: int) -> int:
    """Columns of an observe batch: a power of two >= longest (so few widths compile)."""
    width = _MIN_OBSERVATION_WIDTH
    while width < longest:
        width *= 2
    return width



def _smaller_bucket(width: int, shards: int) -> int:
    """The largest compacted batch (`_compact_rows`: a power of two times `shards`) below `width` rows; 0 when
    none (width is already the smallest)."""
    size = shards
    while size * 2 < width:
        size *= 2
    return size if size < width else 0


def _play_turn(turn, params, prefix, state: _State, take: np.ndarray, lengths: np.ndarray, limit: np.ndarray,
               row_keys, temperature, top_p, group: int, shards: int):
    """One turn of every row with `take` (lengths [N]: the rows' lengths on the host, == state.lengths).
    shards 0: every step runs all N rows. Else compacted: the turn runs in chunks, each on the live rows only,
    padded to a power of two times `shards` (`_compact_rows`); a chunk ends when the live rows would fit the next
    smaller batch. -> (state, why each row's turn ended [N], positions computed)."""
    n = len(take)
    live = take & (lengths < limit)
    why = np.where(take & ~live, BUDGET, RUNNING).astype(np.int32)
    turn_start = jnp.asarray(lengths, jnp.int32)
    limit_d = jnp.asarray(limit, jnp.int32)
    computed = 0
    while live.any():
        rows = _compact_rows(live, shards) if shards else None
        width = n if rows is None else len(rows)
        exit_at = jnp.int32(_smaller_bucket(width, shards) if shards else 0)
        if rows is None:
            state, live_d, why_d, steps = turn(params, prefix, state, jnp.asarray(live), jnp.asarray(why), turn_start,
                                               limit_d, row_keys, temperature, top_p, exit_at)
            live, why, steps = jax.device_get((live_d, why_d, steps))
            live, why = np.array(live), np.array(why)
        else:
            at = jnp.asarray(rows)
            sub, own = _take_rows(state, prefix, at, jnp.asarray(rows // group))
            sub, live_d, why_d, steps = turn(params, own, sub, jnp.asarray(live[rows]), jnp.asarray(why[rows]),
                                             turn_start[at], limit_d[at], row_keys[at], temperature, top_p, exit_at)
            state = _put_rows(state, sub, at)
            live_r, why_r, steps = jax.device_get((live_d, why_d, steps))
            live, why = live.copy(), why.copy()
            live[rows], why[rows] = live_r, why_r
        computed += int(steps) * width
    return state, why, computed


def _observe_rows(observe, params, prefix, state: _State, runs: dict, restart: np.ndarray, group: int, shards: int,
                  pad_id: int):
    """Run each row's tokens `runs` (row -> ids) through `observe`; shards > 0: only those rows, padded to a
    power of two times `shards` (`_compact_rows`). -> (state, positions computed)."""
    n = len(restart)
    width = _width(max(len(ids) for ids in runs.values()))
    obs = np.full((n, width), pad_id, np.int32)
    counts = np.zeros(n, np.int32)
    for r, ids in runs.items():
        obs[r, :len(ids)] = ids
        counts[r] = len(ids)
    rows = _compact_rows(counts > 0, shards) if shards else None
    if rows is None:
        state = observe(params, prefix, state, jnp.asarray(obs), jnp.asarray(counts), jnp.asarray(restart))
        return state, n * width
    at = jnp.asarray(rows)
    sub, own = _take_rows(state, prefix, at, jnp.asarray(rows // group))
    sub = observe(params, own, sub, jnp.asarray(obs[rows]), jnp.asarray(counts[rows]), jnp.asarray(restart[rows]))
    return _put_rows(state, sub, at), len(rows) * width


def generate_episodes(model_config: ModelConfig, params, prompt_tokens, prompt_mask, key, settings: Settings,
                      envs: Sequence, codec: TurnCodec, *, max_turns: int, max_turn_tokens: int = 0,
                      max_observation_tokens: int = 0, timeout_s: float = 5.0,
                      max_chars: Optional[int] = None, keep_cache: bool = True,
                      turn_prefixes: Optional[Sequence[str]] = None,
                      mesh: Optional[Mesh] = None) -> tuple[Rollout, EpisodeStats]:
    """The episodes of all N = P * settings.group_size rows (see the module docstring) -> (Rollout, EpisodeStats).

    prompt_tokens / prompt_mask [P, S] left-padded; envs: N environments (row p * G + g), already reset;
    max_turns: model turns per episode at most; max_turn_tokens: tokens per model turn at most (0 = the budget
    alone); max_observation_tokens: tokens of an observation's text at most (0 = the budget alone); timeout_s /
    max_chars: `environments.safe_step`'s bounds (max_chars None: `environments.max_observation_chars`);
    turn_prefixes: per row, text that opens its first turn inside the prompt (the assistant prefill, e.g. '<calc>'):
    the environment's first step sees it before the sampled text, as the model's turn reads (None = none);
    mesh: None (one device), or a mesh whose ('data', 'fsdp') axes split the rows and whose 'tensor' axis splits
    the heads, the params placed as the single-turn engine places them (`jitted.place_params`); the prompts are
    padded to a multiple of the row shards with copies of the last one, whose rows start done and are dropped;
    keep_cache: True keeps each row's cache across turns (only observation tokens are computed at a boundary);
    False re-runs the history of every row that takes another turn, its prompt and its whole completion so far
    (the same episodes, more tokens computed: a measurement baseline).
    Settings: group_size, max_new_tokens (the episode's budget T), temperature, top_k, top_p, greedy, stop_ids,
    pad_id, compact; max_decode_rows (> 0): the rows are played in waves of whole groups,
    max(1, max_decode_rows // group_size) prompts each, so that only one wave's KV caches are held at once; every
    row draws with its own key (its index among all N rows), so the waves give the same episodes (up to float
    rounding in the batch's matmuls); one policy (no members)."""
    if settings.members:
        raise ValueError("generate_episodes: one policy; temperature / top_p must be single values")
    if max_turns < 1:
        raise ValueError(f"generate_episodes: max_turns must be >= 1, got {max_turns!r}")
    tokens_in = np.asarray(prompt_tokens).astype(np.int32)
    mask_in = np.asarray(prompt_mask).astype(bool)
    p, g = tokens_in.shape[0], settings.group_size
    n = p * g
    if len(envs) != n:
        raise ValueError(f"generate_episodes: {len(envs)} environments for {n} rows (prompts x group_size)")
    if not mask_in.any(axis=1).all():
        raise ValueError("generate_episodes: every prompt needs at least one token")
    if turn_prefixes is not None and len(turn_prefixes) != n:
        raise ValueError(f"generate_episodes: {len(turn_prefixes)} turn prefixes for {n} rows")
    if max_chars is None:
        max_chars = environments.max_observation_chars({"max_observation_tokens": max_observation_tokens})
    roles = [getattr(env, "role", "inline") for env in envs]
    for role in set(r for r in roles if not isinstance(r, tuple)):
        codec.wrapping(role)  # an unknown role fails here, before any compute
    settings = resolve(model_config, settings)  # compact None: on for budgets as long as the engine's default
    knobs = dict(max_turns=max_turns, max_turn_tokens=max_turn_tokens, max_observation_tokens=max_observation_tokens,
                 timeout_s=timeout_s, max_chars=max_chars, keep_cache=keep_cache, mesh=mesh)
    prefixes = list(turn_prefixes) if turn_prefixes is not None else None
    per_wave = max(1, settings.max_decode_rows // g) if settings.max_decode_rows else p
    if per_wave >= p:
        return _play_episodes(model_config, params, tokens_in, mask_in, key, settings, envs, codec, roles, prefixes,
                              0, **knobs)
    parts = [_play_episodes(model_config, params, tokens_in[a:a + per_wave], mask_in[a:a + per_wave], key, settings,
                            envs[a * g:(a + per_wave) * g], codec, roles[a * g:(a + per_wave) * g],
                            prefixes[a * g:(a + per_wave) * g] if prefixes is not None else None, a * g, **knobs)
             for a in range(0, p, per_wave)]
    rollout = Rollout(*(jnp.concatenate(fields, axis=0) for fields in zip(*(out for out, _ in parts))))
    return rollout, _merge_stats([stats for _, stats in parts])


def _merge_stats(parts: Sequence[EpisodeStats]) -> EpisodeStats:
    """The stats of waves played one after another, as one batch's: rows concatenated, counts summed."""
    def summed(dicts):
        out: dict = {}
        for d in dicts:
            for name, value in d.items():
                out[name] = out.get(name, 0) + value
        return out
    return EpisodeStats(turns=np.concatenate([x.turns for x in parts]), env_stats=summed(x.env_stats for x in parts),
                        faults=summed(x.faults for x in parts), turn_ends=summed(x.turn_ends for x in parts),
                        observation_tokens=sum(x.observation_tokens for x in parts),
                        observations_cut=sum(x.observations_cut for x in parts),
                        budget_cut=sum(x.budget_cut for x in parts),
                        environment_seconds=sum(x.environment_seconds for x in parts),
                        tokens_computed=sum(x.tokens_computed for x in parts),
                        infos=[info for x in parts for info in x.infos])


def _play_episodes(model_config: ModelConfig, params, tokens_in: np.ndarray, mask_in: np.ndarray, key,
                   settings: Settings, envs: Sequence, codec: TurnCodec, roles: list, turn_prefixes: Optional[list],
                   first_row: int, *, max_turns: int, max_turn_tokens: int, max_observation_tokens: int,
                   timeout_s: float, max_chars: int, keep_cache: bool, mesh: Optional[Mesh]):
    """`generate_episodes` of one wave: its prompts (validated, numpy), whose rows are rows first_row, ... of the
    whole batch (their keys)."""
    p, s_len = tokens_in.shape
    g, t_max = settings.group_size, settings.max_new_tokens
    n = p * g
    key_settings = settings.program_key()
    prefill, turn, observe, reencode = _programs(model_config, key_settings, codec.stop_sequences, mesh)
    temperature = jnp.float32(1.0 if settings.greedy else settings.temperature)
    top_p = jnp.float32(settings.top_p)
    real, shards = n, 1
    prompts, prompt_mask = jnp.asarray(tokens_in), jnp.asarray(mask_in)
    if mesh is not None:
        shards = int(np.prod([mesh.shape[a] for a in data_axes(mesh)]))
        extra = -p % shards
        tokens_in = np.concatenate([tokens_in, np.repeat(tokens_in[-1:], extra, 0)])
        mask_in = np.concatenate([mask_in, np.repeat(mask_in[-1:], extra, 0)])
        p, n = p + extra, (p + extra) * g
        rows = NamedSharding(mesh, PartitionSpec(data_axes(mesh), None))
        params = place_params(model_config, params, mesh)
        prompts, prompt_mask = jax.device_put(tokens_in, rows), jax.device_put(mask_in, rows)
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, first_row + jnp.arange(n, dtype=jnp.int32))

    prefix, state = prefill(params, prompts, prompt_mask)
    computed = p * s_len
    group = g
    if not keep_cache:  # the baseline holds a prefix per row: it re-prefills each row's prompt with its history
        prefix, group = _row_prefix(prefix, jnp.arange(n, dtype=jnp.int32) // g), 1
    done = np.arange(n) >= real  # padding rows (a mesh's): done from the start, never sampled
    truncated = np.zeros(n, bool)
    turns = np.zeros(n, np.int64)
    lengths = np.zeros(n, np.int64)
    faults = {kind: 0 for kind in environments.FAULTS}
    turn_ends = {name: 0 for name in END_NAMES.values()}
    infos = [{} for _ in range(n)]
    obs_tokens = obs_cut = budget_cut = 0
    env_seconds = 0.0
    per_turn = max_turn_tokens if max_turn_tokens > 0 else t_max
    compact_shards = shards if settings.compact else 0  # 0: no compaction
    pad_id = settings.pad_id if 0 <= settings.pad_id < model_config.vocab_size else 0
    while not done.all():
        take = ~done
        limit = np.minimum(lengths + per_turn, t_max)
        state, why, steps_run = _play_turn(turn, params, prefix, state, take, lengths, limit, row_keys, temperature,
                                           top_p, group, compact_shards)
        computed += steps_run
        seq, new_lengths = jax.device_get((state.tokens, state.lengths))
        inserts: dict[int, list] = {}
        for r in np.flatnonzero(take):
            reason = int(why[r])
            if new_lengths[r] > lengths[r]:  # a row with no token left takes no turn
                turns[r] += 1
                turn_ends[END_NAMES[reason]] += 1
            if reason == BUDGET:            # an unfinished turn (or none): the row's budget is spent
                done[r] = truncated[r] = True
                continue
            text = codec.decode([int(i) for i in seq[r, lengths[r]:new_lengths[r]]])
            if turns[r] == 1 and turn_prefixes is not None:
                text = (turn_prefixes[r] or "") + text
            outcome = environments.safe_step(envs[r], text, timeout_s=timeout_s, max_chars=max_chars)
            env_seconds += outcome.seconds
            if outcome.fault is not None:
                faults[outcome.fault] += 1
            observation = outcome.observation
            infos[r] = dict(observation.info)
            if reason == STOP_ID or observation.done or turns[r] >= max_turns:
                done[r] = True
                continue
            if observation.text is None:
                continue
            ids, cut = codec.observation_ids(observation.text, roles[r], max_observation_tokens)
            obs_cut += int(cut)
            room = t_max - int(new_lengths[r])
            if len(ids) >= room:            # no model turn can follow: cut to the room left, the row ends truncated
                ids, _ = environments.truncate_tokens(ids, room, codec.marker_ids)
                done[r] = truncated[r] = True
                budget_cut += 1
            if ids:
                inserts[r] = ids
        lengths = new_lengths.astype(np.int64)
        runs = dict(inserts)           # row -> the tokens it runs through observe
        restart = np.zeros(n, bool)
        if not keep_cache:             # every row that takes another turn: its whole completion so far, again
            for r in np.flatnonzero(take & ~done):
                runs[r] = [int(i) for i in seq[r, :lengths[r]]] + inserts.get(r, [])
                restart[r] = True
        if restart.any():              # ... and its prompt, again
            again = _compact_rows(restart, compact_shards) if compact_shards else None
            again = np.arange(n, dtype=np.int32) if again is None else again
            fresh = reencode(params, jnp.asarray(tokens_in[again // g]), jnp.asarray(mask_in[again // g]))
            prefix = _put_prefix(prefix, fresh, jnp.asarray(again))
            computed += len(again) * s_len
        if runs:
            state, observed = _observe_rows(observe, params, prefix, state, runs, restart, group, compact_shards,
                                            pad_id)
            computed += observed
        for r, ids in inserts.items():
            obs_tokens += len(ids)
            lengths[r] += len(ids)
    lengths_dev = state.lengths
    mask = (jnp.arange(t_max, dtype=jnp.int32)[None, :] < lengths_dev[:, None]).astype(jnp.float32)
    rollout = Rollout(state.tokens, mask, state.logps, lengths_dev, jnp.asarray(truncated), state.action)
    if n > real:
        rollout = Rollout(*(x[:real] for x in rollout))
        turns, infos = turns[:real], infos[:real]
    env_stats: dict = {}
    for env in envs:
        for name, value in getattr(env, "stats", {}).items():
            env_stats[name] = env_stats.get(name, 0) + value
    stats = EpisodeStats(turns=turns, env_stats=env_stats, faults=faults, turn_ends=turn_ends,
                         observation_tokens=obs_tokens, observations_cut=obs_cut, budget_cut=budget_cut,
                         environment_seconds=env_seconds, tokens_computed=computed, infos=infos)
    return rollout, stats
