"""GSM8K grade-school math word problems (Cobbe et al. 2021) through `datasets`.

`source` is the hub id (default "openai/gsm8k", config "main": its train split trains, its test split evaluates), or
local files `train_file` and `test_file` (.jsonl/.parquet/.json/.csv with columns `question` and `answer`, the
answer being a solution text ending in `#### N`). The eval set is the test split shuffled by `split_seed` (its first
`eval_size` problems, or all); training questions that also appear in the eval set are dropped.
"""

from __future__ import annotations

from typing import Any

from grpo_jax.rewards.columns import integer
from grpo_jax.rewards.extract import reference_number
from grpo_jax.tasks import data
from grpo_jax.tasks.base import R1_PREFILL, R1_SYSTEM, RowsTask, Task, check_seed, make_example
from grpo_jax.tasks.eval_metrics import R1_FORMAT
from grpo_jax.tasks.registry import TASKS

HUB_ID = "openai/gsm8k"


def _question(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"question must be non-empty text, got {value!r}")
    return value


def _answer(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"answer must be text ending in '#### <number>', got {value!r}")
    reference_number(value)  # raises ValueError showing the answer when there is no '#### <number>'
    return value


def _identity(question: str) -> str:
    return " ".join(question.split())


class GSM8KTask(RowsTask):
    name = "gsm8k"
    reward_names = ("format", "gsm8k")
    accuracy_reward = "gsm8k"
    eval_metrics = R1_FORMAT

    def __init__(self, train_rows: list[dict], test_rows: list[dict], eval_size: int | None, split_seed: int,
                 test_source: str):
        keys = [_identity(r["question"]) for r in test_rows]
        eval_size = len(set(keys)) if eval_size is None else integer(eval_size, "gsm8k eval_size")
        _, eval_idx = data.split_by_identity(keys, eval_size, split_seed, test_source)
        eval_rows = [test_rows[i] for i in eval_idx]
        eval_keys = {_identity(r["question"]) for r in eval_rows}
        train_rows = [r for r in train_rows if _identity(r["question"]) not in eval_keys]
        if not train_rows:
            raise ValueError("gsm8k: every training question is also in the eval set")
        super().__init__(train_rows, eval_rows)

    def to_example(self, row: dict[str, Any]) -> dict[str, Any]:
        user = (
            f"{row['question'].strip()}\nShow your work in <think> </think> tags. And return the final answer "
            "(a number) in <answer> </answer> tags, for example <answer> 42 </answer>."
        )
        return make_example(user, {"question": row["question"], "answer": row["answer"]},
                            id=f"gsm8k:{_identity(row['question'])}", system=R1_SYSTEM, prefill=R1_PREFILL)


@TASKS.register("gsm8k")
def gsm8k(source: str = HUB_ID, hub_config: str = "main", train_file: str | None = None,
          test_file: str | None = None, eval_size: int | None = None, split_seed: int = 0,
          cache_dir: str | None = None) -> Task:
    """GSM8K from the hub (`source`, `hub_config`) or from local `train_file` + `test_file`."""
    split_seed = check_seed(split_seed, "split_seed")
    if (train_file is None) != (test_file is None):
        raise ValueError("gsm8k: give both train_file and test_file (or neither, to use the hub)")
    checks = {"question": _question, "answer": _answer}
    splits = {}
    for split, file in (("train", train_file), ("test", test_file)):
        where = file if file is not None else f"{source} ({hub_config}, {split} split)"
        rows = data.load_rows(file, cache_dir=cache_dir) if file is not None else data.load_rows(
            source, split=split, hub_config=hub_config, cache_dir=cache_dir)
        splits[split] = (data.require(rows, where, checks), where)
    return GSM8KTask(splits["train"][0], splits["test"][0], eval_size, split_seed, splits["test"][1])
