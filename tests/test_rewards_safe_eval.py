"""The expression evaluator: right values, enforced bounds, hostile input, fuzzing, nothing executed."""

import ast
import builtins

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo_jax.rewards import safe_eval
from grpo_jax.rewards.safe_eval import evaluate, parse_expression

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(
    "text, value",
    [
        ("1 + 2", 3.0),
        ("(1 + 2) / 3", 1.0),
        ("44 + 19 + 35", 98.0),
        ("6 / 3 * 4", 8.0),
        ("2 - 3 * 4", -10.0),
        ("-3 + +4", 1.0),
        ("--5", 5.0),
        ("((((7))))", 7.0),
        (" 1.5 * 2 ", 3.0),
        (".5 * 4", 2.0),
        ("1.", 1.0),
        ("1000000 * 1000000", 1e12),  # exactly at the magnitude bound
        ("1\t+\t2", 3.0),
    ],
)
def test_valid_expressions(text, value):
    assert evaluate(text) == pytest.approx(value, rel=1e-12)


def test_numbers_are_reported_in_source_order_with_their_types():
    parsed = parse_expression("(25 - 4.5) * 3 / -2")
    assert parsed.numbers == (25, 4.5, 3, 2)
    assert [type(x) for x in parsed.numbers] == [int, float, int, int]
    assert parsed.value == pytest.approx(-30.75)


@pytest.mark.parametrize(
    "text",
    [
        "9**9**9**9", "2 ** 10", "7 // 2", "7 % 2", "1 << 40", "1 & 1", "1e5", "1E5", "1j", "1 + 2j", "0x10", "1_000",
        "True", "None", "x", "abs(-1)", "__import__('os')", "__import__('os').system('echo hi')",
        "().__class__", "(1).real", "lambda: 1", "[1, 2]", "[x for x in ()]", "{1}", "'1'", "b'1'", "1 if 1 else 2",
        "1 < 2", "not 1", "~1", "...", "1; 2", "1, 2", "(1)(2)", "1 2", "1 +", "", "   ", "()", ")(", "(1", "1)",
        "1 / 0", "1 / (2 - 2)", "0 / 0", "1 / 0.0", "١ + ٢", "1\x00", "1\n+ 2",
    ],
)
def test_everything_else_is_invalid(text):
    assert parse_expression(text) is None


def test_length_bound():
    assert evaluate("1" + " " * (safe_eval.MAX_CHARS - 1)) == 1.0
    assert evaluate("1" + " " * safe_eval.MAX_CHARS) is None
    assert evaluate("1" * 100_000) is None


def test_parenthesis_nesting_bound():
    depth = safe_eval.MAX_DEPTH
    assert evaluate("(" * depth + "1" + ")" * depth) == 1.0
    assert evaluate("(" * (depth + 1) + "1" + ")" * (depth + 1)) is None
    assert evaluate("(" * 10_000 + "1" + ")" * 10_000) is None
    assert evaluate("(" * 10_000) is None


def test_tree_depth_bound():
    # Unary minus and left-deep sums nest in the tree without parentheses.
    assert evaluate("-" * 30 + "1") == 1.0
    assert evaluate("-" * 40 + "1") is None
    assert evaluate("+".join(["1"] * 31)) == 31.0
    assert evaluate("+".join(["1"] * 40)) is None


def test_node_count_bound():
    assert evaluate("1+2+3", max_nodes=5) == 6.0
    assert evaluate("1+2+3+4", max_nodes=5) is None


def test_magnitude_bound_on_literals_and_every_intermediate():
    assert evaluate("1" + "0" * 12) == 1e12
    assert evaluate("1" + "0" * 13) is None
    assert evaluate("1" + "0" * 13 + " - " + "1" + "0" * 13) is None  # final 0, literals too big
    assert evaluate("1000000 * 1000000 * 10 / 10") is None  # final 1e12, intermediate 1e13
    assert evaluate("9" * 250) is None
    assert evaluate("9" * 200 + ".0") is None  # a float literal of 1e200
    assert evaluate("1 / 3", max_magnitude=0.1) is None


def test_adversarial_strings_return_none():
    for text in ["9**9**9**9" * 20, "(" * 200 + ")" * 200, "-(" * 100 + "1" + ")" * 100,
                 "1/" * 100 + "1", "((" * 5000, ")" * 5000, "9" * 4301, "1" + "*9" * 127]:
        assert parse_expression(text) is None


def test_ast_parse_only_sees_short_shallow_text(monkeypatch):
    """Structural bound: whatever the input, ast.parse is called only on <= MAX_CHARS characters whose parentheses
    nest at most MAX_DEPTH deep (the C parser's recursion is bounded by that)."""
    seen = []
    real_parse = ast.parse

    def recording_parse(source, *args, **kwargs):
        seen.append(source)
        return real_parse(source, *args, **kwargs)

    monkeypatch.setattr(safe_eval.ast, "parse", recording_parse)
    for text in ["(" * 10_000 + "1" + ")" * 10_000, "1+" * 5000 + "1", "(1)" * 100, "x" * 10, "((1))", "1 + 2"]:
        parse_expression(text)
    assert seen == ["((1))", "1 + 2"]


