"""Environment 'calculator': the model calls a calculator tool; the observation is the value of the expression.

    environment.call_format = 'tag'      <calc>3 * (4 + 5)</calc>  ->  <result>27</result>      (stop "</calc>")
    environment.call_format = 'hermes'   <tool_call>{"name": "calculator", "arguments": {"expression": "3*(4+5)"}}
                                         </tool_call>  ->  <tool_response>\n27\n</tool_response>  (stop "</tool_call>")

With observation_role 'tool' or 'user' a hermes observation is the bare value (the chat template's tool turn wraps
it in <tool_response>); 'tag' observations keep their <result> tags in every role. A turn with no call ends the
episode (the model answered). The expression is evaluated by `grpo_jax.rewards.safe_eval` (+ - * / over numbers,
bounded in length, depth and magnitude; nothing is executed), so a step is bounded by construction and never
blocks. A malformed call (unterminated, oversize, bad JSON, no "expression") is a parse error, a call that parses
but cannot be computed (not arithmetic, division by zero, out of bounds, another tool's name) a tool error: both
answer with an error observation and the episode goes on.

environment.max_operations > 0 bounds the operations of one call (1: a one-operation calculator, `12 * 7`; a
longer expression is a tool error saying so), so a model must order several calls.

stats (per episode): turns, calls, parse_errors, tool_errors; the share of calls that parse is
1 - parse_errors / calls.
"""

from __future__ import annotations

from grpo_jax.environments import tool_calls
from grpo_jax.environments.base import Environment, Observation, register
from grpo_jax.rewards import safe_eval

TOOL_NAME = "calculator"
TAG = "calc"
EXPRESSION_ERROR = ("error: not a bounded arithmetic expression (numbers, + - * /, parentheses; no division by "
                    "zero)")


def _validate(section) -> None:
    if section["max_operations"] < 0:
        raise ValueError(f"environment.max_operations must be >= 0 (0 = any), got {section['max_operations']!r}")
    if section["call_format"] not in tool_calls.FORMATS:
        raise ValueError(f"unknown environment.call_format {section['call_format']!r}; valid: "
                         f"{', '.join(repr(f) for f in tool_calls.FORMATS)}")


def format_value(value: float) -> str:
    """27.0 -> '27'; other values with 12 significant digits."""
    return str(int(value)) if float(value).is_integer() else format(value, ".12g")


@register("calculator", fields={"call_format": "tag", "max_operations": 0}, validate=_validate)
class Calculator(Environment):
    def __init__(self, config=None):
        super().__init__(config)
        self.call_format = self.config["call_format"]
        self.max_operations = int(self.config["max_operations"])
        self.stop = (tool_calls.tags(self.call_format, TAG)[1],)
        self.reset({})

    def reset(self, example: dict) -> None:
        self.stats = {"turns": 0, "calls": 0, "parse_errors": 0, "tool_errors": 0}

    def _wrap(self, text: str) -> str:
        if self.call_format == "tag":
            return f"<result>{text}</result>"
        return f"<tool_response>\n{text}\n</tool_response>" if self.role == "inline" else text

    def step(self, turn: str) -> Observation:
        self.stats["turns"] += 1
        found = tool_calls.extract(turn, self.call_format, tag=TAG)
        if not found.found:
            return Observation(None, done=True)
        self.stats["calls"] += 1
        if found.error is not None:
            self.stats["parse_errors"] += 1
            return Observation(self._wrap(f"error: {found.error}"))
        call = found.call
        if self.call_format == "hermes":
            expression = call.arguments.get("expression")
            if not isinstance(expression, str):
                self.stats["parse_errors"] += 1
                return Observation(self._wrap('error: the call has no "expression" string argument'))
            if call.name != TOOL_NAME:
                self.stats["tool_errors"] += 1
                return Observation(self._wrap(f"error: unknown tool (the tool is {TOOL_NAME!r})"))
        else:
            expression = call.arguments["text"]
        parsed = safe_eval.parse_expression(expression)
        if parsed is None:
            self.stats["tool_errors"] += 1
            return Observation(self._wrap(EXPRESSION_ERROR))
        if self.max_operations and len(parsed.numbers) - 1 > self.max_operations:
            self.stats["tool_errors"] += 1
            many = "one operation" if self.max_operations == 1 else f"{self.max_operations} operations"
            return Observation(self._wrap(f"error: at most {many} per call"))
        return Observation(self._wrap(format_value(parsed.value)))
