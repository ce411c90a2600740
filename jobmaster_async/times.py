"""Times: the range of ``run_at`` the queue accepts, and the timestamptz values Python's
``datetime`` cannot hold.

``run_at`` is refused (``InvalidArguments``; in SQL, JM400 ``invalid_run_at``) unless it falls
from 1970-01-01 00:00 UTC up to, not including, 9999-12-31 00:00 UTC. Why these bounds: every
client must be able to read the time back, and Python's ``datetime`` stops at 9999-12-31
23:59:59 (the last day is left out so that any time zone's view of the value still fits); a
time in the past runs at once, so an earlier bound takes nothing real away, and a run_at
before 1970 (a BC year, the year 1) is a mistake. A fixed range, not "so many years from now",
so that Python and SQL refuse exactly the same values whatever their clocks say.

Values outside what a ``datetime`` holds still reach the database by other ways (rows written
before the bound, or past the library by the schema's owner): the library's connections decode
every timestamptz with :func:`decode_timestamptz`, which gives an :class:`UndecodableTime` for
them instead of failing the whole fetch (asyncpg's own decoder raises ``OverflowError``), so
every listing still shows the row.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

__all__ = (
    "EARLIEST_RUN_AT",
    "LATEST_RUN_AT",
    "RUN_AT_RANGE",
    "UndecodableTime",
    "decode_timestamptz",
    "encode_timestamptz",
    "postgres_text",
    "run_at_refusal",
)

#: The earliest run_at accepted.
EARLIEST_RUN_AT = datetime(1970, 1, 1, tzinfo=UTC)
#: run_at must be before this (sql/functions/validation.sql _run_at_ok states the same bounds).
LATEST_RUN_AT = datetime(9999, 12, 31, tzinfo=UTC)

#: What the refusals say of the range (Python's and SQL's).
RUN_AT_RANGE = "from 1970-01-01 to 9999-12-31 UTC (that day excluded)"

_US = timedelta(microseconds=1)
#: PostgreSQL's epoch: timestamptz is microseconds from it (binary format, int64)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_INFINITY = 2**63 - 1
_MINUS_INFINITY = -(2**63)
#: the times decoded as datetimes: from here (a day after datetime.min) ...
_LOWEST = datetime(1, 1, 2, tzinfo=UTC)
#: ... to before here (a day before datetime.max): converting one to any time zone cannot overflow
_HIGHEST = LATEST_RUN_AT
_LOW = (_LOWEST - _PG_EPOCH) // _US
_HIGH = (_HIGHEST - _PG_EPOCH) // _US
#: asyncpg's encoder writes these two as -infinity and infinity (as it decodes them)
_ASYNCPG_MINUS_INFINITY = (datetime(1, 1, 1, tzinfo=UTC) - _PG_EPOCH) // _US
_ASYNCPG_INFINITY = (datetime.max.replace(tzinfo=UTC) - _PG_EPOCH) // _US
_DAY = 86_400_000_000
_ORDINAL_2000 = date(2000, 1, 1).toordinal()
_CYCLE = 146_097  # days in 400 Gregorian years: the calendar repeats after them


def run_at_refusal(label: str, run_at: datetime) -> str | None:
    """Why ``run_at`` (aware) is refused, naming the task (``label``), or None: it fits."""
    if EARLIEST_RUN_AT <= run_at < LATEST_RUN_AT:
        return None
    return f"{label}: run_at must be {RUN_AT_RANGE}, got {run_at.isoformat()}"


def postgres_text(microseconds: int) -> str:
    """A timestamptz (microseconds from 2000-01-01 UTC) as PostgreSQL writes it in UTC (ISO
    DateStyle): ``200000-01-01 00:00:00+00``, ``4000-01-01 00:00:00+00 BC``, ``infinity``. Any
    year: the Gregorian calendar repeats every 400 years, so the date is found in the years 1 to
    400 and moved back by whole cycles."""
    if microseconds == _INFINITY:
        return "infinity"
    if microseconds == _MINUS_INFINITY:
        return "-infinity"
    days, rest = divmod(microseconds, _DAY)
    cycles, in_cycle = divmod(_ORDINAL_2000 + days - 1, _CYCLE)
    day = date.fromordinal(in_cycle + 1)
    year = day.year + 400 * cycles  # astronomical: year 0 is 1 BC
    seconds, fraction = divmod(rest, 1_000_000)
    clock = f"{seconds // 3600:02}:{seconds // 60 % 60:02}:{seconds % 60:02}"
    if fraction:
        clock += f".{fraction:06}".rstrip("0")
    when = f"{year if year > 0 else 1 - year:04}-{day.month:02}-{day.day:02} {clock}+00"
    return when if year > 0 else f"{when} BC"


class UndecodableTime(datetime):
    """A timestamptz value that a ``datetime`` cannot hold (or hold with a day to spare for time
    zones): before 0001-01-02 or from 9999-12-31 UTC on, ``infinity``, ``-infinity``. Such
    values come from rows written past the library or before ``run_at`` was bounded; listings
    show them instead of failing.

    ``str()``, ``repr()`` and ``isoformat()`` give :attr:`raw`, the value as PostgreSQL writes it
    in UTC (``200000-01-01 00:00:00+00``, ``4000-01-01 00:00:00+00 BC``, ``infinity``). As a
    datetime it is the nearest one the range holds (0001-01-02 or 9999-12-31, UTC), so that it
    compares, subtracts and converts without error; what such arithmetic gives is a plain
    datetime. Sent back as a parameter, it is the original value."""

    raw: str
    pg_microseconds: int

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and type(args[0]) is int:
            microseconds = args[0]
            near = _HIGHEST if microseconds >= _HIGH else _LOWEST
            self = datetime.__new__(cls, near.year, near.month, near.day, tzinfo=UTC)
            self.pg_microseconds = microseconds
            self.raw = postgres_text(microseconds)
            return self
        # datetime's arithmetic, replace() and astimezone() make their results through the
        # class: those are ordinary times
        return datetime(*args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (UndecodableTime, (self.pg_microseconds,))

    def __repr__(self) -> str:
        return self.raw

    def __str__(self) -> str:
        return self.raw

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return self.raw


def decode_timestamptz(value: tuple[int]) -> datetime:
    """The timestamptz codec's decoder (asyncpg's tuple format: microseconds from 2000-01-01
    UTC): an aware datetime in UTC, as asyncpg's own, or an :class:`UndecodableTime`; never
    raises for the data."""
    microseconds = value[0]
    if _LOW <= microseconds < _HIGH:
        return _PG_EPOCH + timedelta(microseconds=microseconds)
    undecodable: datetime = UndecodableTime(microseconds)
    return undecodable


def encode_timestamptz(value: datetime | date) -> tuple[int]:
    """The timestamptz codec's encoder, as asyncpg's own: a naive datetime (or a date, at
    midnight) is local time, naive ``datetime.max``/``datetime.min`` are infinity and -infinity;
    an :class:`UndecodableTime` is sent as the value it was read from."""
    if isinstance(value, UndecodableTime):
        return (value.pg_microseconds,)
    if not isinstance(value, datetime):
        if not isinstance(value, date):
            raise TypeError(f"expected a datetime.date or datetime.datetime instance, got {type(value).__name__!r}")
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None or value.utcoffset() is None:
        if value == datetime.max:
            return (_INFINITY,)
        if value == datetime.min:
            return (_MINUS_INFINITY,)
        value = value.astimezone(UTC)
    microseconds = (value - _PG_EPOCH) // _US
    if microseconds == _ASYNCPG_INFINITY:
        return (_INFINITY,)
    if microseconds == _ASYNCPG_MINUS_INFINITY:
        return (_MINUS_INFINITY,)
    return (microseconds,)
