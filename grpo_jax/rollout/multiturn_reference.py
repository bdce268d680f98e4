"""The reference of `multiturn.generate_episodes`, for tests: the same episodes without any cache.

Each row is played on its own: every token is drawn from `models.forward` over the row's WHOLE sequence so far
(prompt + every earlier turn and observation), with the same per-row uniform fold_in(fold_in(key, r), j) and the
same `draw.sample_logits`; the turn-end, environment and budget rules are written out again here, plainly, one row
at a time. Slow (one full forward per token) and exact: the cached rollout must give the same tokens and
action_mask and log-probs within float rounding.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import environments
from grpo_jax.models import decoder
from grpo_jax.models.config import ModelConfig
from grpo_jax.rollout import decode_loop
from grpo_jax.rollout.draw import sample_logits
from grpo_jax.rollout.multiturn import TurnCodec
from grpo_jax.rollout.settings import Settings


@functools.lru_cache(maxsize=4)
def _next_logits(config: ModelConfig):
    @jax.jit
    def fn(params, tokens, mask, at):
        """The logits that predict the token after column `at` of one row [1, W]."""
        return decoder.forward(config, params, tokens, mask)[0, at]
    return fn


def reference_episodes(model_config: ModelConfig, params, prompt_tokens, prompt_mask, key, settings: Settings,
                       envs: Sequence, codec: TurnCodec, *, max_turns: int, max_turn_tokens: int = 0,
                       max_observation_tokens: int = 0, timeout_s: float = 5.0,
                       max_chars: Optional[int] = None, turn_prefixes: Optional[Sequence[str]] = None) -> dict:
    """numpy arrays tokens, mask, logps, action_mask [N, T], lengths, truncated, turns [N] of the episodes
    `generate_episodes` computes with the same arguments (fresh environments, reset the same way)."""
    prompt_tokens = np.asarray(prompt_tokens, np.int32)
    prompt_mask = np.asarray(prompt_mask, bool)
    p, s_len = prompt_tokens.shape
    g, t_max = settings.group_size, settings.max_new_tokens
    n = p * g
    if max_chars is None:
        max_chars = environments.max_observation_chars({"max_observation_tokens": max_observation_tokens})
    per_turn = max_turn_tokens if max_turn_tokens > 0 else t_max
    temperature = 1.0 if settings.greedy else settings.temperature
    next_logits = _next_logits(model_config)
    fill = settings.pad_id if 0 <= settings.pad_id < model_config.vocab_size else 0
    out = {name: np.zeros((n, t_max), np.float32) for name in ("mask", "logps", "action_mask")}
    out["tokens"] = np.full((n, t_max), settings.pad_id, np.int32)
    out["lengths"] = np.zeros(n, np.int32)
    out["truncated"] = np.zeros(n, bool)
    out["turns"] = np.zeros(n, np.int32)

    for r in range(n):
        row_key = jax.random.fold_in(key, r)
        seq: list[int] = []
        action: list[float] = []
        logps: list[float] = []
        turns, truncated = 0, False
        role = getattr(envs[r], "role", "inline")
        while True:
            if len(seq) >= t_max:
                truncated = True
                break
            turns += 1
            turn_start, reason = len(seq), None
            while reason is None:
                row = np.full((1, s_len + t_max), fill, np.int32)
                row[0, :s_len] = prompt_tokens[r // g]
                row[0, s_len:s_len + len(seq)] = seq
                mask = np.zeros((1, s_len + t_max), bool)
                mask[0, :s_len] = prompt_mask[r // g]
                mask[0, s_len:s_len + len(seq)] = True
                logits = next_logits(params, jnp.asarray(row), jnp.asarray(mask), s_len + len(seq) - 1)
                u = decode_loop.row_uniforms(row_key[None], len(seq))
                tok, lp = sample_logits(logits[None], u, temperature, settings.top_p, top_k=settings.top_k,
                                        use_top_p=settings.use_top_p, greedy=settings.greedy)
                seq.append(int(tok[0]))
                action.append(1.0)
                logps.append(float(lp[0]))
                if seq[-1] in settings.stop_ids:
                    reason = "stop_id"
                elif any(len(seq) - len(s) >= turn_start and tuple(seq[-len(s):]) == s
                         for s in codec.stop_sequences):
                    reason = "stop_string"
                elif len(seq) >= t_max:
                    reason = "budget"
                elif len(seq) - turn_start >= per_turn:
                    reason = "turn_tokens"
            if reason == "budget":
                truncated = True
                break
            text = codec.decode(seq[turn_start:])
            if turns == 1 and turn_prefixes is not None:
                text = (turn_prefixes[r] or "") + text
            observation = environments.safe_step(envs[r], text, timeout_s=timeout_s, max_chars=max_chars).observation
            if reason == "stop_id" or observation.done or turns >= max_turns:
                break
            if observation.text is None:
                continue
            ids, _ = codec.observation_ids(observation.text, role, max_observation_tokens)
            room = t_max - len(seq)
            stop_after = len(ids) >= room
            ids = environments.truncate_tokens(ids, room, codec.marker_ids)[0]
            seq += ids
            action += [0.0] * len(ids)
            logps += [0.0] * len(ids)
            if stop_after:
                truncated = True
                break
        k = len(seq)
        out["tokens"][r, :k] = seq
        out["mask"][r, :k] = 1.0
        out["logps"][r, :k] = logps
        out["action_mask"][r, :k] = action
        out["lengths"][r] = k
        out["truncated"][r] = truncated
        out["turns"][r] = turns
    return out
