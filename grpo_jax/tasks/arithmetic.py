"""Arithmetic: "What is 3 + 5?" problems, the offline CPU default (a 135M instruct model gets some right at step 0).

A problem is `num_operands` numbers of up to `digits` digits (0 .. 10**digits - 1) joined by operators drawn from
`operators`, evaluated with the usual precedence; with "/" only problems whose exact value is an integer are kept.
Identity is the expression itself. Each example carries `answer` and `intermediates`, the integer values of its
sub-expressions (`intermediate_values`: partial products, running sums), which `eval/intermediate_rate` looks for
in a completion (tasks/eval_metrics.py; problems of three or more operands). `steps=True` asks for the work step by
step, each intermediate result written out; `prefill` starts the assistant's turn; `system` is a system message
before the question (e.g. the calculator tool's instructions, configs/calculator.py); `spelling` writes the
question's operators as symbols ('3 * 5 - 2', the default), words ('3 times 5 minus 2') or unicode signs
('3 × 5 − 2'), the id and the answer unchanged. Small problem spaces (at most ENUMERATE_LIMIT expressions, e.g.
the 100 one-digit additions) are enumerated and split by `split_seed` into a fixed eval subset and a disjoint
training pool; larger spaces are sampled, rejecting eval problems from training.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Any, Sequence

from grpo_jax.rewards.columns import integer
from grpo_jax.tasks.base import EVAL_STREAM, TRAIN_STREAM, Task, check_seed, make_example, rng
from grpo_jax.tasks.eval_metrics import ANSWER_TAGS, intermediate_rate
from grpo_jax.tasks.registry import TASKS

OPERATORS = ("+", "-", "*", "/")
ENUMERATE_LIMIT = 200_000
MAX_ATTEMPTS = 10_000
DEFAULT_EVAL_SIZE = 200
ANSWER_INSTRUCTION = "Put the final answer in <answer> </answer> tags."
STEPS_INSTRUCTION = ("Work it out step by step, writing each intermediate result as an equation, then put the "
                     "final answer in <answer> </answer> tags.")

Problem = tuple[tuple[int, ...], tuple[str, ...]]  # operands, operators


def value_of(problem: Problem) -> Fraction | None:
    """Exact value with * and / before + and -, left to right; None on division by zero."""
    operands, operators = problem
    terms, sign, product = [], 1, Fraction(operands[0])
    for op, x in zip(operators, operands[1:]):
        if op == "*":
            product *= x
        elif op == "/":
            if x == 0:
                return None
            product /= x
        else:
            terms.append(sign * product)
            sign, product = (1 if op == "+" else -1), Fraction(x)
    return sum(terms, sign * product)


def intermediate_values(problem: Problem) -> tuple[int, ...]:
    """The integer values met on the way to the answer, in evaluation order with * and / first: each partial
    product / quotient of two or more factors (2 * 3 in 2 * 3 * 4, and 2 * 3 * 4 itself when a sum follows) and each
    running sum of two or more terms, leaving out the final value. Sorted, distinct; () for a two-operand sum."""
    operands, operators = problem
    seen, terms = [], []
    sign, product = 1, Fraction(operands[0])
    for op, x in zip(operators, operands[1:]):
        if op in "*/":
            product = product * x if op == "*" else product / x
            seen.append(product)
        else:
            terms.append(sign * product)
            sign, product = (1 if op == "+" else -1), Fraction(x)
    terms.append(sign * product)
    total = terms[0]
    for term in terms[1:]:
        total += term
        seen.append(total)
    final = value_of(problem)
    return tuple(sorted({int(v) for v in seen if v.denominator == 1 and v != final}))


SPELLINGS = {"symbols": {}, "words": {"+": "plus", "-": "minus", "*": "times", "/": "divided by"},
             "unicode": {"-": "\u2212", "*": "\u00d7", "/": "\u00f7"}}


def expression(problem: Problem, spelling: str = "symbols") -> str:
    operands, operators = problem
    names = SPELLINGS[spelling]
    return " ".join([str(operands[0])] + [f"{names.get(op, op)} {x}" for op, x in zip(operators, operands[1:])])


class ArithmeticTask(Task):
    name = "arithmetic"
    reward_names = ("arithmetic",)
    accuracy_reward = "arithmetic"
    eval_metrics = ANSWER_TAGS

    def __init__(self, *, operators: Sequence[str], digits: int, num_operands: int, eval_size: int | None,
                 split_seed: int, steps: bool = False, prefill: str | None = None,
                 train_operands: Sequence[int] = (), system: str | None = None, spelling: str = "symbols",
                 train_prefills: Sequence[str] = ()):
        self.operators = tuple(operators)
        if not self.operators or any(op not in OPERATORS for op in self.operators):
            raise ValueError(
                f"arithmetic: operators must be a non-empty subset of {list(OPERATORS)}, got {operators!r}")
        self.digits = integer(digits, "arithmetic digits")
        self.num_operands = integer(num_operands, "arithmetic num_operands")
        if not 1 <= self.digits <= 9 or not 2 <= self.num_operands <= 8:
            raise ValueError(
                f"arithmetic: need 1 <= digits <= 9 and 2 <= num_operands <= 8, got {digits}, {num_operands}")
        split_seed = check_seed(split_seed, "split_seed")
        if not isinstance(steps, bool) or not isinstance(prefill, (str, type(None))):
            raise ValueError(f"arithmetic: steps must be a bool and prefill a string, got {steps!r}, {prefill!r}")
        self.steps, self.prefill = steps, prefill or None
        if not isinstance(system, (str, type(None))):
            raise ValueError(f"arithmetic: system must be a string, got {system!r}")
        self.system = system or None
        if spelling not in SPELLINGS:
            raise ValueError(f"arithmetic: spelling must be one of {list(SPELLINGS)}, got {spelling!r}")
        self.spelling = spelling
        if isinstance(train_prefills, str) or not all(isinstance(p, str) for p in train_prefills):
            raise ValueError(f"arithmetic: train_prefills must be a sequence of strings, got {train_prefills!r}")
        self.train_prefills = tuple(p or None for p in train_prefills)
        counts = tuple(integer(n, "arithmetic train_operands") for n in train_operands) or (self.num_operands,)
        if any(not 2 <= n <= 8 for n in counts):
            raise ValueError(f"arithmetic: train_operands must each be in 2..8, got {tuple(train_operands)!r}")
        self.train_operands = counts
        self.eval_metrics = dict(ANSWER_TAGS, **({"intermediate_rate": intermediate_rate}
                                                 if self.num_operands >= 3 else {}))
        # count -> the enumerated training pool of that many operands, or None where the space is sampled
        self._pools: dict[int, list[Problem] | None] = {}
        if self._enumerable(self.num_operands):
            problems = [p for p in self._all_problems(self.num_operands) if self._valid(p)]
            eval_size = self._eval_size(eval_size, len(problems))
            order = rng(split_seed, EVAL_STREAM).permutation(len(problems))
            eval_problems = [problems[i] for i in order[:eval_size]]
            self._pools[self.num_operands] = [problems[i] for i in order[eval_size:]]
        else:
            eval_size = self._eval_size(eval_size, None)
            generator, seen, eval_problems = rng(split_seed, EVAL_STREAM), set(), []
            while len(eval_problems) < eval_size:
                problem = self._draw(generator, self.num_operands)
                if problem not in seen:
                    seen.add(problem)
                    eval_problems.append(problem)
            self._pools[self.num_operands] = None
        for n in set(self.train_operands) - {self.num_operands}:  # other counts never meet an eval problem
            self._pools[n] = ([p for p in self._all_problems(n) if self._valid(p)] if self._enumerable(n) else None)
        self._eval_problems = frozenset(eval_problems)
        self._eval = [self.to_example(p) for p in eval_problems]

    def _enumerable(self, n: int) -> bool:
        return (10**self.digits) ** n * len(self.operators) ** (n - 1) <= ENUMERATE_LIMIT

    def _eval_size(self, eval_size: int | None, available: int | None) -> int:
        described = f"operators={list(self.operators)}, digits={self.digits}, num_operands={self.num_operands}"
        if eval_size is None:  # default: 200, or half of a small problem space
            return DEFAULT_EVAL_SIZE if available is None else min(DEFAULT_EVAL_SIZE, available // 2)
        eval_size = integer(eval_size, "arithmetic eval_size")
        if eval_size < 1:
            raise ValueError(f"arithmetic: eval_size must be >= 1, got {eval_size}")
        if available is not None and eval_size >= available:
            raise ValueError(
                f"arithmetic: {described} has only {available} distinct problems; eval_size={eval_size} would leave "
                "none for training (eval and train never share a problem). Lower eval_size or widen the space."
            )
        return eval_size

    def _all_problems(self, n: int):
        numbers = range(10**self.digits)
        for operands in itertools.product(numbers, repeat=n):
            for ops in itertools.product(self.operators, repeat=n - 1):
                yield operands, ops

    @staticmethod
    def _valid(problem: Problem) -> bool:
        value = value_of(problem)
        return value is not None and value.denominator == 1

    def _draw(self, generator, n: int) -> Problem:
        for _ in range(MAX_ATTEMPTS):
            operands = tuple(int(x) for x in generator.integers(0, 10**self.digits, size=n))
            picks = generator.integers(len(self.operators), size=n - 1)
            ops = tuple(self.operators[int(i)] for i in picks)
            if self._valid((operands, ops)):
                return operands, ops
        raise ValueError(f"arithmetic: could not draw a problem with an integer answer from operators {self.operators}")

    def to_example(self, problem: Problem, prefill: str | None = None) -> dict[str, Any]:
        text = expression(problem)
        ask = STEPS_INSTRUCTION if self.steps else ANSWER_INSTRUCTION
        return make_example(f"What is {expression(problem, self.spelling)}? {ask}",
                            {"answer": int(value_of(problem)), "intermediates": intermediate_values(problem)},
                            id=f"arithmetic:{text}", system=self.system, prefill=prefill or self.prefill)

    def _eval_examples(self) -> list[dict[str, Any]]:
        return self._eval

    def train_example(self, seed: int, index: int) -> dict[str, Any]:
        generator = rng(check_seed(seed), check_seed(index, "index"), TRAIN_STREAM)
        n = self.train_operands[int(generator.integers(len(self.train_operands)))] if len(
            self.train_operands) > 1 else self.num_operands   # one count: the stream of a task without a mix
        # a curriculum of prefills: example `index` takes train_prefills[index mod their count] (the problem stream
        # is the same as without them)
        prefill = self.train_prefills[index % len(self.train_prefills)] if self.train_prefills else None
        pool = self._pools[n]
        if pool is not None:
            return self.to_example(pool[int(generator.integers(len(pool)))], prefill)
        for _ in range(MAX_ATTEMPTS):
            problem = self._draw(generator, n)
            if problem not in self._eval_problems:
                return self.to_example(problem, prefill)
        raise ValueError("arithmetic: could not draw a training problem outside the eval set; lower eval_size")


@TASKS.register("arithmetic")
def arithmetic(operators: Sequence[str] = ("+",), digits: int = 1, num_operands: int = 2,
               eval_size: int | None = None, split_seed: int = 0, steps: bool = False, prefill: str | None = None,
               train_operands: Sequence[int] = (), system: str | None = None, spelling: str = "symbols",
               train_prefills: Sequence[str] = ()) -> Task:
    """Procedural arithmetic. eval_size None = 200, or half the problem space when that has fewer than 400 problems.
    steps: ask for the intermediate results; prefill: the start of the assistant's turn (None or '' = none; a config's '' arrives as None); train_operands: the operand counts training problems
    are drawn from, uniformly (a curriculum mix, e.g. (2, 3)); () = num_operands. Eval stays num_operands.
    system: a system message before each question (None or '' = none; the id, and so the eval split, ignores it).
    spelling: 'symbols', 'words' or 'unicode' operators in the question (the id ignores it). train_prefills: the
    prefills training examples take in turn, by index (a curriculum mix, e.g. ('<calc>', '<'): half the training
    prompts hinted); () = `prefill` for all; held-out examples always take `prefill`."""
    return ArithmeticTask(operators=operators, digits=digits, num_operands=num_operands, eval_size=eval_size,
                          split_seed=split_seed, steps=steps, prefill=prefill, train_operands=train_operands,
                          system=system, spelling=spelling, train_prefills=train_prefills)
