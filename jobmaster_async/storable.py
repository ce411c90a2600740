"""Job data as untrusted input: what PostgreSQL's jsonb can store, and what clients can read back.

jsonb refuses NUL characters and lone UTF-16 surrogates (which JSON text can spell as ``\\u0000``
and ``\\ud800``); NaN and infinities are not JSON; Python refuses to read integers of more than
4,300 digits. Arguments are bounded at insert (in SQL, DESIGN 9.1 "Hostile data bounds"); results,
messages and tracebacks come from task code and are checked here, so that no value a task
returns or raises can make recording its outcome fail, and no row can make reading it fail.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ("UndecodableJSON", "decode_jsonb", "dumps_storable", "sanitize_text", "unstorable_reason")

#: A UTF-16 surrogate without its partner: not UTF-8, refused by jsonb.
_LONE_SURROGATE = re.compile(r"[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")
#: Python's int <-> str limit (sys.int_info.default_max_str_digits).
MAX_DIGITS = 4300
#: How deep the search for an unstorable value goes (json.dumps itself stops near 1,000).
_MAX_SEARCH_DEPTH = 900


class UndecodableJSON(dict[str, Any]):
    """A jsonb value this process cannot decode (inserted before its bounds were checked, or
    written past the library): an empty mapping that says why, so one bad row fails its job
    alone and listings still show it."""

    def __init__(self, text: str, error: BaseException) -> None:
        super().__init__()
        self.text = text
        self.error = f"{type(error).__name__}: {error}"

    def __repr__(self) -> str:
        return f"<undecodable JSON ({len(self.text)} characters): {self.error}>"

    __str__ = __repr__


def decode_jsonb(text: str) -> Any:
    """The jsonb codec's decoder: never raises for the data."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        return UndecodableJSON(text, exc)


def _is_bad_text(text: str) -> bool:
    return "\x00" in text or _LONE_SURROGATE.search(text) is not None


def sanitize_text(text: str) -> str:
    """Text jsonb and text columns can store: NUL and lone surrogates spelled out (\\x00, \\ud800)."""
    if not _is_bad_text(text):
        return text
    text = text.replace("\x00", "\\x00")
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if key.isidentifier():
        return f"{parent}.{key}"
    return f"{parent}[{json.dumps(sanitize_text(key))}]"


def unstorable_reason(value: Any, path: str = "$", depth: int = 0) -> str | None:
    """Where and why ``value`` cannot be stored as jsonb (e.g. ``$.points[2] is NaN``), or None."""
    if depth > _MAX_SEARCH_DEPTH:
        return f"{path} is nested too deeply"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return f"{path} holds a NUL character or a lone surrogate" if _is_bad_text(value) else None
    if isinstance(value, int):
        if value.bit_length() <= 14_000:  # under 4,215 digits: no need to count
            return None
        try:
            str(value)  # refused by Python itself past MAX_DIGITS
        except ValueError:
            return f"{path} is an integer of more than {MAX_DIGITS} digits"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value} (not a JSON number)"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                return f"{path} has a key of type {type(key).__name__} (JSON keys are strings)"
            if isinstance(key, str) and _is_bad_text(key):
                return f"{_path(path, sanitize_text(key))} (a key) holds a NUL character or a lone surrogate"
            if isinstance(key, float) and not math.isfinite(key):
                return f"{path} has the key {key} (not a JSON number)"
            reason = unstorable_reason(item, _path(path, str(key)), depth + 1)
            if reason:
                return reason
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            reason = unstorable_reason(item, _path(path, index), depth + 1)
            if reason:
                return reason
        return None
    return f"{path} is a {type(value).__name__}, which is not JSON"


def dumps_storable(value: Any) -> str | None:
    """``value`` as JSON text jsonb accepts, or None when it cannot be (``unstorable_reason``
    says where). Costs one json.dumps and two substring scans in the common case."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    # json.dumps escapes every non-ASCII character: NUL and surrogates appear as escapes
    if "\\u0000" in text or "\\ud" in text:
        if unstorable_reason(value) is not None:
            return None
    return text
