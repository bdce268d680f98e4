"""Tasks: solvable, reproducible, disjoint splits; local data through `datasets`; clear errors on bad data."""

import json
import os
from fractions import Fraction
from functools import lru_cache

import pytest

from grpo_jax import rewards, tasks
from grpo_jax.rewards import safe_eval
from grpo_jax.tasks import arithmetic as arithmetic_module

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
COUNTDOWN_JSONL = os.path.join(FIXTURES, "countdown.jsonl")
COUNTDOWN_PARQUET = os.path.join(FIXTURES, "countdown.parquet")
GSM8K = dict(train_file=os.path.join(FIXTURES, "gsm8k_train.jsonl"),
             test_file=os.path.join(FIXTURES, "gsm8k_test.jsonl"))


@lru_cache(maxsize=None)
def solve(values: tuple, target: Fraction):
    """Independent brute force over all orders, pairings and + - * / with exact fractions: an expression or None."""
    if len(values) == 1:
        return values[0][1] if values[0][0] == target else None
    for i in range(len(values)):
        for j in range(len(values)):
            if i == j:
                continue
            (a, ea), (b, eb) = values[i], values[j]
            rest = tuple(v for k, v in enumerate(values) if k not in (i, j))
            options = [(a + b, f"({ea} + {eb})"), (a - b, f"({ea} - {eb})"), (a * b, f"({ea} * {eb})")]
            if b != 0:
                options.append((a / b, f"({ea} / {eb})"))
            for option in options:
                found = solve(tuple(sorted(rest + (option,))), target)
                if found:
                    return found
    return None


def solution(nums, target):
    return solve(tuple(sorted((Fraction(n), str(n)) for n in nums)), Fraction(target))


def ids(examples):
    return {ex["id"] for ex in examples}


# --- countdown (generated) ---------------------------------------------------------------------------------------

def test_generated_countdown_problems_are_solvable_and_the_reward_accepts_a_solution():
    task = tasks.get("countdown", eval_size=60)
    examples = task.eval_set() + task.train_batch(seed=3, step=0, batch_size=120)
    fn = rewards.get("countdown")
    for ex in examples:
        assert 3 <= len(ex["nums"]) <= 4 and all(1 <= n <= 99 for n in ex["nums"]) and 1 <= ex["target"] <= 100
        found = solution(ex["nums"], ex["target"])
        assert found is not None, ex
        completion = f"<think>search</think>\n<answer>{found} = {ex['target']}</answer>"
        assert fn([completion], nums=[ex["nums"]], target=[ex["target"]]) == [1.0], (ex, found)


def test_generated_countdown_prompt_and_prefill():
    ex = tasks.get("countdown", eval_size=1).eval_set()[0]
    system, user = ex["prompt"]
    assert system["role"] == "system" and "first think about the reasoning process" in system["content"]
    assert user["role"] == "user"
    assert user["content"].startswith(f"Using the numbers {ex['nums']}, create an equation that equals {ex['target']}.")
    assert "<answer> (1 + 2) / 3 = 1 </answer>" in user["content"]
    assert ex["prefill"] == "Let me solve this step by step.\n<think>"
    assert tasks.get("countdown", eval_size=1).reward_names == ("format", "countdown")


def test_generated_countdown_is_reproducible_from_seeds():
    a, b = tasks.get("countdown", eval_size=50), tasks.get("countdown", eval_size=50)
    assert a.eval_set() == b.eval_set()
    assert a.train_batch(7, 3, 20) == b.train_batch(7, 3, 20)
    assert a.train_example(7, 65) == a.train_batch(7, 3, 20)[5]  # random access = batches
    assert ids(a.train_batch(7, 0, 20)) != ids(a.train_batch(8, 0, 20))
    assert ids(a.eval_set()) != ids(tasks.get("countdown", eval_size=50, split_seed=1).eval_set())
    stream = a.train(7, start=60)
    assert [next(stream) for _ in range(20)] == a.train_batch(7, 3, 20)


