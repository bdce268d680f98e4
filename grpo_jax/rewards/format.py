"""Format rewards for the reasoning format `<think> ... </think> <answer> ... </answer>`.

This is the format of TinyZero's Countdown run and Phil Schmid's "mini-R1" tutorial (the seed tutorial), which follow
DeepSeek-R1's format reward (DeepSeek-AI 2025, sec. 2.2.2). The runner may prefill the assistant turn with
"<think>" (or "Let me solve this step by step.\\n<think>"), so a completion without an opening `<think>` is read as if
"<think>" had been prepended: it starts inside the think block.
"""

from __future__ import annotations

from grpo_jax.rewards.extract import completion_text
from grpo_jax.rewards.registry import REWARDS

TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _with_think(text: str) -> str:
    return text if "<think>" in text else "<think>" + text


def follows_format(text: str) -> bool:
    """`<think>R</think>`, whitespace, `<answer>A</answer>`, nothing else around it; A not blank; each tag once."""
    text = _with_think(text).strip()
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    think_close, answer_open = text.find("</think>"), text.find("<answer>")
    return (
        text.startswith("<think>")
        and text.endswith("</answer>")
        and think_close < answer_open
        and not text[think_close + len("</think>") : answer_open].strip()
        and bool(text[answer_open + len("<answer>") : -len("</answer>")].strip())
    )


def partial_format_score(text: str) -> float:
    """0.25 per tag that occurs exactly once and after every earlier tag that occurs exactly once."""
    text = _with_think(text)
    score, previous = 0.0, -1
    for tag in TAGS:
        if text.count(tag) != 1:
            continue
        position = text.find(tag)
        if position > previous:
            score += 0.25
        previous = max(previous, position)
    return score


@REWARDS.register("format")
def format_factory():
    """1.0 when the completion follows the think/answer format exactly, else 0.0."""

    def format(completions, **_columns):  # noqa: A001 - TRL logs a reward under its function name
        return [1.0 if follows_format(completion_text(c)) else 0.0 for c in completions]

    return format


@REWARDS.register("format_partial")
def format_partial_factory():
    """Partial credit: 0.25 for each of the four tags present once and in order."""

    def format_partial(completions, **_columns):
        return [partial_format_score(completion_text(c)) for c in completions]

    return format_partial
