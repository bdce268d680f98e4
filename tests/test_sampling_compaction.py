"""The decode loop stops paying for finished rows -- compaction and refill -- without changing the rollout.

Every case compares with the plain loop (compact=False, max_decode_rows=0: every row decoded until all stop) for the
same key: tokens, mask, lengths and truncated flags equal, log-probs within 1e-5; and checks, from the loop's work
counters (`sampling.generate_with_stats`), that compaction / refill really ran.
"""

import functools

import jax
import numpy as np
import pytest

from grpo_jax import batching, logprobs, rollout, sampling
from grpo_jax.rollout import decode_loop, jitted
from grpo_jax.models import ModelConfig, init_params

CONFIG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_position_embeddings=64, tie_word_embeddings=False)
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [3], [40, 41, 42, 43]]
G, T = 8, 40                      # N = 32 rows: the ladder is 32, 16, 8
STOPS = (1, 2, 3, 4, 5, 6)        # often drawn by the sharpened model below: rows end anywhere in [1, T]
SETTINGS = dict(group_size=G, max_new_tokens=T, temperature=1.0, stop_ids=STOPS)
KEY = jax.random.PRNGKey(1)


@functools.lru_cache(maxsize=None)
def _params(config=CONFIG):
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 30.0  # peaked next-token distributions
    return params


def _prompts():
    return batching.left_pad(PROMPTS, pad_id=0, bucket=8)


def _run(config=CONFIG, settings=SETTINGS, **loop):
    loop.setdefault("compact", True)  # T = 40 is below the default's threshold (COMPACT_MIN_NEW_TOKENS)
    tokens, mask = _prompts()
    out, stats = sampling.generate_with_stats(config, _params(config), tokens, mask, KEY, **settings, **loop)
    return jax.tree.map(np.asarray, out), stats


@functools.lru_cache(maxsize=None)
def _plain(settings_items=tuple(SETTINGS.items())):
    return _run(settings=dict(settings_items), compact=False)


