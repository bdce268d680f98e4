"""Every built-in reward on hand-written right, wrong and hostile completions."""

import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_jax import rewards
from grpo_jax.rewards import symbolic

R1 = "<think>{}</think>\n<answer>{}</answer>"
HOSTILE = [
    "",
    "<answer>__import__('os').system('echo pwned')</answer>",
    "<answer>9**9**9**9</answer>",
    "<answer>" + "(" * 10_000 + "1" + ")" * 10_000 + "</answer>",
    "<answer>" + "9" * 5000 + "</answer>",
    "<answer>1e400</answer>",
    "<answer>" * 50_000,
    "</answer>" * 50_000,
    "1," * 50_000,
    "#### " * 20_000,
    "-" * 100_000 + "1",
    "<think>" * 10_000 + "</think>" * 10_000,
    "\x00\ud800<answer>\u0663</answer>",
]


def score(name, completions, **columns):
    return rewards.get(name)(completions, **columns)


# --- format ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "completion, expected",
    [
        (R1.format("3 + 5 is 8", "8"), 1.0),
        ("  <think>\nreasoning\n</think>  \n\n<answer> 8 </answer>\n", 1.0),
        ("I add them.</think>\n<answer>8</answer>", 1.0),  # prefilled "<think>": completion starts inside it
        ("</think><answer>8</answer>", 1.0),
        ("<think>a</think>\n<answer>8</answer> and more text", 0.0),
        ("Sure! <think>a</think>\n<answer>8</answer>", 0.0),
        ("<think>a</think>\nThe answer: <answer>8</answer>", 0.0),
        ("<answer>8</answer>", 0.0),
        ("<think>a</think>\n<answer>   </answer>", 0.0),
        ("<think>a</think><think>b</think><answer>8</answer>", 0.0),
        ("<think>a<answer>1</answer></think>\n<answer>8</answer>", 0.0),
        ("<answer>8</answer><think>a</think>", 0.0),
        ("<think>a</think>\n<answer>8", 0.0),
        ("<think>a\n<answer>8</answer>", 0.0),
    ],
)
def test_format(completion, expected):
    assert score("format", [completion]) == [expected]


@pytest.mark.parametrize(
    "completion, expected",
    [
        (R1.format("a", "8"), 1.0),
        ("a</think> b", 0.5),  # implicit <think> + </think>
        ("", 0.25),  # only the (prefilled) <think>
        ("a</think></think><answer>1</answer>", 0.75),  # duplicated </think> earns nothing
        ("<answer>5</answer></think>", 0.5),  # answer tags before </think> are out of order
        ("<think><think>", 0.0),
    ],
)
def test_format_partial(completion, expected):
    assert score("format_partial", [completion]) == [expected]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "x", "8", "\n", " "]), max_size=12))
def test_full_format_implies_full_partial_credit(pieces):
    text = "".join(pieces)
    full, partial = score("format", [text])[0], score("format_partial", [text])[0]
    assert partial in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert full == 0.0 or partial == 1.0


