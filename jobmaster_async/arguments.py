"""What callers insert, checked before the driver sees it (the library's own errors, naming the
task and argument, instead of the driver's), and the SQL refusals (SQLSTATE JM400) as the
library's exceptions. The SQL checks the same again: jobs also come from psql and triggers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg

from .errors import REFUSAL_SQLSTATE, InvalidArguments, JobMasterError, NotRetryable, TaskNotFound
from .storable import dumps_storable, unstorable_reason
from .times import RUN_AT_RANGE, run_at_refusal

__all__ = ("PRIORITY_RANGE", "RunAt", "as_json", "as_json_array", "check_insert", "refusals_as_errors", "when")

#: When a job is to run: an aware datetime, a timedelta from now, or None (now).
RunAt: TypeAlias = datetime | timedelta | None


def refusal(exc: asyncpg.PostgresError) -> JobMasterError:
    """The exception a JM400 refusal stands for (its DETAIL names the kind)."""
    kind = getattr(exc, "detail", None)
    message = getattr(exc, "message", None) or str(exc)
    if kind == "unknown_task":
        return TaskNotFound(message)
    if kind == "not_retryable":
        return NotRetryable(message)
    return InvalidArguments(message)


@contextlib.contextmanager
def refusals_as_errors() -> Iterator[None]:
    """Turns the SQL refusals (SQLSTATE JM400) into JobMaster exceptions."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == REFUSAL_SQLSTATE:
            raise refusal(exc) from exc
        raise


#: PostgreSQL's int: the range of a job's priority.
PRIORITY_RANGE = range(-(2**31), 2**31)


def check_insert(type_key: object, task_key: object, priority: object) -> None:
    """The library's own refusals of what the driver would refuse less clearly."""
    for name, key in (("type_key", type_key), ("task_key", task_key)):
        if not isinstance(key, str) or "\x00" in key:
            raise InvalidArguments(f"{name} must be text without NUL characters, got {key!r}")
    if type(priority) is not int or priority not in PRIORITY_RANGE:
        raise InvalidArguments(
            f"{type_key}.{task_key}: priority must be an int from {PRIORITY_RANGE.start} to "
            f"{PRIORITY_RANGE.stop - 1}, got {priority!r} (insert_job(type_key, task_key, priority, arguments))"
        )


def when(label: str, run_at: RunAt) -> tuple[datetime | None, timedelta | None]:
    """``run_at`` as the insert statements take it: a time, or a delay from the server's now
    (whose clock decides, not this machine's). A naive datetime is refused: which zone it meant
    cannot be known. So is a time outside the range every client can read back (times.py): from
    1970-01-01 to 9999-12-31 UTC, that day excluded, as the SQL refuses it (a delay is judged by
    this machine's clock here, by the server's there)."""
    if run_at is None:
        return None, None
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None or run_at.tzinfo.utcoffset(run_at) is None:
            raise InvalidArguments(
                f"{label}: run_at={run_at!r} is a naive datetime (no time zone); give an aware one, such "
                "as datetime.now(UTC) + timedelta(minutes=5), or a timedelta from now"
            )
        refused = run_at_refusal(label, run_at)
        if refused is not None:
            raise InvalidArguments(refused)
        return run_at, None
    if isinstance(run_at, timedelta):
        try:
            refused = run_at_refusal(label, datetime.now(UTC) + run_at)
        except OverflowError:
            refused = f"{label}: run_at must be {RUN_AT_RANGE}, got now + {run_at}"
        if refused is not None:
            raise InvalidArguments(refused)
        return None, run_at
    raise InvalidArguments(
        f"{label}: run_at must be an aware datetime or a timedelta from now, got {type(run_at).__name__}"
    )


def as_json(label: str, arguments: Mapping[str, Any] | None) -> str | None:
    """The arguments as JSON text that PostgreSQL accepts, or InvalidArguments saying where not."""
    if arguments is None:
        return None
    if not isinstance(arguments, Mapping):
        raise InvalidArguments(f"{label}: arguments must be a mapping (a dict), got {type(arguments).__name__}")
    text = dumps_storable(arguments if isinstance(arguments, dict) else dict(arguments))
    if text is None:
        reason = unstorable_reason(dict(arguments), "arguments") or "they are not JSON"
        raise InvalidArguments(f"{label}: arguments cannot be stored: {reason}")
    return text


def as_json_array(label: str, elements: Sequence[Mapping[str, Any] | None]) -> str:
    """One JSON array for a batch: one json.dumps call for all is much faster than one per element."""
    text = dumps_storable([{} if a is None else a for a in elements])
    if text is not None and all(a is None or isinstance(a, Mapping) for a in elements):
        return text
    for position, element in enumerate(elements):
        as_json(f"{label}, element {position}", element)
    raise InvalidArguments(f"{label}: the batch cannot be stored")  # not reached: an element says why
