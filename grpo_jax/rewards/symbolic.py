"""`math` reward: symbolic equivalence of LaTeX / boxed answers via Hugging Face's math-verify (optional extra).

The gold `answer` and the prediction (the last `<answer>` block, else the whole completion) are parsed by
`math_verify.parse` and compared by `math_verify.verify`. A bare answer such as `\\frac{1}{2}` is wrapped in
`\\boxed{}` so math-verify's LaTeX extraction finds it. math-verify's own timeouts use SIGALRM, which only works in
the main thread; elsewhere they are turned off.
"""

from __future__ import annotations

import threading

from grpo_jax.rewards.columns import per_completion
from grpo_jax.rewards.extract import answer_block, completion_text
from grpo_jax.rewards.registry import REWARDS

INSTALL_HINT = "the 'math' reward needs the optional extra math-verify: pip install 'grpo_jax[math]'"


def _boxed(text: str) -> str:
    return text if ("\\boxed" in text or "$" in text) else "\\boxed{" + text.strip() + "}"


@REWARDS.register("math")
def math_factory():
    """1.0 when the answer is mathematically equivalent to the column `answer` (math-verify), else 0.0."""
    try:
        import math_verify
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e

    def math(completions, **columns):
        answers = per_completion(columns, "answer", len(completions), "math")
        # math-verify's default timeouts (SIGALRM) in the main thread; none elsewhere, where SIGALRM cannot work.
        main = threading.current_thread() is threading.main_thread()
        parse_options = {} if main else {"parsing_timeout": None}
        verify_options = {} if main else {"timeout_seconds": None}
        scores = []
        for completion, answer in zip(completions, answers):
            text = completion_text(completion)
            content = answer_block(text)
            gold = math_verify.parse(_boxed(str(answer)), **parse_options)
            predicted = math_verify.parse(text if content is None else _boxed(content), **parse_options)
            same = bool(gold) and bool(predicted) and math_verify.verify(gold, predicted, **verify_options)
            scores.append(1.0 if same else 0.0)
        return scores

    return math
