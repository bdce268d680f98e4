"""The reward registry and the weighted combiner (robust to rewards that raise)."""

import math

import numpy as np
import pytest

from grpo_jax import rewards
from grpo_jax.rewards.registry import Registry

R1 = "<think>{}</think>\n<answer>{}</answer>"


def test_names_and_unknown_name():
    assert {"format", "format_partial", "countdown", "arithmetic", "gsm8k", "math", "overlong"} <= set(rewards.names())
    with pytest.raises(ValueError) as info:
        rewards.get("countdwn")
    assert "countdwn" in str(info.value) and "countdown, format" in str(info.value)


def test_register_factory_and_plain_function():
    registry = Registry("reward")

    @registry.register("scaled_length")
    def scaled_length(scale: float = 1.0):
        return lambda completions, **_: [scale * len(c) for c in completions]

    @registry.register("constant", factory=False)
    def constant(completions, **_):
        return [0.5] * len(completions)

    assert registry.get("scaled_length")(["ab", "c"]) == [2.0, 1.0]
    assert registry.get("scaled_length", scale=0.5)(["ab"]) == [1.0]
    assert registry.get("constant")(["a", "b"], prompts=["p", "q"]) == [0.5, 0.5]
    with pytest.raises(ValueError, match="accepted options: scale"):
        registry.get("scaled_length", sclae=2)
    with pytest.raises(ValueError, match="accepted options: \\(none\\)"):
        registry.get("constant", scale=2)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("constant")(constant)
    assert registry.names() == ["constant", "scaled_length"]


def test_global_register_decorator():
    @rewards.register("test_combine_says_hi", factory=False)
    def says_hi(completions, **_):
        return [1.0 if "hi" in c else 0.0 for c in completions]

    assert "test_combine_says_hi" in rewards.names()
    total, per, errors = rewards.combine({"test_combine_says_hi": 2.0})(["hi", "no"])
    np.testing.assert_array_equal(total, [2.0, 0.0])


def test_every_builtin_reward_takes_trl_keyword_arguments():
    completions = [R1.format("1 + 2 + 3", "6"), "nothing"]
    columns = dict(nums=[[1, 2, 3]] * 2, target=[6, 6], answer=["#### 6", "#### 6"], prompts=["p", "q"],
                   completion_ids=[[1, 2, 3], [4]], trainer_state=None)
    for name in rewards.names():
        if name == "math" or name.startswith("test_"):
            continue
        out = rewards.get(name)(completions, **columns)
        assert isinstance(out, list) and len(out) == 2 and all(isinstance(v, float) for v in out), name
        assert out[0] >= out[1], name


def test_combine_weighted_sum_hand_computed():
    combined = rewards.combine({"format": 0.5, "countdown": 1.0, "overlong": 2.0},
                               options={"overlong": {"max_length": 10, "buffer_length": 4}})
    completions = [R1.format("a", "44 + 19 + 35"), "<answer>44 + 19 + 35</answer>", R1.format("a", "1")]
    total, per, errors = combined(completions, nums=[[44, 19, 35]] * 3, target=[98] * 3, completion_lengths=[3, 8, 10])
    np.testing.assert_array_equal(per["format"], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(per["countdown"], [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(per["overlong"], [0.0, -0.5, -1.0])
    np.testing.assert_allclose(total, [1.5, 0.0, -1.5])
    assert total.dtype == np.float32 and per["format"].dtype == np.float32
    assert errors == {"format": 0, "countdown": 0, "overlong": 0}


def test_combine_isolates_a_raising_completion():
    registry_name = "test_combine_explodes"

    @rewards.register(registry_name, factory=False)
    def explodes(completions, answer, **_):
        out = []
        for c, a in zip(completions, answer):
            if "boom" in c:
                raise RuntimeError("boom")
            out.append(float(a))
        return out

    combined = rewards.combine({registry_name: 1.0, "format": 1.0})
    total, per, errors = combined(["ok", "boom", R1.format("", "x")], answer=[0.25, 0.5, 0.75])
    np.testing.assert_array_equal(per[registry_name], [0.25, 0.0, 0.75])
    np.testing.assert_array_equal(per["format"], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(total, [0.25, 0.0, 1.75])
    assert errors == {registry_name: 1, "format": 0}


def test_combine_bad_outputs():
    @rewards.register("test_combine_odd_outputs", factory=False)
    def odd(completions, **_):
        table = {"none": None, "nan": math.nan, "inf": math.inf, "one": 1, "true": True}
        if "wrong_length" in completions:
            return [1.0]
        if "text" in completions:
            return ["high"] * len(completions)
        return [table[c] for c in completions]

    combined = rewards.combine({"test_combine_odd_outputs": 1.0})
    _, per, errors = combined(["none", "nan", "inf", "one", "true"])
    np.testing.assert_array_equal(per["test_combine_odd_outputs"], [0.0, 0.0, 0.0, 1.0, 1.0])
    assert errors == {"test_combine_odd_outputs": 2}  # None is "not applicable", NaN/inf are errors
    _, per, errors = combined(["one", "wrong_length"])  # batch call has the wrong length: retried one by one
    np.testing.assert_array_equal(per["test_combine_odd_outputs"], [1.0, 1.0])
    assert errors == {"test_combine_odd_outputs": 0}
    _, per, errors = combined(["text", "one"])
    assert errors == {"test_combine_odd_outputs": 1}


def test_combine_config_errors():
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        rewards.combine({"nope": 1.0})
    with pytest.raises(ValueError, match="finite number"):
        rewards.combine({"format": float("nan")})
    with pytest.raises(ValueError, match="not in the weights"):
        rewards.combine({"format": 1.0}, options={"overlong": {"max_length": 5}})


def test_combine_missing_column_counts_every_completion_as_an_error():
    total, per, errors = rewards.combine({"countdown": 1.0, "format": 1.0})([R1.format("", "1"), "x"])
    assert errors == {"countdown": 2, "format": 0}
    np.testing.assert_array_equal(total, [1.0, 0.0])


def test_combine_accepts_config_dicts():
    import ml_collections

    weights = ml_collections.ConfigDict({"format": 0.5, "overlong": 1.0})
    options = ml_collections.ConfigDict({"overlong": {"max_length": 10, "buffer_length": 4}})
    total, _, _ = rewards.combine(weights, options)(["</think><answer>1</answer>"], completion_lengths=[8])
    np.testing.assert_array_equal(total, [0.0])  # 0.5 * 1.0 + 1.0 * (-0.5)
