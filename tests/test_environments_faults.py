"""Fault handling of environment steps (no model): a raise, a step past its timeout and an oversize observation
each become a bounded observation, counted, never a crash; token-level truncation."""

import time

import pytest

from grpo_jax import environments
from grpo_jax.environments import faults


class Scripted(environments.Environment):
    """An environment whose step runs `action`."""

    def __init__(self, action):
        super().__init__()
        self.action = action

    def reset(self, example):
        pass

    def step(self, turn):
        return self.action(turn)


def _raise(turn):
    raise ValueError("bad input " + "x" * 10_000)


def test_a_raise_becomes_a_bounded_error_observation():
    out = environments.safe_step(Scripted(_raise), "t", timeout_s=5.0, max_chars=4096)
    assert out.fault == "error" and not out.observation.done
    assert out.observation.text.startswith("error: ValueError: bad input xxx")
    assert len(out.observation.text) <= faults.ERROR_CHARS and "[truncated" in out.observation.text


def test_a_step_past_its_timeout_returns_in_time():
    start = time.perf_counter()
    out = environments.safe_step(Scripted(lambda turn: time.sleep(2.0)), "t", timeout_s=0.2, max_chars=4096)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.5 and out.fault == "timeout" and out.seconds < 1.5
    assert out.observation.done and out.observation.text.startswith("error: timeout")


def test_an_oversize_observation_is_cut_and_counted():
    big = "y" * 10_000_000
    out = environments.safe_step(Scripted(lambda turn: environments.Observation(big, info={"k": 1})), "t",
                                 timeout_s=5.0, max_chars=4096)
    assert out.fault == "oversize" and len(out.observation.text) <= 4096
    assert out.observation.text.endswith(f"...[truncated {10_000_000 - out.observation.text.index('.')} chars]")
    assert out.observation.info == {"k": 1}


def test_a_wrong_return_type_is_an_error_and_a_good_step_passes_through():
    out = environments.safe_step(Scripted(lambda turn: "plain string"), "t", timeout_s=5.0, max_chars=100)
    assert out.fault == "error" and "not an Observation" in out.observation.text
    good = environments.Observation("ok", done=True)
    out = environments.safe_step(Scripted(lambda turn: good), "t", timeout_s=5.0, max_chars=100)
    assert out.fault is None and out.observation == good


def test_safe_step_wraps_a_built_in():
    env = environments.make(environments.environment_config("calculator"))
    env.reset({})
    out = environments.safe_step(env, "<calc>2+2</calc>", timeout_s=5.0, max_chars=1024)
    assert (out.observation.text, out.fault) == ("<result>4</result>", None)


def test_max_observation_chars_does_not_cut_below_the_token_limit():
    c = environments.environment_config(max_observation_tokens=256)
    assert environments.max_observation_chars(c) >= 16 * 256


@pytest.mark.parametrize("ids, max_tokens, marker, out, cut", [
    ([1, 2, 3], 3, [9], [1, 2, 3], False),
    ([1, 2, 3, 4, 5], 4, [9], [1, 2, 3, 9], True),
    ([1, 2, 3, 4, 5], 4, [], [1, 2, 3, 4], True),
    ([1, 2, 3, 4, 5], 2, [8, 9, 7], [8, 9], True),
    ([], 0, [9], [], False),
])
def test_truncate_tokens(ids, max_tokens, marker, out, cut):
    assert environments.truncate_tokens(ids, max_tokens, marker) == (out, cut)


def test_truncate_text():
    assert environments.truncate_text("abc", 3) == ("abc", False)
    text, cut = environments.truncate_text("z" * 1000, 100)
    assert cut and len(text) <= 100 and text.endswith(f"...[truncated {1000 - text.count('z')} chars]")