def test_generated_countdown_train_never_meets_eval_even_in_a_tiny_space():
    # Numbers 1..4, 3 of them, targets up to 10: few distinct problems, so collisions would be frequent.
    options = dict(min_numbers=3, max_numbers=3, min_number=1, max_number=4, max_target=10, eval_size=30)
    task = tasks.get("countdown", **options)
    eval_ids = ids(task.eval_set())
    assert len(eval_ids) == 30
    train_ids = ids(task.train_batch(0, 0, 600))
    assert not train_ids & eval_ids
    assert len(train_ids) > 10


def test_countdown_bad_options():
    with pytest.raises(ValueError, match="operators"):
        tasks.get("countdown", operators=["**"])
    with pytest.raises(ValueError, match="min_numbers"):
        tasks.get("countdown", min_numbers=1)
    with pytest.raises(ValueError, match="accepted options: source, eval_size"):
        tasks.get("countdown", num_numbers=3)
    with pytest.raises(ValueError, match="unknown task 'countdwn'; known tasks: arithmetic, countdown, gsm8k"):
        tasks.get("countdwn")


# --- countdown (data set) ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [COUNTDOWN_JSONL, COUNTDOWN_PARQUET])
def test_countdown_from_local_file(path, tmp_path):
    task = tasks.get("countdown", source=path, eval_size=3, cache_dir=str(tmp_path))
    eval_set = task.eval_set()
    assert len(eval_set) == 3
    train = task.train_batch(0, 0, 30)  # more than one epoch of the 8-9 remaining rows
    assert not ids(train) & ids(eval_set)
    with open(COUNTDOWN_JSONL) as f:
        rows = [json.loads(line) for line in f]
    all_ids = {f"countdown:{sorted(r['nums'])}->{r['target']}" for r in rows}
    assert ids(train) | ids(eval_set) == all_ids  # duplicates of an eval problem are dropped, nothing else
    for ex in eval_set + train:
        assert solution(ex["nums"], ex["target"]) is not None
        assert ex["prefill"].endswith("<think>") and isinstance(ex["target"], int)
    again = tasks.get("countdown", source=path, eval_size=3, cache_dir=str(tmp_path))
    assert again.eval_set() == eval_set and again.train_batch(0, 0, 30) == train


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_countdown_bad_data(tmp_path):
    cache = str(tmp_path / "cache")
    good = {"nums": [1, 2, 3], "target": 6}
    missing = _write_jsonl(tmp_path / "missing.jsonl", [good, good, {"nums": [4, 5, 6]}, good])
    with pytest.raises(ValueError, match=r"row 2 of .*missing\.jsonl is missing column 'target'"):
        tasks.get("countdown", source=missing, eval_size=1, cache_dir=cache)
    no_column = _write_jsonl(tmp_path / "no_column.jsonl", [{"nums": [1, 2]}])
    with pytest.raises(ValueError, match=r"row 0 of .*no_column\.jsonl is missing column 'target'"):
        tasks.get("countdown", source=no_column, eval_size=1, cache_dir=cache)
    bad_nums = _write_jsonl(tmp_path / "bad_nums.jsonl", [good, {"nums": [1.5, 2, 3], "target": 6}])
    with pytest.raises(ValueError, match=r"row 1 of .*bad_nums\.jsonl, column 'nums'"):
        tasks.get("countdown", source=bad_nums, eval_size=1, cache_dir=cache)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty"):
        tasks.get("countdown", source=str(empty), eval_size=1, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        tasks.get("countdown", source=str(tmp_path / "nowhere.jsonl"), eval_size=1, cache_dir=cache)
    with pytest.raises(ValueError, match="leaves no training problems"):
        tasks.get("countdown", source=_write_jsonl(tmp_path / "one.jsonl", [good, good]), eval_size=1, cache_dir=cache)
    with pytest.raises(ValueError, match="fewer than eval_size=20"):
        tasks.get("countdown", source=COUNTDOWN_JSONL, eval_size=20, cache_dir=cache)


# --- arithmetic --------------------------------------------------------------------------------------------------

def test_arithmetic_default_one_digit_addition_splits_the_100_problems():
    task = tasks.get("arithmetic")
    eval_set = task.eval_set()
    assert len(eval_set) == 50  # default eval_size: half of a space smaller than 400
    train_ids = ids(task.train_batch(0, 0, 2000))
    all_ids = {f"arithmetic:{a} + {b}" for a in range(10) for b in range(10)}
    assert not train_ids & ids(eval_set)
    assert train_ids | ids(eval_set) == all_ids  # every non-eval problem is trained on
    ex = eval_set[0]
    assert ex["prompt"] == [{"role": "user", "content": f"What is {ex['id'][11:]}? Put the final answer in "
                                                        "<answer> </answer> tags."}]
    assert ex["prefill"] is None and task.reward_names == ("arithmetic",)
    assert tasks.get("arithmetic").eval_set() == eval_set
    assert ids(tasks.get("arithmetic", split_seed=1).eval_set()) != ids(eval_set)


def test_arithmetic_eval_too_large_for_the_space():
    with pytest.raises(ValueError, match="only 100 distinct problems; eval_size=100"):
        tasks.get("arithmetic", eval_size=100)
    assert len(tasks.get("arithmetic", eval_size=99).eval_set()) == 99


@pytest.mark.parametrize(
    "options",
    [dict(operators=["+", "-", "*", "/"], digits=1, num_operands=3),  # enumerated
     dict(operators=["+", "-", "*", "/"], digits=2, num_operands=3, eval_size=100)],  # sampled
)
def test_arithmetic_answers_match_an_independent_evaluation(options):
    task = tasks.get("arithmetic", **options)
    examples = task.eval_set() + task.train_batch(1, 0, 200)
    fn = rewards.get("arithmetic")
    for ex in examples:
        expression = ex["id"].removeprefix("arithmetic:")
        assert safe_eval.evaluate(expression) == pytest.approx(ex["answer"], abs=1e-6)
        assert isinstance(ex["answer"], int)
        assert fn([f"<answer>{ex['answer']}</answer>"], answer=[ex["answer"]]) == [1.0]
    assert {op for ex in examples for op in "+-*/" if f" {op} " in ex["id"]} == {"+", "-", "*", "/"}


def test_arithmetic_sampled_space_still_disjoint(monkeypatch):
    monkeypatch.setattr(arithmetic_module, "ENUMERATE_LIMIT", 0)  # force the sampling path on a 100-problem space
    task = tasks.get("arithmetic", eval_size=60)
    eval_ids = ids(task.eval_set())
    assert len(eval_ids) == 60
    train_ids = ids(task.train_batch(0, 0, 500))
    assert not train_ids & eval_ids and len(train_ids) == 40


def test_arithmetic_bad_options():
    with pytest.raises(ValueError, match="operators"):
        tasks.get("arithmetic", operators=["^"])
    with pytest.raises(ValueError, match="digits"):
        tasks.get("arithmetic", digits=0)


# --- gsm8k -------------------------------------------------------------------------------------------------------

def test_gsm8k_from_local_files(tmp_path):
    task = tasks.get("gsm8k", cache_dir=str(tmp_path), **GSM8K)
    eval_set = task.eval_set()
    assert len(eval_set) == 4
    train = task.train_batch(0, 0, 10)
    assert not ids(train) & ids(eval_set)
    assert len(ids(train)) == 5  # the train question that is also a test question is dropped
    fn = rewards.get("gsm8k")
    for ex in eval_set + train:
        system, user = ex["prompt"]
        assert user["content"].startswith(ex["question"]) and "<answer>" in user["content"]
        assert ex["prefill"] == "Let me solve this step by step.\n<think>"
        gold = ex["answer"].rsplit("####", 1)[1].strip()
        assert fn([f"<think>...</think>\n<answer>{gold}</answer>"], answer=[ex["answer"]]) == [1.0]
        assert fn(["<answer>-12345</answer>"], answer=[ex["answer"]]) == [0.0]
    assert task.reward_names == ("format", "gsm8k")
    two = tasks.get("gsm8k", eval_size=2, cache_dir=str(tmp_path), **GSM8K)
    assert two.eval_set() == eval_set[:2] == task.eval_set(2)
    again = tasks.get("gsm8k", eval_size=2, cache_dir=str(tmp_path), **GSM8K)
    assert two.train_batch(5, 2, 4) == again.train_batch(5, 2, 4)
    assert tasks.reward_columns(eval_set[:2], repeat=2) == {
        "question": [eval_set[0]["question"]] * 2 + [eval_set[1]["question"]] * 2,
        "answer": [eval_set[0]["answer"]] * 2 + [eval_set[1]["answer"]] * 2,
    }


def test_gsm8k_bad_data(tmp_path):
    cache = str(tmp_path / "cache")
    good = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}
    no_number = _write_jsonl(tmp_path / "no_number.jsonl", [good, {"question": "Q?", "answer": "It is two."}])
    with pytest.raises(ValueError, match=r"row 1 of .*no_number\.jsonl, column 'answer': .*'#### <number>'"):
        tasks.get("gsm8k", train_file=no_number, test_file=GSM8K["test_file"], cache_dir=cache)
    text_number = _write_jsonl(tmp_path / "text_number.jsonl", [{"question": "Q?", "answer": "#### two"}])
    with pytest.raises(ValueError, match=r"row 0 of .*text_number\.jsonl, column 'answer'"):
        tasks.get("gsm8k", train_file=GSM8K["train_file"], test_file=text_number, cache_dir=cache)
    no_question = _write_jsonl(tmp_path / "no_question.jsonl", [good, good, {"answer": "#### 3"}])
    with pytest.raises(ValueError, match=r"row 2 of .*no_question\.jsonl is missing column 'question'"):
        tasks.get("gsm8k", train_file=no_question, test_file=GSM8K["test_file"], cache_dir=cache)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty"):
        tasks.get("gsm8k", train_file=GSM8K["train_file"], test_file=str(empty), cache_dir=cache)
    with pytest.raises(ValueError, match="both train_file and test_file"):
        tasks.get("gsm8k", train_file=GSM8K["train_file"])
    with pytest.raises(ValueError, match="every training question is also in the eval set"):
        tasks.get("gsm8k", train_file=GSM8K["test_file"], test_file=GSM8K["test_file"], cache_dir=cache)


