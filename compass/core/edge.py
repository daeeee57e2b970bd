"""The edge policy for values that reach PostgreSQL, JSON(B), the vector store or the broker.

Pure functions used by every event decoder (:mod:`compass.core.events`): a JSON parser that bounds
numbers and nesting, and the string rule (valid Unicode, no NUL). See ``docs/streaming.md`` for
the reason codes they lead to.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import datetime
from typing import Any

MAX_NUMBER_CHARS = 64
"""Longest JSON number literal any decoder parses (longer → ``invalid_json``)."""
MAX_NESTING = 32
"""Deepest nesting of lists and objects inside any event field."""
METADATA_MAX_DEPTH = 8
METADATA_MAX_KEYS = 256


def loads_json(text: str) -> Any:
    """Parse JSON under the edge policy; raises :class:`ValueError` (or its subclass
    :class:`json.JSONDecodeError`) for malformed JSON, a number longer than
    :data:`MAX_NUMBER_CHARS` or not finite, and nesting deeper than Python can parse."""
    if text.startswith("\ufeff"):  # what json.loads says, before the shared decoder
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise ValueError(f"a JSON number of {len(literal)} digits (limit {MAX_NUMBER_CHARS})")
    return int(literal)


def _parse_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise ValueError(f"a JSON number of {len(literal)} characters (limit {MAX_NUMBER_CHARS})")
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"JSON number {literal[:20]!r} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_no_constant
)
"""One decoder for every message (``json.loads`` with hooks builds one per call)."""


def string_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as it is (NUL, invalid Unicode), or ``None``."""
    if "\x00" in value:
        return "contains NUL (U+0000), which PostgreSQL text and jsonb cannot hold"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode (lone surrogate at position {exc.start})"
    return None


_CONTROL = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""C0 controls other than TAB, LF, CR; DEL; C1 controls (NUL is :func:`string_problem`'s)."""
INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
"""Characters classed as letters or symbols that render as nothing (Hangul fillers, the blank
Braille pattern): a text made only of them and of separators/format characters is empty."""
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Mn", "Me"})


def control_problem(value: str) -> str | None:
    """Why ``value`` is not a clean single-field string (a control character such as ESC or
    BEL, which terminals and log viewers interpret), or ``None``. TAB, LF and CR are allowed."""
    match = _CONTROL.search(value)
    if match is None:
        return None
    return f"contains control character U+{ord(match.group()):04X} at position {match.start()}"


def is_visibly_empty(value: str) -> bool:
    """True when ``value`` shows nothing: only whitespace, zero-width and format characters
    (U+200B, U+200D, U+2060, U+FEFF …), combining marks with no base, controls, unassigned
    code points or :data:`INVISIBLE_LETTERS` (Unicode general categories Z*, Cc, Cf, Cs, Mn, Me).

    Stops at the first visible character; printable ASCII other than the space is visible
    without a Unicode lookup (every prompt is checked, and most start with one)."""
    for c in value:
        if c < "\x7f":
            if c > " ":
                return False
        elif not (
            c.isspace()
            or c in INVISIBLE_LETTERS
            or unicodedata.category(c) in _INVISIBLE_CATEGORIES
        ):
            return False
    return True


def clean_string(value: str) -> str:
    """``value`` with NUL and lone surrogates replaced by U+FFFD (for text we must keep, such as
    sample texts stored before the edge policy, and error details)."""
    if string_problem(value) is None:
        return value
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in value)


def check_value(value: Any, where: str = "value") -> Any:
    """Raise :class:`ValueError` for a string that breaks the policy or a non-finite float,
    anywhere inside ``value`` (lists and dicts, keys included); returns ``value``."""
    if isinstance(value, str):  # the common case (every event field), without the walk
        problem = string_problem(value)
        if problem:
            raise ValueError(f"{where} {problem}")
        return value
    if value is None or isinstance(value, int | datetime):
        return value
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ValueError(f"{where} is nested deeper than {MAX_NESTING} levels")
        if isinstance(node, str):
            problem = string_problem(node)
            if problem:
                raise ValueError(f"{where} {problem}")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValueError(f"{where} is not a finite number")
        elif isinstance(node, list | tuple):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, dict):
            stack.extend((key, depth + 1) for key in node)
            stack.extend((item, depth + 1) for item in node.values())
    return value


def check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    keys = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > METADATA_MAX_DEPTH:
            raise ValueError(f"metadata nested deeper than {METADATA_MAX_DEPTH} levels")
        if isinstance(node, dict):
            keys += len(node)
            if keys > METADATA_MAX_KEYS:
                raise ValueError(f"metadata has more than {METADATA_MAX_KEYS} keys")
            stack.extend((item, depth + 1) for item in node.values())
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
    return check_value(value, "metadata")
