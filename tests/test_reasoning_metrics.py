"""Eval metrics that show reasoning (issue 19): the intermediate values of an arithmetic problem by hand, the share
of completions stating one before the final answer, the mean length of the correct completions, and the arithmetic
task's step-by-step prompt and prefill."""

import types

import jax
import numpy as np
import pytest

from grpo_jax import evaluation, rewards, tasks
from grpo_jax.tasks import arithmetic as arithmetic_module
from grpo_jax.tasks.arithmetic import STEPS_INSTRUCTION, intermediate_values
from grpo_jax.tasks.eval_metrics import MAX_SCANNED_CHARS, intermediate_rate


@pytest.mark.parametrize("problem, want", [
    (((4, 2, 2), ("-", "*")), (4,)),            # 2 * 2 = 4, then 4 - 4 = 0 (the answer)
    (((7, 8, 4), ("+", "-")), (15,)),           # 7 + 8 = 15, 15 - 4 = 11
    (((2, 3, 4), ("*", "*")), (6,)),            # 2 * 3 = 6, 6 * 4 = 24
    (((2, 3, 4, 1), ("*", "*", "+")), (6, 24)),  # 6, 24, then 24 + 1 = 25
    (((6, 3, 5), ("/", "+")), (2,)),            # 6 / 3 = 2, 2 + 5 = 7
    (((3, 2, 5), ("/", "+")), ()),              # 3 / 2 is not an integer; 3/2 + 5 is not either (not drawn)
    (((5, 5, 0), ("-", "+")), ()),              # 5 - 5 = 0 = 0 + 0: equal to the answer, left out
    (((3, 4), ("+",)), ()),                     # one operation: nothing on the way
    (((9, 1, 2, 3), ("-", "*", "+")), (2, 7)),   # 1 * 2 = 2, 9 - 2 = 7, 7 + 3 = 10
])
def test_intermediate_values_by_hand(problem, want):
    assert intermediate_values(problem) == want


def test_intermediate_rate_counts_a_stated_result_before_the_answer():
    ex = {"answer": 0, "intermediates": (4,)}
    assert intermediate_rate("2 * 2 = 4, so 4 - 4 = 0. <answer>0</answer>", ex) == 1.0
    assert intermediate_rate("2*2 =4 then <answer>0</answer>", ex) == 1.0
    assert intermediate_rate("4 - 2 * 2 <answer>0</answer>", ex) == 0.0          # restating the problem
    assert intermediate_rate("4 - 2 * 2 = 0 <answer>0</answer>", ex) == 0.0      # one jump to the answer
    assert intermediate_rate("<answer>0</answer> 2 * 2 = 4", ex) == 0.0          # after the answer
    assert intermediate_rate("2 * 2 = 44 <answer>0</answer>", ex) == 0.0         # not the value
    assert intermediate_rate("2 * 2 = 4", ex) == 1.0                             # no answer tag: anywhere
    assert intermediate_rate("x" * MAX_SCANNED_CHARS + "= 4", ex) == 0.0         # bounded scan
    assert intermediate_rate("2 * 2 = 4", {"answer": 3, "intermediates": ()}) == 0.0
    assert intermediate_rate("= -6 <answer>1</answer>", {"intermediates": (-6,)}) == 1.0


def test_the_steps_prompt_prefill_and_columns():
    plain = tasks.get("arithmetic", operators=("+", "-", "*"), num_operands=3, eval_size=20)
    steps = tasks.get("arithmetic", operators=("+", "-", "*"), num_operands=3, eval_size=20, steps=True,
                      prefill="Step 1:")
    a, b = plain.eval_set()[0], steps.eval_set()[0]
    assert a["id"] == b["id"] and a["answer"] == b["answer"] and a["intermediates"] == b["intermediates"]
    assert a["prefill"] is None and b["prefill"] == "Step 1:"
    assert STEPS_INSTRUCTION in b["prompt"][-1]["content"] and STEPS_INSTRUCTION not in a["prompt"][-1]["content"]
    assert set(plain.eval_metrics) == {"answer_rate", "intermediate_rate"}
    assert set(tasks.get("arithmetic").eval_metrics) == {"answer_rate"}  # two operands: no intermediate results
    # the extra column reaches the rewards as a TRL column and changes nothing there
    reward = rewards.combine({"arithmetic": 1.0})
    cols = {"answer": [a["answer"]], "intermediates": [a["intermediates"]]}
    assert reward([f"<answer>{a['answer']}</answer>"], **cols)[0][0] == 1.0
    with pytest.raises(ValueError, match="steps must be a bool"):
        tasks.get("arithmetic", steps="yes")
    assert tasks.get("arithmetic", prefill=None).eval_set()[0]["prefill"] is None  # a config's '' arrives as None


