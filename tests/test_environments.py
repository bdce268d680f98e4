"""Environments as plug-ins (no model): the registry and the `environment` config section, the built-ins
(calculator in both call formats, guess_number) and the tool-call parser."""

import json
import sys
import textwrap

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from grpo_jax import config as config_lib
from grpo_jax import environments, registry, tasks
from grpo_jax.environments import tool_calls

# ---------------------------------------------------------------------------------------------- registry, config


def test_base_config_has_the_environment_section_single_turn_by_default():
    c = config_lib.base_config()
    env = c.environment
    assert env.name == "" and env.observation_role == ""
    for field, kind in (("max_turns", int), ("max_turn_tokens", int), ("max_observation_tokens", int),
                        ("timeout_s", float), ("call_format", str), ("guess_min", int), ("guess_max", int)):
        assert isinstance(env[field], kind), field
    config_lib.validate(c)
    assert {"calculator", "guess_number"} <= set(environments.names())
    assert isinstance(environments.ENVIRONMENTS, registry.Registry)
    with pytest.raises(ValueError, match="single-turn"):
        environments.make(c.environment)


def test_single_turn_runs_keep_their_fingerprint_across_environment_fields():
    a, b = config_lib.base_config(), config_lib.base_config()
    b.environment.max_turns = 9  # no effect while single-turn
    assert "environment" not in config_lib.trajectory_dict(a)
    assert config_lib.fingerprint(a) == config_lib.fingerprint(b)
    b.environment.name = "calculator"
    assert config_lib.fingerprint(a) != config_lib.fingerprint(b)


@pytest.mark.parametrize("field, value, message", [
    ("name", "chess", r"unknown environment.name 'chess'; valid: '', 'none', 'calculator'"),
    ("max_turns", 0, "environment.max_turns must be >= 1, got 0"),
    ("max_observation_tokens", -1, "environment.max_observation_tokens must be >= 0"),
    ("timeout_s", 0.0, "environment.timeout_s must be > 0"),
    ("observation_role", "system", "unknown environment.observation_role 'system'"),
])
def test_validate_names_the_bad_environment_field(field, value, message):
    c = config_lib.base_config()
    c.environment[field] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(c)


def test_the_selected_environments_own_fields_are_validated():
    c = config_lib.base_config()
    c.environment.call_format = "xml"
    config_lib.validate(c)  # not the selected environment: its field is not checked
    c.environment.name = "calculator"
    with pytest.raises(ValueError, match="unknown environment.call_format 'xml'; valid: 'tag', 'hermes'"):
        config_lib.validate(c)
    c.environment.call_format = "hermes"
    config_lib.validate(c)
    assert environments.make(c.environment).stop == ("</tool_call>",)


def _parse(argv, monkeypatch):
    """A config file and --config.* overrides as experiments.train parses them (ml_collections' config flag, which
    reads the overrides from sys.argv)."""
    argv = ["prog", *argv]
    monkeypatch.setattr(sys, "argv", argv)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values)
    values(argv)
    return values.config


def test_command_line_overrides_select_an_environment_and_set_its_fields(tmp_path, monkeypatch):
    path = tmp_path / "exp.py"
    path.write_text("from grpo_jax import config\n\ndef get_config(arg=None):\n    return config.base_config()\n")
    c = _parse([f"--config={path}", "--config.environment.name=calculator",
                "--config.environment.call_format=hermes", "--config.environment.timeout_s=2"], monkeypatch)
    config_lib.validate(c)
    assert (c.environment.name, c.environment.call_format, c.environment.timeout_s) == ("calculator", "hermes", 2.0)
    env = environments.make(c.environment)
    env.reset({})
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2*21"}}</tool_call>'
    assert env.step(call).text == "<tool_response>\n42\n</tool_response>"


@pytest.fixture
def file_env_config(tmp_path):
    path = tmp_path / "my_env_config.py"
    path.write_text(textwrap.dedent('''
        from grpo_jax import config, environments

        @environments.register("echo_test", fields={"echo_prefix": "you said: "}, replace=True)
        class Echo(environments.Environment):
            stop = ("</say>",)

            def reset(self, example):
                self.turns = 0

            def step(self, turn):
                self.turns += 1
                return environments.Observation(self.config.echo_prefix + turn, done=self.turns >= 2)

        def get_config(arg=None):
            c = config.base_config()
            c.environment.name = "echo_test"
            return c
    '''))
    yield str(path)
    environments.ENVIRONMENTS.pop("echo_test", None)


def test_a_config_file_registers_its_own_environment(file_env_config, monkeypatch):
    c = _parse([f"--config={file_env_config}", "--config.environment.echo_prefix=> "], monkeypatch)
    config_lib.validate(c)
    env = environments.make(c.environment)
    env.reset({"id": "x"})
    assert env.step("hi").text == "> hi" and env.stop == ("</say>",) and env.role == "inline"
    assert env.step("again").done
    bad = c.environment.to_dict()
    bad["echo_prefix"] = 3
    with pytest.raises(ValueError, match="environment.echo_prefix must be a string, got 3"):
        registry.validate_section("environment", bad)
    environments.ENVIRONMENTS.pop("echo_test")
    with pytest.raises(ValueError, match="unknown environment.name 'echo_test'"):
        config_lib.validate(c)