# --- Property-based fuzzing --------------------------------------------------------------------------------------

EXPRESSION_ALPHABET = "0123456789+-*/()._ eE jxXabc'\"[]{},:=<>!%&|~^@\\\n"


@FUZZ
@given(st.text(max_size=400))
def test_fuzz_random_text(text):
    result = parse_expression(text)
    assert result is None or isinstance(result.value, float)


@FUZZ
@given(st.text(alphabet=EXPRESSION_ALPHABET, max_size=300))
def test_fuzz_expression_like_text(text):
    result = parse_expression(text)
    if result is not None:
        assert abs(result.value) <= safe_eval.MAX_MAGNITUDE
        assert all(ch in "0123456789.+-*/() \t\n\r" for ch in text)
        assert all(type(x) in (int, float) for x in result.numbers)


@FUZZ
@given(
    st.lists(st.sampled_from(["(", ")", "9", "99", "**", "*", "-", "+", "/", "//", "9**9", " ", ".", "1e9"]),
             max_size=200)
)
def test_fuzz_adversarial_token_soup(tokens):
    text = "".join(tokens)
    result = parse_expression(text)
    if result is not None:
        assert "**" not in text and "//" not in text and "e" not in text


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=20_000), st.sampled_from(["(", "-(", "+", "-", "((-"]))
def test_fuzz_deep_nesting(depth, opener):
    closer = ")" * opener.count("(")
    assert parse_expression(opener * depth + "1" + closer * depth) is None or depth <= safe_eval.MAX_DEPTH


def _trees(operators):
    return st.recursive(
        st.integers(min_value=0, max_value=10**6),
        lambda children: st.one_of(
            st.tuples(st.sampled_from(operators), children, children),
            st.tuples(st.sampled_from(["neg", "pos"]), children),
        ),
        max_leaves=12,
    )


def _render(tree) -> str:
    if isinstance(tree, int):
        return str(tree)
    if len(tree) == 2:
        return ("-" if tree[0] == "neg" else "+") + "(" + _render(tree[1]) + ")"
    return "(" + _render(tree[1]) + f" {tree[0]} " + _render(tree[2]) + ")"


def _depth(tree) -> int:
    return 1 if isinstance(tree, int) else 1 + max(_depth(child) for child in tree[1:])


def _exact(tree):
    """Exact integer value of a + - * tree, or None when any value along the way exceeds the magnitude bound."""
    if isinstance(tree, int):
        value = tree
    elif len(tree) == 2:
        inner = _exact(tree[1])
        value = None if inner is None else (-inner if tree[0] == "neg" else inner)
    else:
        a, b = _exact(tree[1]), _exact(tree[2])
        value = None if a is None or b is None else {"+": a + b, "-": a - b, "*": a * b}[tree[0]]
    return None if value is None or abs(value) > 10**12 else value


@settings(max_examples=1000, deadline=None)
@given(_trees("+-*"))
def test_fuzz_integer_trees_match_exact_reference(tree):
    """Over + - * with integer leaves the evaluator is exact; it refuses exactly when a bound is broken."""
    text = _render(tree)
    expected = _exact(tree)
    within_bounds = len(text) <= safe_eval.MAX_CHARS and _depth(tree) <= safe_eval.MAX_DEPTH
    if within_bounds and expected is not None:
        assert evaluate(text) == float(expected)
    else:
        assert evaluate(text) is None


@settings(max_examples=1000, deadline=None)
@given(_trees("+-*/"))
def test_fuzz_trees_with_division_stay_bounded(tree):
    result = evaluate(_render(tree))
    assert result is None or abs(result) <= safe_eval.MAX_MAGNITUDE


# --- Nothing is ever executed ------------------------------------------------------------------------------------

def test_hostile_strings_leave_no_trace(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("executed")

    real_compile = builtins.compile

    def ast_only_compile(source, filename, mode, flags=0, *args, **kwargs):
        assert flags & ast.PyCF_ONLY_AST, "compile() was asked for bytecode"
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "compile", ast_only_compile)
    hostile = [
        f"__import__('pathlib').Path({str(marker)!r}).write_text('x')",
        f"open({str(marker)!r}, 'w').write('x')",
        "globals().update(PWNED_BY_REWARD=1)",
        "__builtins__.__dict__.update(PWNED_BY_REWARD=1)",
        "(lambda: __import__('os').system('touch " + str(marker) + "'))()",
        "[setattr(__import__('builtins'), 'PWNED_BY_REWARD', 1)]",
        "1 + 1",
    ]
    for text in hostile:
        parse_expression(text)
    assert not marker.exists()
    assert "PWNED_BY_REWARD" not in globals()
    assert not hasattr(builtins, "PWNED_BY_REWARD")
    assert calls == []