def _same(want, got):
    for field in ("tokens", "mask", "lengths", "truncated"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    np.testing.assert_allclose(got.logps, want.logps, atol=1e-5, rtol=0)


def test_buckets():
    """The ladder halves down to MIN_BUCKET rows, in multiples of the data shards; one size without compaction."""
    assert decode_loop.MIN_BUCKET == 8
    assert decode_loop.buckets(32) == (32, 16, 8)
    assert decode_loop.buckets(31) == (31, 16, 8)
    assert decode_loop.buckets(12) == (12,) and decode_loop.buckets(32, compact=False) == (32,)
    assert decode_loop.buckets(24, shards=8) == (24, 16, 8)
    assert decode_loop.buckets(64, shards=16) == (64, 32, 16)
    for rows in range(1, 200):
        for shards in (1, 2, 8):
            sizes = decode_loop.buckets(rows * shards, shards)
            assert sizes[0] == rows * shards and all(s % shards == 0 for s in sizes)
            assert list(sizes) == sorted(set(sizes), reverse=True) and min(sizes) >= min(rows * shards, 8)


@pytest.mark.parametrize("loop,compacted,refilled", [
    (dict(), True, False),                              # compaction 32 -> 16 -> 8
    (dict(max_decode_rows=12), False, True),            # refill, 12 slots (not a divisor of 32; ladder (12,))
    (dict(max_decode_rows=16), True, True),             # refill into 16 slots, then compaction to 8
    (dict(max_decode_rows=5), False, True),             # refill, 5 slots (below the smallest bucket)
], ids=["compact", "refill-12", "refill-16-compact", "refill-5"])
def test_same_rollout_as_the_plain_loop(loop, compacted, refilled):
    """Rows of very different lengths (1 to T tokens): compaction and refill give the plain loop's rollout."""
    want, plain_stats = _plain()
    lengths = want.lengths
    assert lengths.min() <= 2 and lengths.max() == T and len(np.unique(lengths)) >= 12, lengths
    assert want.truncated.any() and not want.truncated.all()
    assert plain_stats.buckets == (32,) and plain_stats.steps[0] == T - 1 and plain_stats.refilled == 0
    got, stats = _run(**loop)
    _same(want, got)
    assert (stats.steps[1:].sum() > 0) == compacted, stats
    assert (stats.refilled > 0) == refilled, stats
    if refilled:  # every row that needed decoding got a slot: the first B at the start, the rest by refill
        assert stats.refilled == np.sum(lengths > 1) - stats.buckets[0], stats
    if compacted:  # each smaller batch ran only once at most its size of rows were running
        assert stats.steps[0] < T - 1


def test_compaction_by_default_from_64_new_tokens():
    """compact=None: off below decode_loop.COMPACT_MIN_NEW_TOKENS (the plain loop's program), on from it."""
    assert decode_loop.COMPACT_MIN_NEW_TOKENS == 64 > T
    _, stats = _run(compact=None)
    assert stats.buckets == (32,)
    tokens, mask = _prompts()
    longer = CONFIG.replace(max_position_embeddings=128)
    _, stats = sampling.generate_with_stats(longer, _params(longer), tokens, mask, KEY,
                                            **{**SETTINGS, "max_new_tokens": 64})
    assert stats.buckets == (32, 16, 8) and stats.steps[1:].sum() > 0, stats


def test_unrolled_layers_compact_and_refill():
    """scan_layers False (per-layer cache and prefix buffers): refill + compaction give the plain loop's rollout."""
    want, _ = _plain()
    got, stats = _run(CONFIG.replace(scan_layers=False), max_decode_rows=16)
    _same(want, got)
    assert stats.steps[1:].sum() > 0 and stats.refilled > 0


def test_logps_equal_trainer_logps_with_compaction_and_refill():
    """The compacted, refilled loop's log-probs are the trainer's (`logprobs.completion_logprobs`) within 1e-5."""
    out, _ = _run(max_decode_rows=16)
    tokens, mask = _prompts()
    want, _ = logprobs.completion_logprobs(CONFIG, _params(), tokens, mask, out.tokens, G, temperature=1.0)
    assert np.max(np.abs(out.logps - np.asarray(want)) * out.mask) <= 1e-5
    assert np.all(out.logps[out.mask == 0] == 0)


def test_every_row_stops_at_token_0():
    """Every token a stop id: all rows end at token 0 (drawn as in the plain run: stop ids do not change a draw) and
    the loop never steps."""
    want, _ = _plain()
    got, stats = _run(settings={**SETTINGS, "stop_ids": tuple(range(CONFIG.vocab_size))}, max_decode_rows=12)
    np.testing.assert_array_equal(got.tokens[:, 0], want.tokens[:, 0])
    np.testing.assert_allclose(got.logps[:, 0], want.logps[:, 0], atol=1e-5, rtol=0)
    assert np.all(got.tokens[:, 1:] == 0) and np.all(got.logps[:, 1:] == 0)
    assert np.all(got.lengths == 1) and np.all(got.mask.sum(1) == 1) and not got.truncated.any()
    assert stats.steps.sum() == stats.refilled == 0


def test_no_row_stops():
    """No stop ids: every row runs T tokens; 12 slots for 32 rows are refilled twice (12 + 12 + 8 rows)."""
    settings = {**SETTINGS, "stop_ids": ()}
    want, _ = _run(settings=settings, compact=False)
    got, stats = _run(settings=settings, max_decode_rows=12)
    _same(want, got)
    assert np.all(want.lengths == T) and want.truncated.all()
    assert stats.buckets == (12,) and stats.steps.tolist() == [3 * (T - 1)] and stats.refilled == 20


def test_bad_max_decode_rows():
    tokens, mask = _prompts()
    with pytest.raises(ValueError, match="max_decode_rows must be an integer >= 0"):
        sampling.generate(CONFIG, _params(), tokens, mask, KEY, max_decode_rows=-1, **SETTINGS)


def test_the_jitted_engine_passes_max_decode_rows(monkeypatch):
    """rollout.Settings.max_decode_rows reaches the compiled program through the 'jitted' engine: the Settings
    object is passed whole, and it is the program's cache key."""
    want = _plain()[0]  # before the spy: only the engine's own call is recorded
    seen = []
    compiled = jitted.compiled

    def spy(model_config, settings, *args, **kwargs):
        seen.append(settings)
        return compiled(model_config, settings, *args, **kwargs)
    monkeypatch.setattr(jitted, "compiled", spy)
    tokens, mask = _prompts()
    engine = rollout.make("jitted", CONFIG)
    out = engine.generate(_params(), tokens, mask, KEY, rollout.Settings(group_size=G, max_new_tokens=T,
                                                                         stop_ids=STOPS, max_decode_rows=12))
    assert [s.max_decode_rows for s in seen] == [12] and seen[0].stop_ids == STOPS
    # and it reports what its decode loop computed: token 0 of the 32 rows, then 12 slots per decode step
    assert engine.last_tokens_computed > 32 and (engine.last_tokens_computed - 32) % 12 == 0
    _same(want, jax.tree.map(np.asarray, out))
