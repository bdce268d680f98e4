"""Turning an environment's faults into bounded observations: a step never crashes a rollout.

    outcome = safe_step(env, turn, timeout_s=config.environment.timeout_s,
                        max_chars=max_observation_chars(config.environment))
    outcome.observation   always an Observation with text None or a str of at most max_chars characters
    outcome.fault         None | 'error' | 'timeout' | 'oversize' (the rollout counts them)
    outcome.seconds       wall time the call took

- a raise (or a return that is not an Observation) becomes `Observation("error: <Type>: <message>")`, the message
  bounded; the episode goes on (the environment decides nothing this turn);
- a step still running after `timeout_s` becomes `Observation("error: timeout ...", done=True)`: the episode ends,
  since the environment's state is whatever the unfinished step left. The step runs in a daemon worker thread that
  is abandoned, not stopped: Python cannot kill a thread, so a pure-Python infinite loop keeps running (and holding
  the GIL part of the time) until the process exits. Environments that call untrusted or unbounded code must bound
  it themselves (a subprocess with its own limit); the built-in environments never block and are bounded by
  construction;
- a text longer than `max_chars` is cut to at most `max_chars` characters, its head kept and a marker
  '...[truncated N chars]' appended (fault 'oversize'; the observation is still used).

Token-level cutting happens after tokenising: `truncate_tokens(ids, max_tokens, marker_ids)` keeps the head and
appends the marker's tokens, within `max_tokens` in all.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Optional, Sequence

from grpo_jax.environments.base import Observation

FAULTS = ("error", "timeout", "oversize")
ERROR_CHARS = 256          # an error observation's text is at most this long (and at most max_chars)
CHARS_PER_TOKEN = 16       # max_observation_chars: a generous characters-per-token bound
MIN_OBSERVATION_CHARS = 1024


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    observation: Observation
    fault: Optional[str]
    seconds: float


def max_observation_chars(section) -> int:
    """The character bound `safe_step` applies before tokenising: generous enough that a text within
    `max_observation_tokens` tokens is never cut here (the token cut is the one that counts)."""
    tokens = int(section["max_observation_tokens"])
    return max(MIN_OBSERVATION_CHARS, CHARS_PER_TOKEN * tokens) if tokens else 1 << 20


def truncation_marker(cut: int) -> str:
    return f"...[truncated {cut} chars]"


def truncate_text(text: str, max_chars: int) -> tuple[str, bool]:
    """(text, False) when it fits; else (head + marker, True), at most max_chars characters when max_chars is at
    least the marker's length (else the marker alone)."""
    if len(text) <= max_chars:
        return text, False
    keep = max(0, max_chars - len(truncation_marker(len(text))))
    return text[:keep] + truncation_marker(len(text) - keep), True


def truncate_tokens(ids: Sequence[int], max_tokens: int, marker_ids: Sequence[int] = ()) -> tuple[list[int], bool]:
    """(ids, False) when len(ids) <= max_tokens; else (head + marker_ids, True) with at most max_tokens tokens in
    all (the head shrinks to make room for the marker; a marker longer than max_tokens is itself cut)."""
    ids, marker = [int(i) for i in ids], [int(i) for i in marker_ids]
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens!r}")
    if len(ids) <= max_tokens:
        return ids, False
    keep = max(0, max_tokens - len(marker))
    return (ids[:keep] + marker)[:max_tokens], True


def _error_text(exc: BaseException, max_chars: int) -> str:
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001  (an exception whose __str__ raises)
        message = "(unprintable)"
    text = f"error: {type(exc).__name__}: {message}" if message else f"error: {type(exc).__name__}"
    return truncate_text(text, min(ERROR_CHARS, max_chars))[0]


def safe_step(env, turn: str, *, timeout_s: float, max_chars: int) -> StepOutcome:
    """`env.step(turn)` in a worker thread, bounded: see the module docstring. Never raises."""
    start = time.perf_counter()
    box: dict = {}

    def work():
        try:
            box["observation"] = env.step(turn)
        except BaseException as exc:  # noqa: BLE001  (everything a step raises becomes an observation)
            box["error"] = exc

    worker = threading.Thread(target=work, name="environment-step", daemon=True)
    worker.start()
    worker.join(timeout_s)

    def done(observation: Observation, fault: Optional[str]) -> StepOutcome:
        return StepOutcome(observation, fault, time.perf_counter() - start)

    if worker.is_alive():
        return done(Observation(truncate_text(f"error: timeout: the step ran past {timeout_s:g} s", max_chars)[0],
                                done=True), "timeout")
    if "error" in box:
        return done(Observation(_error_text(box["error"], max_chars)), "error")
    observation = box.get("observation")
    if not isinstance(observation, Observation) or not isinstance(observation.text, (str, type(None))) \
            or not isinstance(observation.info, dict):
        bad = TypeError(f"step returned {type(observation).__name__}, not an Observation with text str | None "
                        f"and info dict")
        return done(Observation(_error_text(bad, max_chars)), "error")
    if observation.text is not None:
        text, cut = truncate_text(observation.text, max_chars)
        if cut:
            return done(dataclasses.replace(observation, text=text), "oversize")
    return done(observation, None)
