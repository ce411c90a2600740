"""Outcomes bounded before they are sent (DESIGN 9.1 "Hostile data bounds").

A **result** whose JSON is longer than ``max_result_bytes`` (a setting, 4 MiB by default) fails
its job for good, saying its size and the limit. An exception's **message** (``MAX_MESSAGE_BYTES``)
and **traceback** (``MAX_TRACEBACK_BYTES``) are cut to their limit with a note
(``… [truncated: N bytes]``); that is never a reason to fail the recording, and the retry decision
does not change. The message is cut before the traceback is formatted, so that formatting costs
the same for a message of 50 MB as for one of 64 KiB.

Serialising a large result or formatting a large exception takes seconds: it happens where the
task ran (its thread, its process), or, for an async task, in a thread when a cheap look at the
value says it may be large (``small_value``, ``formats_quickly``). Small outcomes, the common case,
are settled on the event loop without a thread hop.
"""

from __future__ import annotations

import traceback
import types
from dataclasses import dataclass
from typing import Any

from ..settings import DEFAULT_MAX_RESULT_BYTES
from ..storable import sanitize_text

__all__ = (
    "DEFAULT_MAX_RESULT_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_TRACEBACK_BYTES",
    "OutcomeLimits",
    "failure_texts",
    "formats_quickly",
    "small_value",
    "truncated",
)

#: An exception's message is kept up to this many bytes (UTF-8), then cut with a note.
MAX_MESSAGE_BYTES = 64 * 1024
#: A traceback is kept up to this many bytes: its first and last halves, a note between them.
MAX_TRACEBACK_BYTES = 256 * 1024
#: Up to this many characters (and INLINE_NODES values), a result is serialised and an exception
#: formatted on the event loop: a thread hop would cost more than the work.
INLINE_CHARS = 64 * 1024
INLINE_NODES = 256
#: Exception types' names are cut there (a class can be given any name).
MAX_TYPE_NAME = 1024


@dataclass(frozen=True, slots=True)
class OutcomeLimits:
    """The bounds of the outcomes a worker records."""

    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_traceback_bytes: int = MAX_TRACEBACK_BYTES


def _boundary(data: bytes, index: int, forward: bool) -> int:
    """The nearest start of a UTF-8 character at or around ``index`` (before it, or after it when
    ``forward``)."""
    while 0 < index < len(data) and data[index] & 0xC0 == 0x80:
        index += 1 if forward else -1
    return index


def truncated(text: str, limit: int, keep_tail: bool = False) -> str:
    """``text`` if it is at most ``limit`` bytes of UTF-8; else its first ``limit`` bytes (or, with
    ``keep_tail``, its first and last halves) and a note saying how many bytes were cut."""
    if text.isascii():  # known without a scan (CPython keeps the flag)
        if len(text) <= limit:
            return text
        if keep_tail:
            half = limit // 2
            return f"{text[:half]}\n… [truncated: {len(text) - 2 * half} bytes] …\n{text[-half:]}"
        return f"{text[:limit]}… [truncated: {len(text) - limit} bytes]"
    if len(text) * 4 <= limit:
        return text
    data = text.encode("utf-8", "surrogatepass")  # lone surrogates are spelled out later
    if len(data) <= limit:
        return text
    if keep_tail:
        head, tail = _boundary(data, limit // 2, False), _boundary(data, len(data) - limit // 2, True)
        cut = tail - head
        return (
            f"{data[:head].decode('utf-8', 'surrogatepass')}\n… [truncated: {cut} bytes] …\n"
            f"{data[tail:].decode('utf-8', 'surrogatepass')}"
        )
    head = _boundary(data, limit, False)
    return f"{data[:head].decode('utf-8', 'surrogatepass')}… [truncated: {len(data) - head} bytes]"


def _bound_exception_texts(formatted: traceback.TracebackException, limit: int) -> None:
    """Cuts the message (and notes) of each exception of a formatted chain or group before it is
    formatted: formatting a message of many lines costs seconds per 10 MB."""
    pending, seen = [formatted], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        text = getattr(current, "_str", None)  # the message, read once by TracebackException
        if isinstance(text, str):
            setattr(current, "_str", truncated(text, limit))  # noqa: B010 (a private attribute)
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            current.__notes__ = [truncated(str(note), limit) for note in notes[:100]]
        for linked in (current.__cause__, current.__context__, *(getattr(current, "exceptions", None) or ())):
            if linked is not None:
                pending.append(linked)


def failure_texts(exc: BaseException, limits: OutcomeLimits) -> tuple[str, str, str | None]:
    """(type, message, traceback) of ``exc``, bounded and storable whatever the exception holds."""
    error_type = sanitize_text(truncated(type(exc).__qualname__, MAX_TYPE_NAME))
    try:
        message = str(exc)
    except Exception:  # a task's exception may be broken in any way
        message = f"<{error_type} whose message cannot be read>"
    message = sanitize_text(truncated(message or error_type, limits.max_message_bytes))
    try:
        formatted = traceback.TracebackException.from_exception(exc)
        _bound_exception_texts(formatted, limits.max_message_bytes)
        trace: str | None = "".join(formatted.format())
    except Exception:
        trace = None
    if trace is not None:
        trace = sanitize_text(truncated(trace, limits.max_traceback_bytes, keep_tail=True))
    return error_type, message, trace


def _builtin_str(exc: BaseException) -> bool:
    """Is the exception's ``__str__`` one of the built-in exceptions' (its cost bounded by its
    arguments), not Python code of a class's own?"""
    return isinstance(type(exc).__str__, types.WrapperDescriptorType)


def formats_quickly(exc: BaseException) -> bool:
    """A cheap look: can ``exc`` (and the exceptions it chains) be formatted on the event loop?
    Small arguments, built-in ``__str__``, no group and no notes; anything else is formatted in a
    thread."""
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            return True
        if isinstance(current, BaseExceptionGroup) or not _builtin_str(current):
            return False
        if getattr(current, "__notes__", None):
            return False
        for argument in current.args:
            if isinstance(argument, str):
                if len(argument) > INLINE_CHARS:
                    return False
            elif not (argument is None or isinstance(argument, bool | float) or _small_int(argument)):
                return False
        cause = current.__cause__
        current = cause if cause is not None else (None if current.__suppress_context__ else current.__context__)
    return current is None


def _small_int(value: Any) -> bool:
    return type(value) is int and value.bit_length() <= 14_000


def small_value(value: Any) -> bool:
    """A cheap look: is ``value`` small enough (at most INLINE_NODES values, INLINE_CHARS
    characters of strings) to be serialised on the event loop? Unknown types say no."""
    stack, nodes, chars = [value], 0, 0
    while stack:
        item = stack.pop()
        nodes += 1
        if nodes > INLINE_NODES:
            return False
        kind = type(item)
        if item is None or kind is bool or kind is float or (kind is int and _small_int(item)):
            continue
        if kind is str:
            chars += len(item)
            if chars > INLINE_CHARS:
                return False
        elif kind is list or kind is tuple:
            if len(item) > INLINE_NODES:
                return False
            stack.extend(item)
        elif kind is dict:
            if len(item) > INLINE_NODES:
                return False
            for key, element in item.items():
                stack.append(key)
                stack.append(element)
        else:
            return False
    return True
