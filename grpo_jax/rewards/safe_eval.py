"""A bounded evaluator for + - * / arithmetic written by a model. Nothing is ever executed.

Model output is untrusted: `9**9**9**9`, `__import__('os')`, ten thousand nested parentheses or a 10^300 literal
must each be a wrong answer, not a hang, a crash or a side effect. The evaluator therefore

1. checks the raw text before parsing: at most `max_chars` characters, only digits, `.`, `+ - * /`, parentheses and
   ASCII whitespace (so no names, strings, underscores, exponents `1e9`, complex `1j`), balanced parentheses nested
   at most `max_depth` deep (so `ast.parse` can never hit the parser's or interpreter's recursion limits);
2. parses with `ast.parse(mode="eval")`, which only builds a syntax tree (no constant folding, nothing runs);
3. walks the tree over a whitelist: int/float constants (not bool, not complex), BinOp with Add/Sub/Mult/Div,
   UnaryOp with USub/UAdd. Anything else (Pow, FloorDiv, Mod, Call, Name, Attribute, Lambda, comprehensions...) is
   rejected. The walk stops past `max_depth` levels or `max_nodes` nodes, and every literal and every intermediate
   value must satisfy |x| <= `max_magnitude`; division by zero is invalid.

Every step is linear in the (bounded) input, so each call is bounded in time by construction: no timers, no signals,
no threads. Every failure returns None; no exception escapes `parse_expression`.
"""

from __future__ import annotations

import ast
import dataclasses
import math

MAX_CHARS = 256
MAX_DEPTH = 32
MAX_NODES = 256
MAX_MAGNITUDE = 1e12

_ALLOWED_CHARS = frozenset("0123456789.+-*/() \t\n\r")
_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A valid expression: its value and the numeric literals it uses, in source order."""

    value: float
    numbers: tuple[int | float, ...]


class _Invalid(Exception):
    """Internal: the expression is not a bounded + - * / expression over numbers."""


def _precheck(text: str, max_chars: int, max_depth: int) -> bool:
    if len(text) > max_chars or not text.strip():
        return False
    depth = 0
    for ch in text:
        if ch not in _ALLOWED_CHARS:
            return False
        if ch == "(":
            depth += 1
            if depth > max_depth:
                return False
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


class _Walker:
    def __init__(self, max_depth: int, max_nodes: int, max_magnitude: float):
        self.max_depth, self.max_nodes, self.max_magnitude = max_depth, max_nodes, max_magnitude
        self.nodes = 0
        self.numbers: list[int | float] = []

    def _bounded(self, x):
        # int/float comparison is exact in Python (no OverflowError for huge ints).
        if isinstance(x, float) and not math.isfinite(x):
            raise _Invalid
        if abs(x) > self.max_magnitude:
            raise _Invalid
        return x

    def value(self, node: ast.AST, depth: int):
        self.nodes += 1
        if depth > self.max_depth or self.nodes > self.max_nodes:
            raise _Invalid
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):  # excludes bool, complex, str, bytes, None, Ellipsis
                raise _Invalid
            self.numbers.append(node.value)
            return self._bounded(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left = self.value(node.left, depth + 1)
            right = self.value(node.right, depth + 1)
            if isinstance(node.op, ast.Div) and right == 0:
                raise _Invalid
            return self._bounded(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.value(node.operand, depth + 1)
            return self._bounded(-operand if isinstance(node.op, ast.USub) else operand)
        raise _Invalid


def parse_expression(
    text: str,
    *,
    max_chars: int = MAX_CHARS,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
    max_magnitude: float = MAX_MAGNITUDE,
) -> Parsed | None:
    """Evaluate `text` as + - * / arithmetic over numbers; None if it is anything else or breaks a bound."""
    if not isinstance(text, str) or not _precheck(text, max_chars, max_depth):
        return None
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError):
        return None
    walker = _Walker(max_depth, max_nodes, max_magnitude)
    try:
        value = walker.value(tree.body, 1)
    except (_Invalid, ArithmeticError, RecursionError):
        return None
    return Parsed(value=float(value), numbers=tuple(walker.numbers))


def evaluate(text: str, **bounds) -> float | None:
    """The value of `text` (see `parse_expression`), or None."""
    parsed = parse_expression(text, **bounds)
    return None if parsed is None else parsed.value
