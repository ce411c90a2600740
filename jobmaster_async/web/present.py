"""How values read in the pages: durations, times, JSON, cut text. Jinja filters and globals;
everything returned is plain text, which the templates escape."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..ids import short_id
from ..times import UndecodableTime

__all__ = ("FILTERS", "STATUSES", "ago", "cut", "duration", "pretty")

#: Every status, in the order the pages list them.
STATUSES = ("waiting", "scheduled", "blocked", "running", "complete", "failed", "cancelled")


def duration(seconds: float | None) -> str:
    """``0.42s``, ``12s``, ``3m 20s``, ``2h 5m``, ``4d 3h``."""
    if seconds is None:
        return ""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.2f}s" if seconds < 1 else f"{seconds:.1f}s"
    whole = int(seconds)
    for size, unit, sub_size, sub_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if whole >= size:
            rest = (whole % size) // sub_size
            return f"{whole // size}{unit}" + (f" {rest}{sub_unit}" if rest else "")
    return f"{whole}s"


def ago(at: datetime | None, now: datetime) -> str:
    """``3m ago``, ``in 2m``, ``now``; nothing for a time a datetime cannot hold (its raw value
    is shown beside)."""
    if at is None or isinstance(at, UndecodableTime):
        return ""
    seconds = (now - at).total_seconds()
    if abs(seconds) < 1:
        return "now"
    text = duration(abs(seconds)) if abs(seconds) >= 10 else f"{int(abs(seconds))}s"
    return f"{text} ago" if seconds > 0 else f"in {text}"


def pretty(value: Any) -> str:
    """JSON, indented (non-ASCII kept as it is)."""
    text: str = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return text


def cut(value: Any, length: int = 80) -> str:
    """At most ``length`` characters, the cut marked with "…"."""
    text = "" if value is None else str(value)
    return text if len(text) <= length else text[: length - 1] + "…"


def number(n: int | None) -> str:
    """``12,345``."""
    return "" if n is None else f"{n:,}"


def isotime(at: datetime | None) -> str:
    """ISO 8601, for the page's script; nothing for a time a datetime cannot hold (the script
    then leaves the server's text alone)."""
    return at.isoformat() if at is not None and not isinstance(at, UndecodableTime) else ""


def utc(at: datetime | None) -> str:
    """A time as text, in UTC, to the second (the page's script shows local time); one a
    datetime cannot hold as PostgreSQL wrote it (times.UndecodableTime)."""
    if isinstance(at, UndecodableTime):
        return at.raw
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at is not None else ""


FILTERS = {
    "number": number,
    "duration": duration,
    "pretty": pretty,
    "cut": cut,
    # what listings show of an id (its last 12 hex digits, which the job page takes back)
    "short": short_id,
    "isotime": isotime,
    "utc": utc,
}