def test_environment_config_refuses_unknown_fields():
    assert environments.environment_config("guess_number", guess_max=10).guess_max == 10
    with pytest.raises(ValueError, match="environment config has no field 'guess_maximum'"):
        environments.environment_config("guess_number", guess_maximum=10)


def test_tasks_name_a_default_environment_single_turn_by_default():
    assert tasks.Task.default_environment == ""
    assert tasks.get("arithmetic").default_environment == ""


def test_make_accepts_a_plain_dict():
    env = environments.make(environments.environment_config("guess_number").to_dict())
    env.reset({"secret": 3})
    assert env.step("3").info["solved"]


# ---------------------------------------------------------------------------------------------- calculator


def _calculator(call_format="tag", **fields):
    env = environments.make(environments.environment_config("calculator", call_format=call_format, **fields))
    env.reset({"id": "p0"})
    return env


@pytest.mark.parametrize("expression, value", [("3 * (4 + 5)", "27"), ("((1 + 2) * (3 + (4 - 1)))", "18"),
                                               ("7 / 2", "3.5"), ("-(2 - 10)", "8")])
def test_calculator_tag_format_evaluates(expression, value):
    env = _calculator()
    assert env.stop == ("</calc>",)
    obs = env.step(f"Let me compute. <calc>{expression}</calc>")
    assert obs == environments.Observation(f"<result>{value}</result>", done=False)
    assert env.stats == {"turns": 1, "calls": 1, "parse_errors": 0, "tool_errors": 0}


def test_calculator_turn_without_a_call_ends_the_episode():
    env = _calculator()
    env.step("<calc>1+1</calc>")
    obs = env.step("The answer is <answer>2</answer>")
    assert obs.done and obs.text is None
    assert env.stats == {"turns": 2, "calls": 1, "parse_errors": 0, "tool_errors": 0}
    env.reset({})
    assert env.stats["calls"] == 0


@pytest.mark.parametrize("turn, stat, message", [
    ("<calc>1 / 0</calc>", "tool_errors", "not a bounded arithmetic expression"),
    ("<calc>__import__('os').system('echo hi')</calc>", "tool_errors", "not a bounded arithmetic expression"),
    ("<calc>9**9**9**9</calc>", "tool_errors", "not a bounded arithmetic expression"),
    ("<calc>" + "(" * 200 + "1" + ")" * 200 + "</calc>", "tool_errors", "not a bounded arithmetic expression"),
    ("<calc>" + "1+" * 5000 + "1</calc>", "parse_errors", "call too long"),
    ("<calc>1 + 2", "parse_errors", "unterminated call"),
])
def test_calculator_bad_calls_are_error_observations(turn, stat, message):
    env = _calculator()
    obs = env.step(turn)
    assert obs.text.startswith("<result>error: ") and message in obs.text and not obs.done
    assert env.stats["calls"] == 1 and env.stats[stat] == 1
    assert env.stats["parse_errors"] + env.stats["tool_errors"] == 1


def test_a_one_operation_calculator_refuses_longer_expressions():
    env = _calculator(max_operations=1)
    assert env.step("<calc>12 * 7</calc>").text == "<result>84</result>"
    assert env.step("<calc>-3 + 4</calc>").text == "<result>1</result>"  # a sign is not an operation
    assert env.step("<calc>12 * 7 + 1</calc>").text == "<result>error: at most one operation per call</result>"
    assert env.stats == {"turns": 3, "calls": 3, "parse_errors": 0, "tool_errors": 1}
    assert _calculator(max_operations=2).step("<calc>12 * 7 + 1</calc>").text == "<result>85</result>"
    with pytest.raises(ValueError, match="max_operations must be >= 0"):
        _calculator(max_operations=-1)


def _hermes(name="calculator", **arguments):
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def test_calculator_hermes_format():
    env = _calculator("hermes")
    assert env.stop == ("</tool_call>",)
    assert env.step(_hermes(expression="3*(4+5)")).text == "<tool_response>\n27\n</tool_response>"
    # arguments as a JSON string (OpenAI style), and whitespace / newlines around the JSON
    call = '<tool_call>\n{"name": "calculator", "arguments": "{\\"expression\\": \\"10 / 4\\"}"}\n</tool_call>'
    assert env.step(call).text == "<tool_response>\n2.5\n</tool_response>"
    assert env.stats == {"turns": 2, "calls": 2, "parse_errors": 0, "tool_errors": 0}


