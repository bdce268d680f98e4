"""Countdown: reach a target number with + - * / using each given number once (TinyZero; Pan et al. 2025).

Two sources of problems:
- generated (default, offline): 3-4 numbers in 1..99 combined by a random expression tree whose every intermediate
  value is a positive integer, keeping trees whose value lies in 1..max_target, so every problem is solvable by
  construction (as in the Countdown-Tasks-3to4 data set);
- a data set with columns `nums` (list of int) and `target` (int): `source` = a hub id such as
  "Jiayi-Pan/Countdown-Tasks-3to4" or a local .jsonl/.parquet/.json/.csv file.

The prompt is the seed tutorial's (TinyZero / Phil Schmid's "mini-R1"), with the assistant turn prefilled with
"Let me solve this step by step.\\n<think>". A problem's identity is (sorted nums, target).
"""

from __future__ import annotations

from typing import Any, Sequence

from grpo_jax.rewards.columns import integer, integers
from grpo_jax.tasks import data
from grpo_jax.tasks.base import (
    EVAL_STREAM, R1_PREFILL, R1_SYSTEM, TRAIN_STREAM, RowsTask, Task, check_seed, make_example, rng,
)
from grpo_jax.tasks.eval_metrics import R1_FORMAT
from grpo_jax.tasks.registry import TASKS

HUB_ID = "Jiayi-Pan/Countdown-Tasks-3to4"
MAX_ATTEMPTS = 10_000

_OPERATIONS = {  # each returns the result, or None when it would not be a positive integer
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b if a > b else None,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b if a % b == 0 else None,
}


def prompt_text(nums: Sequence[int], target: int) -> str:
    return (
        f"Using the numbers {list(nums)}, create an equation that equals {target}. You can use basic arithmetic "
        "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. "
        "And return the final equation and answer in <answer> </answer> tags, for example "
        "<answer> (1 + 2) / 3 = 1 </answer>."
    )


def problem_key(nums: Sequence[int], target: int) -> tuple[tuple[int, ...], int]:
    return tuple(sorted(nums)), int(target)


class CountdownTask(Task):
    name = "countdown"
    reward_names = ("format", "countdown")
    accuracy_reward = "countdown"
    eval_metrics = R1_FORMAT

    def to_example(self, row: dict[str, Any]) -> dict[str, Any]:
        nums, target = list(row["nums"]), int(row["target"])
        key = problem_key(nums, target)
        return make_example(prompt_text(nums, target), {"nums": nums, "target": target},
                            id=f"countdown:{list(key[0])}->{target}", system=R1_SYSTEM, prefill=R1_PREFILL)


