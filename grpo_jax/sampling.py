"""The group sampler: G completions for each of P prompts in one compiled program, with exact log-probs.

    rollout = generate(config, params, prompt_tokens, prompt_mask, key, group_size=8, max_new_tokens=256,
                       temperature=1.0, stop_ids=config.eos_token_ids)

`generate` is the default rollout engine ('jitted', grpo_jax/rollout/jitted.py) called with keyword settings: it
builds one `rollout.Settings` from them and runs the engine's compiled program (grpo_jax/rollout/program.py; its
decode loop, grpo_jax/rollout/decode_loop.py; token drawing, grpo_jax/rollout/draw.py). Those modules state the
invariants: rows p-major, exact log-probs equal to the trainer's, a row's draws independent of the batch, of
compaction, refill and the number of devices; temperature and top_p traced, every other setting static.
"""

from __future__ import annotations

from typing import Optional, Sequence

from jax.sharding import Mesh

from grpo_jax.models import lora
from grpo_jax.models.config import ModelConfig
from grpo_jax.rollout import decode_loop, jitted
from grpo_jax.rollout.draw import sample_logits
from grpo_jax.rollout.jitted import DecodeStats
from grpo_jax.rollout.result import Rollout
from grpo_jax.rollout.settings import Settings

cache_phases = decode_loop.cache_phases  # the decode loop's cache capacities, part of the sampler's API

__all__ = ["DecodeStats", "Rollout", "cache_phases", "generate", "generate_with_stats", "sample_logits"]


def generate(config: ModelConfig, params, prompt_tokens, prompt_mask, key, *, group_size: int, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             stop_ids: Sequence[int] = (), pad_id: int = 0, mesh: Optional[Mesh] = None, compact: Optional[bool] = None,
             max_decode_rows: int = 0, members: Optional[lora.Members] = None) -> Rollout:
    """G = group_size completions of each left-padded prompt (tokens/mask [P, S], see `batching.left_pad`).

    Rows of the result are p-major (row = p * G + g); T = max_new_tokens columns. A row ends at the first token in
    `stop_ids` (pass config.eos_token_ids plus any tokenizer extras; () never stops early); later columns hold
    `pad_id` with mask 0. With `mesh` (axes ('data', 'fsdp', 'tensor')), prompts and rows are split over
    ('data', 'fsdp'), the params are placed by the sampler's rules table (`rollout.jitted.place_params`: the trainer's fsdp
    split of 'embed' gathered once per call, the tensor split kept) and the program is traced under that table
    (`partitioning.rules_for('sample')`). P need not divide the number of data shards (the batch is padded and
    the padding dropped).

    compact: shrink the decode batch as rows finish (`decode_loop.buckets`); False decodes every row until all
    stop; None (default): compact when max_new_tokens >= `decode_loop.COMPACT_MIN_NEW_TOKENS`. max_decode_rows:
    decode at most this many rows at once (rounded up to a multiple of the data shards), refilling finished rows'
    slots with waiting ones; 0 (or >= N) = all rows at once. Neither changes the result (same tokens, log-probs
    within float rounding): only the work done.

    members: K population members' LoRA adapters over the base `params` (`lora.Members`), decoded together in the
    one loop: K * P * G rows, member-major (row = k * P * G + p * G + g); temperature and top_p are then K values,
    one per member (traced). Member k's rows are the rollout `generate` gives for params merged with member k's
    adapters, its temperature and top_p, and the same `key` (same tokens, log-probs within float rounding). K is
    static (one program per K)."""
    return _run(config, params, prompt_tokens, prompt_mask, key, False, group_size=group_size,
                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                stop_ids=stop_ids, pad_id=pad_id, mesh=mesh, compact=compact, max_decode_rows=max_decode_rows,
                members=members)


def generate_with_stats(config: ModelConfig, params, prompt_tokens, prompt_mask, key, **settings):
    """`generate` (same arguments) -> (Rollout, DecodeStats): the rollout and the decode loop's work counters."""
    return _run(config, params, prompt_tokens, prompt_mask, key, True, **settings)


def _run(config, params, prompt_tokens, prompt_mask, key, stats: bool, *, mesh: Optional[Mesh] = None,
         members: Optional[lora.Members] = None, **settings):
    return jitted.run(config, params, prompt_tokens, prompt_mask, key, Settings(**settings), mesh, stats=stats,
                      members=members)
