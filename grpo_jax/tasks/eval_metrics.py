"""Per-completion eval metrics a task declares for the format its prompt asks for (`Task.eval_metrics`: name ->
fn(completion text) -> float; the evaluator logs the mean over the held-out greedy completions as eval/<name>)."""

from __future__ import annotations

from grpo_jax.rewards.extract import answer_block
from grpo_jax.rewards.format import follows_format


def format_rate(text: str) -> float:
    """1.0 when the completion is in the R1 `<think>...</think> <answer>...</answer>` format (`follows_format`)."""
    return float(follows_format(text))


def answer_rate(text: str) -> float:
    """1.0 when the completion holds a complete `<answer>...</answer>` block."""
    return float(answer_block(text) is not None)


ANSWER_TAGS = {"answer_rate": answer_rate}                    # prompts asking for <answer> tags
R1_FORMAT = {"format_rate": format_rate, "answer_rate": answer_rate}  # prompts asking for <think> + <answer>