# --- countdown ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "answer, nums, target, expected",
    [
        ("44 + 19 + 35", [44, 19, 35], 98, 1.0),
        ("(44 + 19) + 35 = 98", [44, 19, 35], 98, 1.0),
        (" (1 + 2) / 3 = 1 ", [1, 2, 3], 1, 1.0),  # the prompt's own example
        ("35 + 44 + 19", [44, 19, 35], 98, 1.0),  # any order
        ("6 / 3 * 4", [6, 4, 3], 8, 1.0),
        ("9 * (1 / 3)", [1, 3, 9], 3, 1.0),  # non-integer intermediate, float result within 1e-5
        ("(3 - 1 / 1) * 8", [3, 8, 1, 1], 16, 1.0),  # repeated numbers as a multiset
        ("3 * 8 * 1 * 1", [3, 8, 1, 1], 24, 1.0),
        ("44 + 19 - 35", [44, 19, 35], 98, 0.0),  # wrong value
        ("44 + 44 + 10", [44, 19, 35], 98, 0.0),  # reuses a number
        ("44 + 54", [44, 19, 35], 98, 0.0),  # misses numbers
        ("44 + 19 + 35 + 0", [44, 19, 35], 98, 0.0),  # extra number
        ("3 * 8 * 1", [3, 8, 1, 1], 24, 0.0),  # one of the repeated numbers unused
        ("44.0 + 19 + 35", [44, 19, 35], 98, 0.0),  # only the integers given
        ("44 + 19 + 35 = 98 = 98", [44, 19, 35], 98, 0.0),
        ("98", [44, 19, 35], 98, 0.0),
        ("= 98", [44, 19, 35], 98, 0.0),
        ("(44 + 19 + 35) ** 1", [44, 19, 35], 98, 0.0),
        ("44 + 19 + 35 + 0 * 9**9**9**9", [44, 19, 35], 98, 0.0),
        ("__import__('os').system('echo 98')", [44, 19, 35], 98, 0.0),
        ("44 + 19 + 35 if True else 0", [44, 19, 35], 98, 0.0),
    ],
)
def test_countdown(answer, nums, target, expected):
    assert score("countdown", [R1.format("...", answer)], nums=[nums], target=[target]) == [expected]


def test_countdown_uses_the_last_answer_block_and_needs_one():
    nums, target = [[44, 19, 35]] * 3, [98] * 3
    completions = [
        "<answer>1 + 1</answer> then <answer>44 + 19 + 35</answer>",
        "<answer>44 + 19 + 35</answer> then <answer>1 + 1</answer>",
        "44 + 19 + 35 = 98",
    ]
    assert score("countdown", completions, nums=nums, target=target) == [1.0, 0.0, 0.0]


def test_countdown_columns_numpy_broadcast_and_ignored_kwargs():
    fn = rewards.get("countdown")
    good, bad = R1.format("", "44 + 19 + 35"), R1.format("", "44 - 19 + 35")
    assert fn([good, bad], nums=np.array([[44, 19, 35], [44, 19, 35]]), target=np.array([98, 98])) == [1.0, 0.0]
    assert fn([good, bad], nums=[44, 19, 35], target=98) == [1.0, 0.0]  # one problem for all completions
    assert fn([good], nums=[[44, 19, 35]], target=[98.0], prompts=["p"], completion_ids=[[1, 2]], x=object()) == [1.0]
    assert fn([[{"role": "assistant", "content": good}]], nums=[[44, 19, 35]], target=[98]) == [1.0]  # TRL chat form
    with pytest.raises(KeyError, match="'target'"):
        fn([good], nums=[[44, 19, 35]])
    with pytest.raises(ValueError, match="2 entries for 1 completions"):
        fn([good], nums=[[44, 19, 35]], target=[98, 98])
    with pytest.raises(ValueError, match="nums"):
        fn([good], nums=[["44", 19, 35]], target=[98])


@pytest.mark.parametrize("completion", HOSTILE)
def test_countdown_hostile(completion):
    assert score("countdown", [completion], nums=[[1, 2, 3]], target=[6]) == [0.0]


# --- arithmetic and gsm8k ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("<answer>8</answer>", 8, 1.0),
        ("<answer> 8.0 </answer>", 8, 1.0),
        ("<answer>3 + 5 = 8</answer>", 8, 1.0),
        ("The sum of 3 and 5 is 8.", 8, 1.0),  # no tags: last number
        ("<answer>-4</answer>", -4, 1.0),
        ("<answer>9</answer>", 8, 0.0),
        ("<answer>8 + 1</answer>", 8, 0.0),
        ("<answer></answer> so 8", 8, 0.0),  # an empty answer block is the answer
        ("8? No wait, 9", 8, 0.0),
        ("<answer>4</answer>", -4, 0.0),
        ("no number here", 8, 0.0),
    ],
)
def test_arithmetic(completion, answer, expected):
    assert score("arithmetic", [completion], answer=[answer]) == [expected]


