"""Multi-turn rollouts (grpo_jax/rollout/multiturn.py): the cached episodes equal the no-cache reference.

A tiny random model over a 16-token alphabet samples nearly uniformly, so turns end in every way: the EOS id,
the environment's stop strings (one and two tokens), max_turn_tokens and the budget. A scripted environment
(registered here) answers each row from its own script: observations of several lengths, None, a raise, one cut
by max_observation_tokens, one too long for the row's budget, done at different turns. Checks: same tokens,
mask, action_mask, lengths, truncated flags and turns as `multiturn_reference` (which re-runs each row's whole
history with `models.forward`), log-probs within 1e-5, for inline and role-wrapped observations, with stacked and
unrolled layers; the trainer's `logprobs.completion_logprobs` over the final sequences equals the sampler's on
every action_mask = 1 token; one turn without stop strings is exactly the single-turn engine's rollout.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import batching, environments, logprobs, rollout, sampling
from grpo_jax.models import ModelConfig, init_params
from grpo_jax.rollout import multiturn
from grpo_jax.rollout.multiturn_reference import reference_episodes

ALPHABET = "abcdefghijklmnop"  # token id i <-> ALPHABET[i]; 'a' = 0 = pad, 'b' = 1 = EOS
EOS, STOP1, STOP2 = 1, 2, (3, 4)  # the environment's stop strings: "c" and "de"
CONFIG = ModelConfig(vocab_size=len(ALPHABET), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, max_position_embeddings=128, tie_word_embeddings=False)
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
G, T = 3, 40
KEY = jax.random.PRNGKey(3)
KNOBS = dict(max_turns=4, max_turn_tokens=12, max_observation_tokens=6, timeout_s=5.0)


def encode(text):
    return [ALPHABET.index(c) if c in ALPHABET else len(ALPHABET) - 1 for c in text]


def decode(ids):
    return "".join(ALPHABET[i] for i in ids)


CODEC = multiturn.TurnCodec(stop_sequences=(encode("c"), encode("de")), decode=decode, encode=encode,
                            marker_ids=encode("o"), roles={"tool": ((13, 14), (14, 12))})

# Each row's script: one entry per environment step: an observation text, None (no text), 'DONE', 'RAISE'.
LONG = "kl" * 20
SCRIPTS = [
    ["kkk", "lll", "mm", "nnn"],
    ["DONE"],
    [None, "kk", "DONE"],
    [LONG],                          # cut to max_observation_tokens (6 with the marker)
    ["RAISE", "k", "k", "k"],        # an error observation, bounded, then the episode goes on
    ["kkkk", "DONE"],
    ["lllll", "lllll", "lllll"],
    ["k", "l", "m", "n"],
    ["mmmmmm", "DONE"],
]


@environments.register("scripted_test", fields={"scripted_test_seed": 0}, replace=True)
class ScriptedEnv(environments.Environment):
    """Answers the model's turns from the example's script; records every turn it saw."""
    stop = ("c", "de")

    def reset(self, example):
        self.script, self.seen = list(example["script"]), []
        self.stats = {"turns": 0, "calls": 0, "parse_errors": 0, "tool_errors": 0}

    def step(self, turn):
        self.seen.append(turn)
        self.stats["turns"] += 1
        self.stats["calls"] += turn.endswith(self.stop)
        answer = self.script[min(len(self.seen), len(self.script)) - 1]
        if answer == "RAISE":
            self.stats["tool_errors"] += 1
            raise RuntimeError("scripted failure")
        if answer == "DONE":
            return environments.Observation(done=True, info={"turns": len(self.seen)})
        return environments.Observation(answer, info={"turns": len(self.seen)})


@functools.lru_cache(maxsize=None)
def _params(config=CONFIG):
    return jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(0))


def _prompts():
    return batching.left_pad(PROMPTS, pad_id=0, bucket=8)


def _envs(role="", scripts=SCRIPTS):
    section = environments.environment_config("scripted_test", observation_role=role)
    envs = []
    for script in scripts:
        env = environments.make(section)
        env.reset({"script": script})
        envs.append(env)
    return envs


def _settings(**changes):
    return rollout.Settings(**{"group_size": G, "max_new_tokens": T, "temperature": 1.0, "stop_ids": (EOS,),
                               "pad_id": 0, **changes})


def _episodes(config=CONFIG, role="", settings=None, **knobs):
    tokens, mask = _prompts()
    settings = settings or _settings()
    knobs = {**KNOBS, **knobs}
    out, stats = multiturn.generate_episodes(config, _params(config), tokens, mask, KEY, settings, _envs(role),
                                             CODEC, **knobs)
    want = reference_episodes(config, _params(config), tokens, mask, KEY, settings, _envs(role), CODEC, **knobs)
    return jax.tree.map(np.asarray, out), stats, want


def _same(got, stats, want):
    for field in ("tokens", "mask", "action_mask", "lengths", "truncated"):
        np.testing.assert_array_equal(getattr(got, field), want[field], err_msg=field)
    np.testing.assert_array_equal(stats.turns, want["turns"])
    np.testing.assert_allclose(got.logps, want["logps"], atol=1e-5, rtol=0)
    assert np.all(got.action_mask <= got.mask) and np.all(got.logps[got.action_mask == 0] == 0)


def _trainer_matches(config, got, settings):
    tokens, mask = _prompts()
    train, _ = logprobs.completion_logprobs(config, _params(config), jnp.asarray(tokens), jnp.asarray(mask),
                                            jnp.asarray(got.tokens), G, temperature=settings.temperature)
    diff = np.abs(np.asarray(train) - got.logps) * got.action_mask
    assert diff.max() <= 1e-5, diff.max()


@pytest.mark.parametrize("role", ["inline", "tool"])
def test_cached_episodes_equal_reference(role):
    got, stats, want = _episodes(role=role)
    _same(got, stats, want)
    _trainer_matches(CONFIG, got, _settings())
    # The episodes exercise what they are meant to: several turns, observations inserted, each way a turn ends.
    assert stats.turns.max() >= 3 and (got.action_mask < got.mask).any()
    assert stats.turn_ends["stop_string"] > 0 and stats.turn_ends["stop_id"] > 0
    assert stats.turn_ends["turn_tokens"] > 0
    assert stats.observations_cut >= 1 and stats.faults["error"] >= 1 and stats.tool_errors >= 1
    assert stats.observation_tokens == int((got.mask - got.action_mask).sum())
    n = len(SCRIPTS)
    assert stats.tokens_computed >= sum(len(p) for p in PROMPTS) + int(got.mask.sum())
    assert stats.environment_seconds >= 0 and len(stats.infos) == n
    if role == "tool":  # every inserted observation opens with the role's prefix
        starts = np.flatnonzero(np.diff(np.concatenate([[0.0], got.mask[0] - got.action_mask[0]])) > 0)
        assert all(tuple(got.tokens[0, s:s + 2]) == (13, 14) for s in starts)


@pytest.mark.parametrize("config", [CONFIG, dataclasses.replace(CONFIG, scan_layers=False)],
                         ids=["stacked", "unrolled"])
def test_compacted_turns_give_the_reference_episodes(config):
    """settings.compact: a turn runs only the rows that take it (padded to a power of two): the same episodes,
    fewer positions computed."""
    got, stats, want = _episodes(config=config, settings=_settings(compact=True))
    _same(got, stats, want)
    _trainer_matches(config, got, _settings())
    _, full, _ = _episodes(config=config, settings=_settings(compact=False))
    assert stats.turns.max() >= 3 and stats.tokens_computed < full.tokens_computed, (stats.tokens_computed,
                                                                                   full.tokens_computed)


def test_compact_rows_pad_to_a_power_of_two_of_the_shards():
    take = np.asarray([1, 0, 0, 1, 0, 1, 0, 0, 0, 0], bool)
    assert multiturn._compact_rows(take, 1).tolist() == [0, 1, 3, 5]  # 3 rows -> 4, an idle one added
    assert multiturn._compact_rows(take, 2).tolist() == [0, 1, 3, 5]
    assert multiturn._compact_rows(np.ones(10, bool), 1) is None
    sixteen = np.zeros(16, bool)
    sixteen[[2, 9, 15]] = True
    assert multiturn._compact_rows(sixteen, 8).tolist() == [0, 1, 2, 3, 4, 5, 9, 15]  # a multiple of the shards
    sixteen[:7] = True  # 9 rows -> 16: all of them
    assert multiturn._compact_rows(sixteen, 8) is None


def test_budget_cut_observation_marks_the_row_truncated():
    """A small budget: observations that do not fit are cut to the tokens left and their rows end truncated."""
    settings = _settings(max_new_tokens=16)
    got, stats, want = _episodes(settings=settings, max_observation_tokens=0, max_turn_tokens=6)
    _same(got, stats, want)
    _trainer_matches(CONFIG, got, settings)
    assert stats.budget_cut >= 1 and got.truncated.any()
    assert np.all(got.lengths[got.truncated] == 16)


def test_unrolled_layers_and_top_k():
    config = dataclasses.replace(CONFIG, scan_layers=False)
    settings = _settings(top_k=5, temperature=0.7)
    got, stats, want = _episodes(config=config, settings=settings)
    _same(got, stats, want)
    _trainer_matches(config, got, settings)


def test_one_turn_without_stop_strings_is_the_single_turn_rollout():
    tokens, mask = _prompts()
    codec = multiturn.TurnCodec(stop_sequences=(), decode=decode, encode=encode)
    settings = _settings()
    out, stats = multiturn.generate_episodes(CONFIG, _params(), tokens, mask, KEY, settings, _envs(), codec,
                                             max_turns=1)
    single = sampling.generate(CONFIG, _params(), tokens, mask, KEY, group_size=G, max_new_tokens=T,
                               temperature=1.0, stop_ids=(EOS,), pad_id=0)
    for field in ("tokens", "mask", "lengths", "truncated", "action_mask"):
        np.testing.assert_array_equal(np.asarray(getattr(out, field)), np.asarray(getattr(single, field)),
                                      err_msg=field)
    np.testing.assert_allclose(np.asarray(out.logps), np.asarray(single.logps), atol=1e-5, rtol=0)
    assert np.array_equal(np.asarray(single.action_mask), np.asarray(single.mask))
    assert np.all(stats.turns == 1)


def test_stop_string_detection_stays_inside_the_turn():
    tokens = jnp.asarray([[3, 4, 0, 0], [9, 3, 4, 0], [3, 4, 0, 0], [5, 2, 0, 0]], jnp.int32)
    lengths = jnp.asarray([2, 3, 2, 2], jnp.int32)
    turn_start = jnp.asarray([0, 0, 1, 1], jnp.int32)   # row 2's "de" starts before its turn
    hit = multiturn._ends_with_stop(tokens, lengths, turn_start, ((2,), (3, 4)))
    assert hit.tolist() == [True, True, False, True]


def test_codec_roles():
    assert CODEC.observation_ids("kkk", "inline") == ([10, 10, 10], False)
    assert CODEC.observation_ids("kkkkkkkk", "tool", 4) == ([13, 14, 10, 10, 10, 14, 14, 12], True)
    assert CODEC.observation_ids("k", ((7,), (8,))) == ([7, 10, 8], False)
    with pytest.raises(ValueError, match="observation role 'user'"):
        CODEC.observation_ids("k", "user")


def test_codec_from_a_tokenizer():
    """The byte tokenizer's codec: stop strings and observations as their bytes, turns decoded back."""
    from grpo_jax import evaluation
    tokenizer = evaluation.byte_tokenizer(dataclasses.replace(CONFIG, vocab_size=260))
    codec = multiturn.TurnCodec.from_tokenizer(tokenizer, ["</calc>"], marker="~",
                                               roles={"tool": ("\n<tool>", "</tool>\n")})
    # each stop string as written and after a space (a BPE tokenizer often merges the space into its first piece)
    assert codec.stop_sequences == (tuple(b"</calc>"), tuple(b" </calc>")) and codec.marker_ids == (ord("~"),)
    assert codec.decode(list(b"<calc>1+2</calc>")) == "<calc>1+2</calc>"
    ids, cut = codec.observation_ids("<result>3</result>", "tool", 4)
    assert cut and ids == list(b"\n<tool>") + list(b"<re~") + list(b"</tool>\n")


