"""Finding and parsing the tool call at the end of a model turn, in two formats. Nothing is executed.

    'tag'     <calc>3 * (4 + 5)</calc>                    the body is the raw argument text (any tag name)
    'hermes'  <tool_call>{"name": "calculator", "arguments": {"expression": "3*(4+5)"}}</tool_call>
              (Qwen / Hermes chat templates); arguments may also be a JSON string holding the object

A turn ends at the call's closing tag (the environment's stop string), so the call is the last opening tag of the
turn: `extract(turn, call_format)` looks at that one. A turn without an opening tag has no call (the model
answered). An opening tag without its closing tag (the turn hit its token limit), an oversize body, JSON that does
not parse or lacks "name" / an "arguments" object is a malformed call: `Extracted.error` says why, in one short
line. Bounds: a turn is scanned over its last `MAX_TURN_CHARS` characters, a call body is at most `max_chars`
characters before it is parsed (so json.loads never sees more), and nesting too deep for the JSON parser is a
malformed call, not a crash.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

FORMATS = ("tag", "hermes")
MAX_CALL_CHARS = 4096
MAX_TURN_CHARS = 65536
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


@dataclasses.dataclass(frozen=True)
class Extracted:
    """found: the turn holds a call (an opening tag); then exactly one of call / error is set."""
    found: bool
    call: Optional[ToolCall] = None
    error: Optional[str] = None


NO_CALL = Extracted(False)


def tags(call_format: str, tag: str = "calc") -> tuple[str, str]:
    """The opening and closing tags of a format ('tag' uses `tag`); the closing one is the stop string."""
    if call_format == "tag":
        return f"<{tag}>", f"</{tag}>"
    if call_format == "hermes":
        return HERMES_OPEN, HERMES_CLOSE
    raise ValueError(f"unknown call format {call_format!r}; valid: {', '.join(repr(f) for f in FORMATS)}")


def last_body(turn: str, open_tag: str, close_tag: str, *, max_chars: int = MAX_CALL_CHARS) -> Extracted:
    """The text between the turn's last `open_tag` and the next `close_tag`, as ToolCall(open_tag, {'text': body})."""
    if not isinstance(turn, str):
        return NO_CALL
    turn = turn[-MAX_TURN_CHARS:]
    start = turn.rfind(open_tag)
    if start < 0:
        return NO_CALL
    start += len(open_tag)
    end = turn.find(close_tag, start)
    if end < 0:
        return Extracted(True, error=f"unterminated call: no {close_tag}")
    if end - start > max_chars:
        return Extracted(True, error=f"call too long: {end - start} chars (at most {max_chars})")
    return Extracted(True, ToolCall(open_tag, {"text": turn[start:end]}))


def _json_object(text: str, what: str):
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        return None, f"{what} is not valid JSON ({type(e).__name__})"
    if not isinstance(value, dict):
        return None, f"{what} is not a JSON object"
    return value, None


def parse_hermes(body: str) -> Extracted:
    """A hermes call body (bounded by the caller) -> ToolCall(name, arguments) or a malformed call."""
    value, error = _json_object(body.strip(), "tool call")
    if error:
        return Extracted(True, error=error)
    name, arguments = value.get("name"), value.get("arguments", {})
    if not isinstance(name, str) or not name:
        return Extracted(True, error='tool call has no "name" string')
    if isinstance(arguments, str):
        arguments, error = _json_object(arguments, '"arguments"')
        if error:
            return Extracted(True, error=error)
    if not isinstance(arguments, dict):
        return Extracted(True, error='tool call "arguments" is not an object')
    return Extracted(True, ToolCall(name, arguments))


def extract(turn: str, call_format: str, *, tag: str = "calc", max_chars: int = MAX_CALL_CHARS) -> Extracted:
    """The call at the end of `turn` in `call_format` ('tag': ToolCall(tag, {'text': body}); 'hermes': the JSON's
    name and arguments), NO_CALL, or a malformed call. Never raises for any str turn."""
    open_tag, close_tag = tags(call_format, tag)
    found = last_body(turn, open_tag, close_tag, max_chars=max_chars)
    if found.call is None or call_format == "tag":
        return found if found.call is None else Extracted(True, ToolCall(tag, found.call.arguments))
    return parse_hermes(found.call.arguments["text"])