@pytest.mark.parametrize("name", ["arithmetic", "gsm8k"])
def test_require_answer_reads_only_the_answer_block(name):
    """A multi-turn episode holds the tool's result: with require_answer it is not read as the model's answer."""
    episode = "12 * 7</calc><result>84</result>"
    fn = rewards.REWARDS.get(name, require_answer=True)
    assert fn([episode, episode + " so <answer>84</answer>", "#### 84"], answer=["84"] * 3) == [0.0, 1.0, 0.0]
    assert rewards.REWARDS.get(name)([episode], answer=["84"]) == [1.0]  # the default reads the last number
    with pytest.raises(ValueError, match="require_answer must be True or False"):
        rewards.REWARDS.get(name, require_answer="yes")


def test_skip_observations_reads_the_models_own_text():
    """skip_observations: the tool's result (the column `observations`) is cut out; the model's last number counts."""
    fn = rewards.REWARDS.get("arithmetic", skip_observations=True)
    episodes = ["12 * 7</calc><result>84</result>", "12 * 7</calc><result>84</result> so 84",
                "0 + 84</calc><result>84</result>"]
    observed = [["<result>84</result>"]] * 3
    assert fn(episodes, answer=[84] * 3, observations=observed) == [0.0, 1.0, 1.0]  # the 3rd wrote 84 itself
    assert fn(episodes[:1], answer=[84]) == [1.0]  # single-turn (no column): nothing to cut
    from grpo_jax.rewards.extract import without_observations
    assert without_observations("a<r>1</r>b<r>1</r>c", ["<r>1</r>", "<r>1</r>"]) == "a b c"
    assert without_observations("a b", ["zz", ""]) == "a b"


def test_arithmetic_bad_answer_column():
    with pytest.raises(ValueError, match="'#### <number>'"):
        score("arithmetic", ["<answer>8</answer>"], answer=["eight"])


SOLUTION = "She sold 48 / 2 = <<48/2=24>>24 clips in May.\nAltogether 48 + 24 = <<48+24=72>>72 clips.\n#### 72"


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("<think>48 + 24</think>\n<answer>72</answer>", SOLUTION, 1.0),
        ("<answer>72.00</answer>", SOLUTION, 1.0),
        ("<answer>72.0</answer>", SOLUTION, 1.0),
        ("<answer>$72</answer>", SOLUTION, 1.0),
        ("<answer>She sold 72 clips.</answer>", SOLUTION, 1.0),
        ("<answer>48 + 24 = 72</answer>", SOLUTION, 1.0),
        ("48 + 24 = 72\n#### 72\nHope that helps! 5 stars", SOLUTION, 1.0),  # '####' before the last number
        ("So the total is 72.", SOLUTION, 1.0),
        ("<answer>1,000</answer>", "#### 1000", 1.0),
        ("<answer>1000</answer>", "Total: 1,000.\n#### 1,000", 1.0),
        ("<answer>$1,000.00</answer>", "#### 1000", 1.0),
        ("<answer>-8</answer>", "3 - 11 = -8\n#### -8", 1.0),
        ("<answer>25%</answer>", "#### 25", 1.0),
        ("<answer>10</answer>", "#### 10.0", 1.0),
        ("<answer>72</answer>", "72", 1.0),  # a bare number is accepted as the reference too
        ("<answer>71</answer>", SOLUTION, 0.0),
        ("<answer>7.2</answer>", SOLUTION, 0.0),
        ("<answer>5</answer> #### 72", SOLUTION, 0.0),  # the answer block wins over '####'
        ("#### 71 and finally 72", SOLUTION, 0.0),
        ("<answer>100</answer>", "#### 1000", 0.0),
        ("<answer>8</answer>", "3 - 11 = -8\n#### -8", 0.0),
        ("<answer>seventy-two</answer>", SOLUTION, 0.0),
        ("", SOLUTION, 0.0),
    ],
)
def test_gsm8k(completion, answer, expected):
    assert score("gsm8k", [completion], answer=[answer]) == [expected]


def test_gsm8k_reference_without_a_number_is_a_clear_error():
    with pytest.raises(ValueError, match="'#### <number>'"):
        score("gsm8k", ["<answer>72</answer>"], answer=["She sold 72 clips."])
    with pytest.raises(ValueError, match="'#### <number>'"):
        score("gsm8k", ["<answer>72</answer>"], answer=["#### seventy"])