def test_eval_set_prefix_errors():
    task = tasks.get("arithmetic")
    assert task.eval_set(10) == task.eval_set()[:10]
    with pytest.raises(ValueError, match="cannot take n=51"):
        task.eval_set(51)


def test_arithmetic_spells_its_operators_three_ways():
    kw = dict(operators=("+", "-", "*"), digits=2, num_operands=3, eval_size=20, split_seed=0)
    plain, words, signs = (tasks.get("arithmetic", spelling=s, **kw) for s in ("symbols", "words", "unicode"))
    for i in range(5):
        a, b, c = (t.train_example(0, i) for t in (plain, words, signs))
        assert a["id"] == b["id"] == c["id"] and a["answer"] == b["answer"] == c["answer"]
        q = a["prompt"][-1]["content"]
        assert b["prompt"][-1]["content"] == q.replace(" * ", " times ").replace(" + ", " plus ").replace(
            " - ", " minus ")
        assert c["prompt"][-1]["content"] == q.replace(" * ", " \u00d7 ").replace(" - ", " \u2212 ")
    assert [e["id"] for e in plain.eval_set()] == [e["id"] for e in words.eval_set()]
    with pytest.raises(ValueError, match="spelling must be one of"):
        tasks.get("arithmetic", spelling="roman", **kw)


def test_arithmetic_train_prefills_take_turns_and_eval_keeps_the_prefill():
    kw = dict(operators=("+", "-", "*"), digits=2, num_operands=3, eval_size=20, split_seed=0)
    plain = tasks.get("arithmetic", prefill="<", **kw)
    mixed = tasks.get("arithmetic", prefill="<", train_prefills=("<calc>", ""), **kw)
    got = [mixed.train_example(0, i) for i in range(4)]
    assert [e["prefill"] for e in got] == ["<calc>", "<", "<calc>", "<"]  # '' = the task's prefill
    assert [e["id"] for e in got] == [plain.train_example(0, i)["id"] for i in range(4)]  # the same problems
    assert {e["prefill"] for e in mixed.eval_set()} == {"<"}
    with pytest.raises(ValueError, match="train_prefills must be a sequence of strings"):
        tasks.get("arithmetic", train_prefills="<calc>", **kw)