class GeneratedCountdown(CountdownTask):
    """Procedurally generated, solvable-by-construction Countdown problems."""

    def __init__(self, *, eval_size: int, split_seed: int, min_numbers: int, max_numbers: int, min_number: int,
                 max_number: int, max_target: int, operators: Sequence[str]):
        if not 2 <= min_numbers <= max_numbers <= 8:
            raise ValueError(f"countdown: need 2 <= min_numbers <= max_numbers <= 8, got {min_numbers}, {max_numbers}")
        if not 1 <= min_number <= max_number:
            raise ValueError(f"countdown: need 1 <= min_number <= max_number, got {min_number}, {max_number}")
        if max_target < 1:
            raise ValueError(f"countdown: max_target must be >= 1, got {max_target}")
        operators = tuple(operators)
        if not operators or any(op not in _OPERATIONS for op in operators):
            raise ValueError(f"countdown: operators must be a non-empty subset of {list(_OPERATIONS)}, got {operators}")
        self.options = dict(min_numbers=min_numbers, max_numbers=max_numbers, min_number=min_number,
                            max_number=max_number, max_target=max_target, operators=operators)
        generator = rng(check_seed(split_seed, "split_seed"), EVAL_STREAM)
        self._eval_keys: set = set()
        self._eval = []
        for _ in range(MAX_ATTEMPTS * max(eval_size, 1)):
            if len(self._eval) == eval_size:
                break
            nums, target = self._draw(generator)
            if problem_key(nums, target) not in self._eval_keys:
                self._eval_keys.add(problem_key(nums, target))
                self._eval.append(self.to_example({"nums": nums, "target": target}))
        if len(self._eval) < eval_size:
            raise ValueError(f"countdown: these options give fewer than eval_size={eval_size} distinct problems")

    def _draw(self, generator) -> tuple[list[int], int]:
        o = self.options
        for _ in range(MAX_ATTEMPTS):
            count = int(generator.integers(o["min_numbers"], o["max_numbers"] + 1))
            nums = [int(x) for x in generator.integers(o["min_number"], o["max_number"] + 1, size=count)]
            pool = list(nums)
            while len(pool) > 1:
                i, j = (int(k) for k in generator.choice(len(pool), size=2, replace=False))
                results = [r for r in (_OPERATIONS[op](pool[i], pool[j]) for op in o["operators"]) if r is not None]
                if not results:
                    break
                result = results[int(generator.integers(len(results)))]
                pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [result]
            if len(pool) == 1 and 1 <= pool[0] <= o["max_target"]:
                return nums, pool[0]
        raise ValueError(f"countdown: could not generate a problem with options {o}")

    def _eval_examples(self) -> list[dict[str, Any]]:
        return self._eval

    def train_example(self, seed: int, index: int) -> dict[str, Any]:
        generator = rng(check_seed(seed), check_seed(index, "index"), TRAIN_STREAM)
        for _ in range(MAX_ATTEMPTS):
            nums, target = self._draw(generator)
            if problem_key(nums, target) not in self._eval_keys:
                return self.to_example({"nums": nums, "target": target})
        raise ValueError("countdown: could not draw a training problem outside the eval set; lower eval_size")


class DatasetCountdown(CountdownTask, RowsTask):
    """Countdown problems from a data set (hub id or local file), split by `split_seed` into train and eval."""

    def __init__(self, *, source: str, eval_size: int, split_seed: int, hub_split: str, cache_dir: str | None):
        rows = data.require(
            data.load_rows(source, split=hub_split, cache_dir=cache_dir), source,
            {"nums": lambda v: integers(v, "nums"), "target": lambda v: integer(v, "target")},
        )
        keys = [problem_key(r["nums"], r["target"]) for r in rows]
        train_idx, eval_idx = data.split_by_identity(keys, eval_size, check_seed(split_seed, "split_seed"), source)
        if not train_idx:
            raise ValueError(f"countdown: eval_size={eval_size} leaves no training problems in {source}")
        RowsTask.__init__(self, [rows[i] for i in train_idx], [rows[i] for i in eval_idx])


@TASKS.register("countdown")
def countdown(source: str | None = None, eval_size: int = 200, split_seed: int = 0, min_numbers: int = 3,
              max_numbers: int = 4, min_number: int = 1, max_number: int = 99, max_target: int = 100,
              operators: Sequence[str] = ("+", "-", "*", "/"), hub_split: str = "train",
              cache_dir: str | None = None) -> Task:
    """Countdown: generated problems (source=None) or a data set (`source` = hub id, e.g. HUB_ID, or a local file)."""
    eval_size = integer(eval_size, "countdown eval_size")
    if eval_size < 1:
        raise ValueError(f"countdown: eval_size must be >= 1, got {eval_size}")
    if source is not None:
        return DatasetCountdown(source=source, eval_size=eval_size, split_seed=split_seed, hub_split=hub_split,
                                cache_dir=cache_dir)
    return GeneratedCountdown(eval_size=eval_size, split_seed=split_seed, min_numbers=min_numbers,
                              max_numbers=max_numbers, min_number=min_number, max_number=max_number,
                              max_target=max_target, operators=operators)