@pytest.mark.parametrize("role,budget", [("tool", T), ("inline", 16)])
def test_rebuilding_the_cache_at_each_turn_gives_the_same_episodes(role, budget, monkeypatch):
    """keep_cache=False (each row's history, its prompt and its whole completion, re-run at every turn boundary)
    plays the episodes keep_cache=True plays: same tokens, action_mask, lengths, truncated flags and turns,
    log-probs within 1e-5; it computes at least a padded prompt more for every turn after a row's first."""
    tokens, mask = _prompts()
    settings = _settings(max_new_tokens=budget)
    knobs = {**KNOBS, **({"max_observation_tokens": 0, "max_turn_tokens": 6} if budget < T else {})}
    reencoded = []  # rows whose prompt keys/values the baseline computes again, per turn boundary
    put_prefix = multiturn._put_prefix

    def spy(prefix, part, rows):
        reencoded.append(int(rows.shape[0]))
        return put_prefix(prefix, part, rows)
    monkeypatch.setattr(multiturn, "_put_prefix", spy)
    runs = {keep: multiturn.generate_episodes(CONFIG, _params(), tokens, mask, KEY, settings, _envs(role), CODEC,
                                              keep_cache=keep, **knobs) for keep in (True, False)}
    (cached, cached_stats), (rebuilt, rebuilt_stats) = runs[True], runs[False]
    cached, rebuilt = jax.tree.map(np.asarray, cached), jax.tree.map(np.asarray, rebuilt)
    for field in ("tokens", "mask", "action_mask", "lengths", "truncated"):
        np.testing.assert_array_equal(getattr(rebuilt, field), getattr(cached, field), err_msg=field)
    np.testing.assert_allclose(rebuilt.logps, cached.logps, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(rebuilt_stats.turns, cached_stats.turns)
    assert rebuilt_stats.turn_ends == cached_stats.turn_ends
    assert rebuilt_stats.observation_tokens == cached_stats.observation_tokens
    assert rebuilt_stats.budget_cut == cached_stats.budget_cut
    assert cached_stats.turns.max() >= 2  # turn boundaries were crossed: there was a cache to rebuild
    reprefills = int((cached_stats.turns - 1).clip(0).sum())
    assert len(reencoded) == cached_stats.turns.max() - 1 and sum(reencoded) >= reprefills  # only keep_cache=False
    assert rebuilt_stats.tokens_computed - cached_stats.tokens_computed >= reprefills * tokens.shape[1] > 0
    if budget < T:
        assert cached_stats.budget_cut >= 1


def test_turn_prefixes_open_the_first_turn_the_environment_sees():
    """The assistant prefill sits in the prompt: the environment's first step sees it before the sampled text, later
    steps do not; the episodes are the reference's with the same prefixes."""
    tokens, mask = _prompts()
    settings = _settings()
    prefixes = ["jj" if r % 2 else "" for r in range(len(SCRIPTS))]
    envs, ref_envs = _envs(), _envs()
    got, stats = multiturn.generate_episodes(CONFIG, _params(), tokens, mask, KEY, settings, envs, CODEC,
                                             turn_prefixes=prefixes, **KNOBS)
    want = reference_episodes(CONFIG, _params(), tokens, mask, KEY, settings, ref_envs, CODEC,
                              turn_prefixes=prefixes, **KNOBS)
    _same(jax.tree.map(np.asarray, got), stats, want)
    seq, action = np.asarray(got.tokens), np.asarray(got.action_mask) > 0
    stepped = [r for r, env in enumerate(envs) if env.seen]
    assert any(prefixes[r] and len(envs[r].seen) > 1 for r in stepped)
    for r in stepped:
        model_text = decode(seq[r][action[r]])  # every model token, in order (observations left out)
        assert envs[r].seen[0].startswith(prefixes[r])
        assert (prefixes[r] + model_text).startswith("".join(envs[r].seen))  # the prefix once, at the start
        assert envs[r].seen == ref_envs[r].seen
    with pytest.raises(ValueError, match="turn prefixes"):
        multiturn.generate_episodes(CONFIG, _params(), tokens, mask, KEY, settings, _envs(), CODEC,
                                    turn_prefixes=["x"], **KNOBS)


def test_smaller_bucket_is_the_next_compacted_batch_below():
    assert multiturn._smaller_bucket(64, 1) == 32
    assert multiturn._smaller_bucket(48, 1) == 32  # all rows (48) -> at most 32 running rows compact
    assert multiturn._smaller_bucket(9, 1) == 8
    assert multiturn._smaller_bucket(16, 8) == 8
    assert multiturn._smaller_bucket(8, 8) == 0    # the smallest batch: the turn runs to its end
    assert multiturn._smaller_bucket(1, 1) == 0


def test_compacted_turn_runs_in_chunks_that_shrink_with_the_running_rows():
    """A turn's chunk ends when its running rows fit the next smaller batch, so every step runs fewer than twice
    its running rows (one shard): the positions of one turn are below twice the tokens sampled (all rows running
    until the longest turn ends compute 9 x its length)."""
    knobs = dict(max_turns=1, max_turn_tokens=T)
    got, stats, want = _episodes(settings=_settings(compact=True), **knobs)
    _same(got, stats, want)
    prefill = int(np.asarray(_prompts()[0]).size)
    sampled = int(got.action_mask.sum())
    assert stats.observation_tokens == 0 and stats.tokens_computed - prefill < 2 * sampled
    _, full, _ = _episodes(settings=_settings(compact=False), **knobs)
    assert full.tokens_computed - prefill == len(SCRIPTS) * int(got.lengths.max())
    assert stats.tokens_computed < full.tokens_computed, (stats.tokens_computed, full.tokens_computed)


@pytest.mark.parametrize("max_decode_rows", [4, 7])
def test_waves_of_max_decode_rows_give_the_reference_episodes(max_decode_rows, monkeypatch):
    """settings.max_decode_rows: the groups are played in waves (4 rows: one group of 3 at a time; 7: two groups,
    then one), each row with its own key: the same episodes and stats as one batch."""
    waves = []
    play = multiturn._play_episodes

    def spy(model_config, params, tokens_in, *args, **kwargs):
        waves.append(len(tokens_in))
        return play(model_config, params, tokens_in, *args, **kwargs)
    monkeypatch.setattr(multiturn, "_play_episodes", spy)
    settings = _settings(max_decode_rows=max_decode_rows, compact=True)
    got, stats, want = _episodes(settings=settings)
    assert waves == ([1, 1, 1] if max_decode_rows == 4 else [2, 1])  # prompts per wave
    _same(got, stats, want)
    _trainer_matches(CONFIG, got, settings)
    _, whole, _ = _episodes(settings=_settings(compact=True))
    assert stats.turn_ends == whole.turn_ends and stats.env_stats == whole.env_stats
    assert stats.observation_tokens == whole.observation_tokens and len(stats.infos) == len(SCRIPTS)


def test_a_bfloat16_model_plays_episodes():
    """Observations are several-token queries against the heads-first cache; in bfloat16 their scores are a
    bfloat16 x bfloat16 -> float32 dot, which XLA:CPU runs only with the batch dims leading: the episodes play, and
    the sampler's log-probs are the trainer's within bfloat16 rounding."""
    config = dataclasses.replace(CONFIG, compute_dtype="bfloat16")
    tokens, mask = _prompts()
    out, stats = multiturn.generate_episodes(config, _params(), tokens, mask, KEY, _settings(), _envs("tool"), CODEC,
                                             **KNOBS)
    got = jax.tree.map(np.asarray, out)
    assert stats.turns.max() >= 2 and stats.observation_tokens > 0
    train, _ = logprobs.completion_logprobs(config, _params(), jnp.asarray(tokens), jnp.asarray(mask),
                                            jnp.asarray(got.tokens), G, temperature=1.0)
    assert (np.abs(np.asarray(train) - got.logps) * got.action_mask).max() < 0.1


def test_observe_runs_only_the_rows_that_get_an_observation():
    """With compaction, an observe step gathers the rows with tokens to insert (padded to a power of two times the
    shards) and computes rows x width positions; without, all N rows."""
    tokens, mask = _prompts()
    settings = rollout.program.resolve(CONFIG, _settings(compact=True)).program_key()
    prefill, _, observe, _ = multiturn._programs(CONFIG, settings, CODEC.stop_sequences)
    prefix, state = prefill(_params(), jnp.asarray(tokens), jnp.asarray(mask))
    seen = []

    def spy(params, prefix, state, obs, counts, restart):
        seen.append(obs.shape)
        return observe(params, prefix, state, obs, counts, restart)
    runs = {1: [5, 6, 7], 4: [8] * 10, 7: [9]}
    n = len(SCRIPTS)
    after, computed = multiturn._observe_rows(spy, _params(), prefix, state, runs, np.zeros(n, bool), G, 1, 0)
    assert seen == [(4, 16)] and computed == 4 * 16   # 3 rows -> 4, the longest (10) -> 16 columns
    lengths = np.asarray(after.lengths)
    assert lengths.tolist() == [0, 3, 0, 0, 10, 0, 0, 1, 0]
    assert np.asarray(after.tokens)[4, :10].tolist() == [8] * 10
    prefix, state = prefill(_params(), jnp.asarray(tokens), jnp.asarray(mask))  # the first call donated its state
    _, computed_all = multiturn._observe_rows(spy, _params(), prefix, state, runs, np.zeros(n, bool), G, 0, 0)
    assert seen[-1] == (n, 16) and computed_all == n * 16