def count(example) -> int:
    return len(example["id"].split(":", 1)[1].split()) // 2 + 1


@pytest.mark.parametrize("digits", [1, 3])  # an enumerated pool of each count, and sampled problems
def test_a_curriculum_mix_trains_on_each_count_and_evaluates_on_num_operands(digits):
    ops = ("+", "-", "*")
    mixed = tasks.get("arithmetic", operators=ops, digits=digits, num_operands=3, eval_size=50, train_operands=(2, 3))
    alone = tasks.get("arithmetic", operators=ops, digits=digits, num_operands=3, eval_size=50)
    assert mixed.eval_set() == alone.eval_set() and {count(e) for e in mixed.eval_set()} == {3}
    drawn = [mixed.train_example(0, i) for i in range(400)]
    counts = [count(e) for e in drawn]
    assert 150 < counts.count(2) < 250 and counts.count(2) + counts.count(3) == 400
    held_out = {e["id"] for e in mixed.eval_set()}
    assert not held_out & {e["id"] for e in drawn}
    for e in drawn:  # the columns are the drawn problem's own
        assert e["answer"] == int(arithmetic_module.value_of(parse(e["id"])))
    # a single count keeps the stream of a task without the option
    same = tasks.get("arithmetic", operators=ops, digits=digits, num_operands=3, eval_size=50, train_operands=(3,))
    assert [same.train_example(0, i) for i in range(20)] == [alone.train_example(0, i) for i in range(20)]
    with pytest.raises(ValueError, match="train_operands must each be in 2..8"):
        tasks.get("arithmetic", train_operands=(1, 2))


def parse(example_id: str):
    tokens = example_id.split(":", 1)[1].split()
    return tuple(int(x) for x in tokens[::2]), tuple(tokens[1::2])


class _StubSampler:
    """An evaluation.Sampler stand-in that 'completes' each prompt with a fixed text of a fixed length."""

    def __init__(self, replies: dict):
        self.replies = replies
        self.mesh = types.SimpleNamespace(shape={"data": 1, "fsdp": 1})
        self.environment = None  # single-turn

    def sample(self, params, examples, key, *, group_size, max_new_tokens, greedy=False, **_):
        texts = [self.replies[ex["id"]][0] for ex in examples for _ in range(group_size)]
        lengths = np.asarray([self.replies[ex["id"]][1] for ex in examples for _ in range(group_size)])
        return None, None, evaluation.Completions(0, texts, lengths, np.zeros(len(texts), bool))


def test_evaluate_logs_the_length_of_correct_answers_and_the_intermediate_rate():
    task = tasks.get("arithmetic", operators=("+", "-", "*"), num_operands=3, eval_size=4)
    examples = task.eval_set()
    replies = {}
    for i, ex in enumerate(examples):
        steps = f"= {ex['intermediates'][0]} " if ex["intermediates"] and i < 2 else ""
        answer = ex["answer"] if i != 1 else ex["answer"] + 1      # example 1 is wrong
        replies[ex["id"]] = (f"{steps}<answer>{answer}</answer>", 10 * (i + 1))
    config = types.SimpleNamespace(eval=types.SimpleNamespace(batch_size=4, max_new_tokens=8, pass_k=0,
                                                              num_samples=0, temperature=1.0),
                                   rollout=types.SimpleNamespace(max_new_tokens=8, top_p=1.0, top_k=0))
    fn = rewards.combine({"arithmetic": 1.0})
    result = evaluation.evaluate(_StubSampler(replies), None, examples, jax.random.PRNGKey(0), reward_fn=fn, accuracy_fn=fn,
                                 config=config, num_samples_shown=0, eval_metrics=task.eval_metrics)
    m = result.metrics
    assert m["eval/accuracy"] == 0.75 and m["eval/mean_length"] == 25.0
    assert m["eval/mean_length_correct"] == pytest.approx((10 + 30 + 40) / 3)
    with_steps = sum(1 for i, ex in enumerate(examples) if ex["intermediates"] and i < 2)
    assert m["eval/intermediate_rate"] == with_steps / 4 and with_steps >= 1
    assert m["eval/answer_rate"] == 1.0
    wrong = {k: (f"<answer>{ex['answer'] + 1}</answer>", 5) for k, ex in zip(replies, examples)}
    none_right = evaluation.evaluate(_StubSampler(wrong), None, examples, jax.random.PRNGKey(0), reward_fn=fn, accuracy_fn=fn,
                                     config=config, num_samples_shown=0, eval_metrics=task.eval_metrics)
    assert none_right.metrics["eval/accuracy"] == 0.0 and none_right.metrics["eval/mean_length_correct"] == 0.0
