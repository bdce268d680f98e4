"""Countdown reward: the `<answer>` is an equation over `nums` that reaches `target`.

As in TinyZero (Pan et al. 2025) and the "mini-R1" tutorial: the answer holds an arithmetic expression with + - * /
and parentheses that uses each number of `nums` exactly once (as a multiset) and evaluates to `target` within 1e-5.
The prompt's own example reads `<answer> (1 + 2) / 3 = 1 </answer>`, so `expr = number` is accepted: only the left
side of a single '=' is scored. The expression is parsed by `safe_eval`, never executed.
"""

from __future__ import annotations

from grpo_jax.rewards import safe_eval
from grpo_jax.rewards.columns import integers, per_completion, per_completion_lists
from grpo_jax.rewards.extract import answer_block, completion_text, parse_number
from grpo_jax.rewards.registry import REWARDS

TOLERANCE = 1e-5


def equation_of(content: str) -> str | None:
    """The expression part of an answer: all of it, or the left side of a single '='."""
    if len(content) > 4 * safe_eval.MAX_CHARS:
        return None
    sides = content.split("=")
    return sides[0] if len(sides) <= 2 else None


def countdown_score(text: str, nums: list[int], target: float) -> float:
    """1.0 when the last `<answer>` is a valid equation over exactly `nums` equal to `target`, else 0.0."""
    content = answer_block(text)
    expression = None if content is None else equation_of(content)
    parsed = None if expression is None else safe_eval.parse_expression(expression)
    if parsed is None or any(type(x) is not int for x in parsed.numbers):
        return 0.0
    if sorted(parsed.numbers) != sorted(nums):
        return 0.0
    return 1.0 if abs(parsed.value - target) < TOLERANCE else 0.0


@REWARDS.register("countdown")
def countdown_factory():
    """Countdown equation correctness (columns `nums`: list of int, `target`: int), 1.0 or 0.0."""

    def countdown(completions, **columns):
        n = len(completions)
        all_nums = per_completion_lists(columns, "nums", n, "countdown")
        targets = per_completion(columns, "target", n, "countdown")
        scores = []
        for completion, nums, target in zip(completions, all_nums, targets):
            goal = parse_number(target)
            if goal is None:
                raise ValueError(f"countdown: target must be a number, got {target!r}")
            scores.append(countdown_score(completion_text(completion), integers(nums, "countdown nums"), goal))
        return scores

    return countdown
