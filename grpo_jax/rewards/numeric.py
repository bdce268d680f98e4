"""Rewards for problems whose answer is one number: `arithmetic` and `gsm8k` (Cobbe et al. 2021).

The predicted number is read, in order of preference, from the last `<answer>` block (its last number after its last
'='), then (GSM8K only) from the first number after the last `####`, then from the last number in the text. With
the option `require_answer` (reward_options.<name>.require_answer = True) only the `<answer>` block counts: a
multi-turn episode's text holds the environment's observations too (a tool's result), and the last number there
is the tool's, not the model's answer. With `skip_observations` the number is read from the model's own text: each
observation (the column `observations`, one list of inserted texts per completion, which multi-turn runs pass;
none without it) is cut out of the episode first. Numbers
compare numerically: 72 == 72.0 == 72.00, "1,000" == 1000, "$5" == 5, "50%" == 50, negatives allowed.
"""

from __future__ import annotations

from grpo_jax.rewards.columns import per_completion
from grpo_jax.rewards.extract import (
    answer_block,
    completion_text,
    last_number,
    number_in_answer,
    numbers_in,
    reference_number,
    same_number,
    without_observations,
)
from grpo_jax.rewards.registry import REWARDS


def predicted_number(text: str, *, hash_marks: bool, require_answer: bool = False) -> float | None:
    """The number a completion answers with (see the module docstring), or None."""
    content = answer_block(text)
    if content is not None:
        return number_in_answer(content)
    if require_answer:
        return None
    marker = text.rfind("####") if hash_marks else -1
    if marker >= 0:
        after = numbers_in(text[marker + 4 : marker + 4 + 256])
        return after[0] if after else None
    return last_number(text)


def _number_reward(name: str, *, hash_marks: bool, require_answer: bool = False, skip_observations: bool = False):
    for option, value in (("require_answer", require_answer), ("skip_observations", skip_observations)):
        if not isinstance(value, bool):
            raise ValueError(f"reward_options.{name}.{option} must be True or False, got {value!r}")

    def reward(completions, **columns):
        answers = per_completion(columns, "answer", len(completions), name)
        observations = [()] * len(completions)
        if skip_observations and columns.get("observations") is not None:
            observations = per_completion(columns, "observations", len(completions), name)
        scores = []
        for completion, answer, inserted in zip(completions, answers, observations):
            gold = reference_number(answer)
            text = without_observations(completion_text(completion), inserted)
            predicted = predicted_number(text, hash_marks=hash_marks, require_answer=require_answer)
            scores.append(1.0 if same_number(predicted, gold) else 0.0)
        return scores

    reward.__name__ = reward.__qualname__ = name
    return reward


@REWARDS.register("arithmetic")
def arithmetic_factory(require_answer: bool = False, skip_observations: bool = False):
    """1.0 when the answered number equals the column `answer` (a number, or text ending `#### N`), else 0.0;
    require_answer: only an `<answer>` block answers; skip_observations: only the model's own text is read."""
    return _number_reward("arithmetic", hash_marks=False, require_answer=require_answer,
                          skip_observations=skip_observations)


@REWARDS.register("gsm8k")
def gsm8k_factory(require_answer: bool = False, skip_observations: bool = False):
    """1.0 when the answered number equals the number after `####` in the column `answer`, else 0.0;
    require_answer: only an `<answer>` block answers; skip_observations: only the model's own text is read."""
    return _number_reward("gsm8k", hash_marks=True, require_answer=require_answer,
                          skip_observations=skip_observations)