@pytest.mark.parametrize("turn, stat, message", [
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"</tool_call>', "parse_errors",
     "not valid JSON"),
    ("<tool_call>[1, 2]</tool_call>", "parse_errors", "not a JSON object"),
    ('<tool_call>{"arguments": {"expression": "1"}}</tool_call>', "parse_errors", 'no "name"'),
    (_hermes(expr="1+1"), "parse_errors", 'no "expression"'),
    ("<tool_call>" + "[" * 3000 + "]" * 3000 + "</tool_call>", "parse_errors", "call too long"),
    ("<tool_call>" + "[" * 2000 + "]" * 2000 + "</tool_call>", "parse_errors", "not"),
    (_hermes(expression="x" * 5000), "parse_errors", "call too long"),
    (_hermes(name="python", expression="1"), "tool_errors", "unknown tool"),
    (_hermes(expression="1/0"), "tool_errors", "not a bounded arithmetic expression"),
    (_hermes(expression="__import__('os')"), "tool_errors", "not a bounded arithmetic expression"),
])
def test_calculator_hermes_malformed_calls(turn, stat, message):
    env = _calculator("hermes")
    obs = env.step(turn)
    assert obs.text.startswith("<tool_response>\nerror: ") and message in obs.text and not obs.done
    assert env.stats["calls"] == 1 and env.stats[stat] == 1


def test_calculator_hermes_in_the_tool_role_is_the_bare_value():
    env = _calculator("hermes", observation_role="tool")
    assert env.role == "tool" and env.step(_hermes(expression="6*7")).text == "42"
    assert _calculator("tag", observation_role="tool").step("<calc>6*7</calc>").text == "<result>42</result>"


def test_tool_call_parser_bounds_and_formats():
    assert tool_calls.extract("no call here", "hermes") == tool_calls.NO_CALL
    assert tool_calls.extract("<calc>1</calc> then <calc>2</calc>", "tag").call.arguments == {"text": "2"}
    assert tool_calls.extract("<calc>1</calc>", "tag").call.name == "calc"
    found = tool_calls.extract(_hermes(expression="1"), "hermes")
    assert found.found and found.call == tool_calls.ToolCall("calculator", {"expression": "1"})
    assert tool_calls.extract("<calc>" + "1" * 100 + "</calc>", "tag", max_chars=10).error.startswith("call too")
    with pytest.raises(ValueError, match="unknown call format 'xml'"):
        tool_calls.extract("x", "xml")


# ---------------------------------------------------------------------------------------------- guess_number


def test_guess_number_episode():
    env = environments.make(environments.environment_config("guess_number", max_turns=6))
    assert env.role == "user" and env.stop == ()
    env.reset({"id": "g", "secret": 37})
    assert env.step("I guess 50").text == "lower"
    assert env.step("hmm, maybe 20?").text == "higher"
    obs = env.step("no number")
    assert obs.text == "Guess an integer between 1 and 100." and not obs.done and not env.solved
    obs = env.step("is it 12 or 37")  # the last number is the guess
    assert obs.text == "correct" and obs.done and obs.info == {"solved": True, "guesses": 4} and env.solved
    assert env.stats == {"turns": 4, "invalid_guesses": 1, "solved": 1}


def test_guess_number_ends_at_max_turns_and_draws_a_secret_per_example():
    config = environments.environment_config("guess_number", max_turns=2, guess_min=1, guess_max=1000)
    env = environments.make(config)
    env.reset({"id": "row-7"})
    other = environments.make(config)
    other.reset({"id": "row-7"})
    assert env.secret == other.secret and 1 <= env.secret <= 1000  # the same game for every row of a group
    secrets = set()
    for i in range(20):
        other.reset({"id": f"row-{i}"})
        secrets.add(other.secret)
    assert len(secrets) > 10
    wrong = env.secret % 1000 + 1
    assert not env.step(str(wrong)).done
    obs = env.step(str(wrong))
    assert obs.done and obs.info["solved"] is False and env.stats["solved"] == 0


def test_guess_number_validates_its_range():
    c = config_lib.base_config()
    c.environment.name = "guess_number"
    c.environment.guess_min = 10
    c.environment.guess_max = 5
    with pytest.raises(ValueError, match=r"environment.guess_min \(10\) must be <= environment.guess_max \(5\)"):
        config_lib.validate(c)


def test_an_environment_config_is_a_plain_config_dict():
    assert isinstance(environments.environment_config(), ml_collections.ConfigDict)


def test_the_readme_environment_example_runs():
    """README's own-environment example, as written, registers an environment that steps."""
    import os
    import re

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if 'register("echo"' in b]
    exec(compile(block, "README.md", "exec"), {})  # the project's own documentation, not model output
    try:
        env = environments.make(environments.environment_config("echo"))
        env.reset({"id": "x"})
        first, second = env.step("hi</say>"), env.step("again</say>")
        assert first.text == "> hi</say>" and not first.done and second.done and env.stop == ("</say>",)
    finally:
        environments.ENVIRONMENTS.pop("echo")
