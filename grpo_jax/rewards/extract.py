"""Pulling answers out of completions: the `<answer>` block, numbers, GSM8K's `#### N` line.

All scans are linear: tags are found with `str.rfind`, and the only regex (a number) has no nested quantifiers and is
applied to at most the last `TAIL_CHARS` characters of a completion, so hostile text cannot cause catastrophic
backtracking.
"""

from __future__ import annotations

import math
import re
from typing import Any

TAIL_CHARS = 4096

# A number: optional minus (ASCII or U+2212) not glued to a preceding word/number, then either digits grouped by
# thousands commas ("1,000,000") or plain digits, then an optional decimal part; or a bare decimal part (".5").
# Currency and percent signs are simply not part of the match, so "$1,000" -> 1000 and "50%" -> 50.
_NUMBER = re.compile(r"(?:(?<![\w)])[-\u2212])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<!\d)\.\d+", re.ASCII)


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or TRL's conversational form (a list of messages; last one's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def answer_block(text: str) -> str | None:
    """The content of the last complete `<answer>...</answer>` block, or None when there is none."""
    close = text.rfind("</answer>")
    if close < 0:
        return None
    open_ = text.rfind("<answer>", 0, close)
    if open_ < 0:
        return None
    return text[open_ + len("<answer>") : close]


def _to_float(token: str) -> float | None:
    value = float(token.replace(",", "").replace("\u2212", "-"))
    return value if math.isfinite(value) else None


def numbers_in(text: str) -> list[float]:
    """All numbers in (the last `TAIL_CHARS` characters of) `text`, in order, as floats."""
    values = (_to_float(m.group(0)) for m in _NUMBER.finditer(text[-TAIL_CHARS:]))
    return [v for v in values if v is not None]


def last_number(text: str) -> float | None:
    """The last number in `text`, or None."""
    found = numbers_in(text)
    return found[-1] if found else None


def number_in_answer(content: str) -> float | None:
    """The number an `<answer>` block states: the last number after its last '=' ("3 + 5 = 8" -> 8), or None."""
    return last_number(content[content.rfind("=") + 1 :])


def parse_number(value: Any) -> float | None:
    """A whole value as one number: an int/float, or a string holding exactly one number ("$1,000", "72.00", "-3")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return parse_number(value.item())
    if not isinstance(value, str):
        return None
    stripped = value.strip().replace("$", "").replace("%", "").strip()
    match = _NUMBER.fullmatch(stripped) if len(stripped) <= 64 else None
    return _to_float(match.group(0)) if match else None


def reference_number(answer: Any) -> float:
    """The reference number of an `answer` column: a number, a numeric string, or GSM8K's solution text whose last
    `####` is followed by the number ("... #### 72").

    Raises ValueError showing the bad answer: the ground truth is data, and bad data must not be silently scored 0.
    """
    parsed = parse_number(answer)
    if parsed is not None:
        return parsed
    if isinstance(answer, str) and "####" in answer:
        parsed = parse_number(answer[answer.rfind("####") + 4 :])
        if parsed is not None:
            return parsed
    shown = answer if not isinstance(answer, str) or len(answer) <= 80 else "..." + answer[-80:]
    raise ValueError(f"answer has no reference number (expected a number or text ending '#### <number>'): {shown!r}")


def same_number(a: float | None, b: float) -> bool:
    """Numeric equality up to float rounding (72 == 72.0 == 72.00)."""
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def without_observations(text: str, observations) -> str:
    """`text` (a multi-turn episode) with each of its inserted observation texts cut out, in order (each one's
    first occurrence after the previous cut; a space in its place): what the model itself wrote."""
    out, at = [], 0
    for observation in observations or ():
        if not observation:
            continue
        where = text.find(observation, at)
        if where < 0:
            continue
        out.append(text[at:where])
        at = where + len(observation)
    out.append(text[at:])
    return " ".join(out)
