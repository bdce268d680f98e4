"""What every task gives the runner: training prompts by seed and index, a fixed held-out eval set, reward columns.

An example is a dict:

    {"prompt": [{"role": "system", "content": ...}, {"role": "user", "content": ...}],
     "prefill": "Let me solve this step by step.\\n<think>" or None,   # start of the assistant turn
     "id": "stable identity of the problem",
     <reward columns>: e.g. "nums": [44, 19, 35], "target": 98}

`Task.train_example(seed, index)` is random access, so a resumed run continues exactly where it stopped
(`train_batch(seed, step, batch_size)` is examples step*batch_size ... + batch_size - 1). The eval set depends only
on the task's own `split_seed` option, never on the training seed, so runs with different seeds are compared on the
same problems; no eval problem (by identity) is ever a training problem.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterator

import numpy as np

R1_SYSTEM = (
    "You are a helpful assistant. You first think about the reasoning process in the mind and then provide the "
    "user with the answer."
)
R1_PREFILL = "Let me solve this step by step.\n<think>"
NON_COLUMN_KEYS = ("prompt", "prefill", "id")

TRAIN_STREAM = 0x7472  # distinct random streams for training draws and the eval split
EVAL_STREAM = 0x6576


def check_seed(seed: Any, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {seed!r}")
    return int(seed)


def rng(*keys: int) -> np.random.Generator:
    """A generator determined by the integer keys (e.g. seed, index, stream)."""
    return np.random.default_rng([int(k) for k in keys])


def make_example(user: str, columns: dict[str, Any], *, id: str, system: str | None = None,
                 prefill: str | None = None) -> dict[str, Any]:
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {"prompt": prompt, "prefill": prefill, "id": id, **columns}


def reward_columns(examples: list[dict[str, Any]], repeat: int = 1) -> dict[str, list[Any]]:
    """TRL-style columns for a batch: each example's reward columns, each repeated `repeat` (= group size) times in a
    row, matching completions ordered [prompt 0 x G, prompt 1 x G, ...]."""
    keys = [k for k in examples[0] if k not in NON_COLUMN_KEYS] if examples else []
    return {k: [ex[k] for ex in examples for _ in range(repeat)] for k in keys}


class Task:
    """Base class. Subclasses set `name`, `reward_names`, `accuracy_reward`, `eval_metrics` and implement
    `train_example` and `_eval_examples`. A task's config fields are its factory's keyword options (`task.*`)."""

    name: str = ""
    reward_names: tuple[str, ...] = ()  # default rewards for training (all weight 1.0 unless the config says so)
    accuracy_reward: str = ""  # the reward whose value 1.0 means "solved": eval/accuracy and pass@k use it
    # The task's own eval metrics, name -> fn(completion text, example) -> float, logged as eval/<name> means:
    # those of the format its prompt asks for, and what shows reasoning (see tasks/eval_metrics.py); none by default.
    eval_metrics: dict = {}
    # The environment (grpo_jax.environments) this task's prompts are written for, e.g. 'calculator' for prompts
    # that offer a calculator tool; '' = single-turn. A run plays it when its environment.name is '' (the default;
    # `environments.for_task`); a config's own name overrides it, and 'none' forces single-turn.
    default_environment: str = ""

    def train_example(self, seed: int, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def _eval_examples(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def eval_set(self, n: int | None = None) -> list[dict[str, Any]]:
        """The held-out set, or its first n examples (a stable prefix)."""
        examples = self._eval_examples()
        if n is None:
            return list(examples)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 < n <= len(examples):
            raise ValueError(f"task {self.name!r}: eval set has {len(examples)} examples, cannot take n={n!r}")
        return list(examples[:n])

    def train(self, seed: int, start: int = 0) -> Iterator[dict[str, Any]]:
        """Training examples start, start + 1, ... (endless)."""
        index = check_seed(start, "start")
        while True:
            yield self.train_example(seed, index)
            index += 1

    def train_batch(self, seed: int, step: int, batch_size: int) -> list[dict[str, Any]]:
        """The batch_size training examples of step `step`."""
        check_seed(step, "step")
        return [self.train_example(seed, step * batch_size + j) for j in range(batch_size)]

    def __repr__(self) -> str:
        return f"<task {self.name!r}: {len(self._eval_examples())} eval examples, rewards {self.reward_names}>"


class RowsTask(Task):
    """A task over fixed training rows (a dataset): epoch e is a permutation of the rows seeded by (seed, e)."""

    def __init__(self, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]):
        self._train_rows = train_rows
        self._eval = [self.to_example(row) for row in eval_rows]
        self._permutation: tuple[tuple[int, int], np.ndarray] | None = None

    def to_example(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _eval_examples(self) -> list[dict[str, Any]]:
        return self._eval

    def train_example(self, seed: int, index: int) -> dict[str, Any]:
        seed, index = check_seed(seed), check_seed(index, "index")
        epoch, offset = divmod(index, len(self._train_rows))
        if self._permutation is None or self._permutation[0] != (seed, epoch):
            self._permutation = ((seed, epoch), rng(seed, epoch, TRAIN_STREAM).permutation(len(self._train_rows)))
        return self.to_example(self._train_rows[int(self._permutation[1][offset])])