@pytest.mark.parametrize("completion", HOSTILE)
def test_numeric_hostile(completion):
    assert score("gsm8k", [completion], answer=["#### 72"]) == [0.0]
    assert score("arithmetic", [completion], answer=[6]) == [0.0]
    assert score("format", [completion]) == [0.0]
    assert score("format_partial", [completion])[0] in (0.0, 0.25, 0.5, 0.75, 1.0)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["", "<answer>", "</answer>", "####", "<think>", "</think>", "="]))
def test_fuzz_no_reward_raises_on_any_text(text, tag):
    completion = tag + text + tag
    for name, columns in [("countdown", {"nums": [[1, 2, 3]], "target": [6]}), ("gsm8k", {"answer": ["#### 6"]}),
                          ("arithmetic", {"answer": [6]}), ("format", {}), ("format_partial", {}),
                          ("overlong", {})]:
        (value,) = score(name, [completion], **columns)
        assert isinstance(value, float) and -1.0 <= value <= 1.0


# --- overlong (DAPO eq. 13) --------------------------------------------------------------------------------------

def test_overlong_hand_computed():
    fn = rewards.get("overlong", max_length=10, buffer_length=4)  # no penalty up to 6 tokens, -1 past 10
    lengths = [0, 6, 7, 8, 9, 10, 11, 500]
    assert fn(["x"] * len(lengths), completion_lengths=lengths) == [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    assert fn(["x", "y"], completion_ids=[[1] * 8, [1] * 3]) == [-0.5, 0.0]
    assert fn(["a b c d e f g", "a b"]) == [-0.25, 0.0]  # words stand in for tokens
    assert rewards.get("overlong")(["x"], completion_lengths=[1024 - 128]) == [-0.5]  # defaults 1024 / 256


def test_overlong_bad_options_and_lengths():
    with pytest.raises(ValueError, match="buffer_length"):
        rewards.get("overlong", max_length=10, buffer_length=11)
    with pytest.raises(ValueError, match="max_length"):
        rewards.get("overlong", max_length=0)
    with pytest.raises(ValueError, match="bad options"):
        rewards.get("overlong", max_len=10)
    with pytest.raises(ValueError, match="non-negative integers"):
        rewards.get("overlong")(["x"], completion_lengths=[-1])


# --- math (optional extra) ---------------------------------------------------------------------------------------

def test_math_reward_needs_the_extra_or_uses_it():
    try:
        import math_verify  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'grpo_jax\[math\]'"):
            rewards.get("math")
        return
    fn = rewards.get("math")
    completions = ["<answer>\\frac{1}{2}</answer>", "<answer>0.5</answer>", "<answer>1/3</answer>",
                   "so the answer is $\\boxed{\\frac{2}{4}}$"]
    assert fn(completions, answer=["\\frac{1}{2}"] * 4) == [1.0, 1.0, 0.0, 1.0]


def test_math_reward_glue_with_a_stand_in_library(monkeypatch):
    """How the reward feeds math-verify: bare answers are boxed, the answer block is preferred."""
    calls = []
    fake = types.ModuleType("math_verify")
    fake.parse = lambda text, **kw: calls.append(text) or [text.replace(" ", "")]
    fake.verify = lambda gold, pred, **kw: gold == pred
    monkeypatch.setitem(sys.modules, "math_verify", fake)
    fn = rewards.get("math")
    result = fn(["<answer>\\frac{1}{2}</answer>", "<answer>2</answer>", "the answer is $\\boxed{\\frac{1}{2}}$"],
                answer=["\\frac{1}{2}", "\\frac{1}{2}", "$\\boxed{\\frac{1}{2}}$"])
    assert result == [1.0, 0.0, 0.0]
    assert calls[:4] == ["\\boxed{\\frac{1}{2}}", "\\boxed{\\frac{1}{2}}", "\\boxed{\\frac{1}{2}}", "\\boxed{2}"]
    assert calls[5] == "the answer is $\\boxed{\\frac{1}{2}}$"
    assert symbolic.INSTALL_HINT.endswith("pip install 'grpo_jax[math]'")
