"""Per-completion eval metrics a task declares (`Task.eval_metrics`: name -> fn(completion text, example) -> float,
`example` the held-out problem's dict with its reward columns; the evaluator logs the mean over the held-out greedy
completions as eval/<name>): those of the format its prompt asks for, and what shows reasoning."""

from __future__ import annotations

import re

from grpo_jax.rewards.extract import answer_block
from grpo_jax.rewards.format import follows_format

MAX_SCANNED_CHARS = 4096  # a completion is scanned up to here: bounded work whatever the model emits
_STATED = re.compile(r"=\s*(-?\d{1,12})(?!\d)")  # "= 12": a result stated after an equals sign


def format_rate(text: str, example=None) -> float:
    """1.0 when the completion is in the R1 `<think>...</think> <answer>...</answer>` format (`follows_format`)."""
    return float(follows_format(text))


def answer_rate(text: str, example=None) -> float:
    """1.0 when the completion holds a complete `<answer>...</answer>` block."""
    return float(answer_block(text) is not None)


def intermediate_rate(text: str, example) -> float:
    """1.0 when the completion states an intermediate result before its final answer: "= v" for a value v of the
    problem's `intermediates` column (the values of its sub-expressions, e.g. 2 * 2 = 4 in 4 - 2 * 2), before the
    `<answer>` tag (or anywhere when there is none). Restating the problem ("4 - 2 * 2") does not count: only a
    number after "=" does."""
    values = {int(v) for v in example.get("intermediates") or ()}
    if not values:
        return 0.0
    text = text[:MAX_SCANNED_CHARS]
    end = text.find("<answer>")
    before = text if end < 0 else text[:end]
    return float(any(int(m.group(1)) in values for m in _STATED.finditer(before)))


ANSWER_TAGS = {"answer_rate": answer_rate}                    # prompts asking for <answer> tags
R1_FORMAT = {"format_rate": format_rate, "answer_rate": answer_rate}  # prompts asking for <think> + <answer>
