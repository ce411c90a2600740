"""Periodic tasks: ``Cron`` schedules and their ticks.

A ``Cron`` is a cron expression (five fields, or six with seconds first: ``0 * * * * *`` is every
minute at second 0), the arguments and priority of the jobs its ticks create, and a time zone
(UTC by default). The expression is parsed by croniter (well kept, handles names, ranges, steps,
``L`` and ``#``), which walks wall-clock times; what a wall-clock time means around a DST
transition is decided here (DESIGN §9 "Periodic tasks"):

- a schedule with a fixed hour (``0 3 * * *``) ticks once per wall-clock match: not at all when
  the time does not exist (the spring gap), at its first occurrence when it exists twice (the
  autumn overlap);
- a schedule with ``*`` or a step in the hour field (``*/15 * * * *``) ticks at every real instant
  whose wall-clock time matches: none in the gap, both occurrences in the overlap.

Ticks are instants (aware, UTC). Every worker computes the same ticks; the database makes each
one create a single job however many workers race for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from ..errors import TaskDefinitionError

__all__ = ("Cron", "as_crons")

#: A DST shift moves wall clocks by this much at most (2 h, in one Antarctic station; 1 h almost
#: everywhere).
_SHIFT = timedelta(hours=2)
#: croniter walks from a time exclusively; a tick at the instant itself counts as "at or before"
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class Cron:
    """A schedule for a task: ``@task(cron="*/5 * * * *")`` or ``@task(cron=[Cron(...), ...])``."""

    expression: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        fields = self.expression.split()
        if len(fields) not in (5, 6):
            raise TaskDefinitionError(
                f"cron {self.expression!r}: five fields (minute hour day month weekday), or six with "
                "seconds first, separated by spaces"
            )
        try:
            croniter(self.expression, datetime(2000, 1, 1), second_at_beginning=True)
        except (CroniterError, ValueError) as exc:
            raise TaskDefinitionError(f"cron {self.expression!r}: {exc}") from None
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise TaskDefinitionError(f"cron {self.expression!r}: unknown time zone {self.timezone!r}") from None
        if not isinstance(self.arguments, Mapping):
            raise TaskDefinitionError(f"cron {self.expression!r}: arguments must be a mapping")
        if type(self.priority) is not int:
            raise TaskDefinitionError(f"cron {self.expression!r}: priority must be an int")
        object.__setattr__(self, "arguments", dict(self.arguments))

    @property
    def zone(self) -> tzinfo:
        return ZoneInfo(self.timezone)

    @property
    def _hour_field(self) -> str:
        fields = self.expression.split()
        return fields[2] if len(fields) == 6 else fields[1]

    @property
    def every_instant(self) -> bool:
        """``*`` or a step in the hour field: ticks at every real matching instant."""
        return "*" in self._hour_field or "/" in self._hour_field

    def key(self) -> str:
        """What identifies the schedule: a change of any part makes it a new one."""
        return json.dumps([self.expression, self.timezone, self.arguments, self.priority], sort_keys=True)

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after the instant ``after`` (aware)."""
        return min(self._ticks(after, forward=True))

    def latest_tick(self, at_or_before: datetime) -> datetime:
        """The last tick at or before the instant ``at_or_before`` (aware)."""
        return max(self._ticks(at_or_before, forward=False))

    def _ticks(self, instant: datetime, *, forward: bool) -> list[datetime]:
        """The ticks nearest ``instant`` on its side. Wall-clock matches map to instants in order
        except around a DST shift: there the walk starts a shift's width beyond the instant's
        wall-clock time and goes on for one width past the first tick found, so that the other
        pass of an overlap is seen; elsewhere the first tick found is the one."""
        if instant.tzinfo is None:
            raise ValueError("a naive datetime: give an aware one")
        zone = self.zone
        wall = instant.astimezone(zone).replace(tzinfo=None)
        away = -_SHIFT if forward else _SHIFT
        walk = croniter(
            self.expression,
            (wall if forward else wall + _SECOND) if _steady(zone, instant) else wall + away,
            second_at_beginning=True,
            ret_type=datetime,
        )
        found: list[datetime] = []
        limit: datetime | None = None
        for candidate in _walk(walk, forward):
            if limit is not None and (candidate > limit if forward else candidate < limit):
                break
            for tick in self._instants(candidate, zone):
                if (tick > instant) if forward else (tick <= instant):
                    found.append(tick)
            if found and limit is None:
                if _steady(zone, found[0]):
                    break
                limit = candidate - away
        return found

    def _instants(self, wall: datetime, zone: tzinfo) -> list[datetime]:
        """The instants a wall-clock time stands for under this schedule's DST rule."""
        first, second = (wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
        if first.astimezone(zone).replace(tzinfo=None) != wall:
            return []  # in the gap: this wall-clock time does not exist
        if first == second or not self.every_instant:
            return [min(first, second)]
        return sorted((first, second))


def _steady(zone: tzinfo, instant: datetime) -> bool:
    """No DST shift within a shift's width of ``instant``."""
    offsets = {(instant + delta).astimezone(zone).utcoffset() for delta in (-_SHIFT, timedelta(0), _SHIFT)}
    return len(offsets) == 1


def _walk(walk: croniter[datetime], forward: bool) -> Iterator[datetime]:
    while True:
        value = walk.get_next(datetime) if forward else walk.get_prev(datetime)
        assert isinstance(value, datetime)
        yield value


def as_crons(value: str | Cron | Sequence[str | Cron] | None) -> tuple[Cron, ...]:
    """``@task(cron=...)`` as Cron schedules."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str | Cron) else list(value)
    crons = tuple(Cron(item) if isinstance(item, str) else item for item in items)
    for cron in crons:
        if not isinstance(cron, Cron):
            raise TaskDefinitionError(f"cron must be an expression or a Cron, got {cron!r}")
    return crons
