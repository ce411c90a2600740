"""The scheduler: fires the ticks of the periodic tasks' schedules (DESIGN 9 "Periodic tasks").

Every worker in ``run_forever`` runs one, for the schedules of the tasks it registered (as the
last deploy stored them: db.ticks reads them at start, when a deploy says they changed, and after
an outage). It sleeps until the earliest next tick (``Cron.next_tick``), then fires each
schedule's latest tick (``Cron.latest_tick``) if it is later than the last one fired (or than the
schedule's creation): one SQL function records the tick by compare-and-set and inserts the job in
one transaction, so each tick creates one job however many workers fire it. After downtime this
fires only the latest missed tick, computed at each try (so a fire retried across an outage
records the latest tick missed during it, not the one due when it began). Ticks are computed on
the server's clock (the offset is read with the schedules), so workers whose clocks differ agree
on when a tick is due.

Database faults are retried with backoff as the worker's other services do (worker.outage). A
lock wait longer than db.ticks.LOCK_TIMEOUT (a client holding an identical job's insert open) is
tried again a little later; a tick whose arguments the task refuses (its parameters changed
since the schedule was deployed) is logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
import anyio.abc
import asyncpg

from ..db.ticks import Ticks
from ..errors import REFUSAL_SQLSTATE
from ..events import TickFired
from ..schedules import Cron
from .outage import Outage, Retrier

__all__ = ("Scheduler",)

logger = logging.getLogger(__name__)

#: Seconds past a tick the scheduler wakes (timers may fire a hair early: that costs a wake-up).
MARGIN = 0.001
#: Seconds before a tick whose statement waited too long for a lock is tried again.
LOCK_RETRY = 1.0


@dataclass
class _Schedule:
    schedule_id: int
    task: str
    cron: Cron
    #: the last tick accounted for: fired (here or elsewhere), or the schedule's creation
    after: datetime


class Scheduler:
    """A service (worker.services): ``run()`` until cancelled; ``reload()`` when the schedules
    may have changed. Each tick this worker fired that created a job or deduped into one is
    emitted on the outage's events (``TickFired``). ``clock`` replaces the server's clock (tests
    move time on with it)."""

    def __init__(
        self,
        ticks: Ticks,
        task_ids: Callable[[], Awaitable[list[int]]],
        outage: Outage,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.ticks = ticks
        self.task_ids = task_ids
        self.outage = outage
        self._reload = asyncio.Event()
        self._schedules: list[_Schedule] = []
        self._offset = timedelta(0)  # the server's clock minus ours
        self._clock = clock

    def reload(self) -> None:
        self._reload.set()

    def _now(self) -> datetime:
        if self._clock is not None:
            return self._clock()
        return datetime.now(UTC) + self._offset

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        service = Retrier(self.outage, "scheduler")
        self._reload.set()
        task_status.started()
        while True:
            if self._reload.is_set():
                self._reload.clear()
                await service.run(self._load)
            retry_at: datetime | None = None
            for schedule in self._schedules:
                if not await service.run(functools.partial(self._fire_due, schedule)):
                    retry_at = self._now() + timedelta(seconds=LOCK_RETRY)
            await self._sleep(retry_at)

    async def _load(self) -> None:
        rows = await self.ticks.load(await self.task_ids())
        sent = datetime.now(UTC)
        schedules = []
        for row in rows:
            self._offset = row["now"] - sent
            try:
                cron = Cron(row["expression"], row["arguments"], row["priority"], row["timezone"])
            except Exception as exc:  # deployed by another version, say: not ours to fire
                logger.error(
                    "schedule %r of %s.%s cannot be read: %s", row["expression"], row["type_key"], row["task_key"], exc
                )
                continue
            after = max(filter(None, (row["last_tick"], row["created_at"])))
            schedules.append(_Schedule(row["schedule_id"], f"{row['type_key']}.{row['task_key']}", cron, after))
        self._schedules = schedules
        if schedules:
            logger.info("scheduler: %d schedules", len(schedules))

    async def _fire_due(self, schedule: _Schedule) -> bool:
        """Fires the schedule's latest tick if it is due (later than the last one accounted
        for); False when it is to be tried again later (a lock wait timed out). The tick is
        computed at each try, not once before them: after an outage the backoff retries this,
        and the tick fired and recorded is then the latest one missed, not the one that was due
        when the database went away."""
        tick = schedule.cron.latest_tick(self._now())
        if tick <= schedule.after:
            return True
        if not await self._fire(schedule, tick):
            return False
        schedule.after = tick
        return True

    async def _fire(self, schedule: _Schedule, tick: datetime) -> bool:
        """Fires a tick; False when it is to be tried again later (a lock wait timed out)."""
        try:
            job_id = await self.ticks.fire(schedule.schedule_id, tick)
        except asyncpg.LockNotAvailableError:
            logger.warning(
                "%s tick %s (%s) waited too long for a lock (an identical job's insert held open?); tried again in %gs",
                schedule.task,
                tick.isoformat(),
                schedule.cron.expression,
                LOCK_RETRY,
            )
            return False
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", None) != REFUSAL_SQLSTATE:
                raise
            logger.error("%s tick %s (%s) skipped: %s", schedule.task, tick.isoformat(), schedule.cron.expression, exc)
            return True
        if job_id is not None:
            logger.info("%s tick %s (%s): job %s", schedule.task, tick.isoformat(), schedule.cron.expression, job_id)
            self.outage.events.emit(TickFired(schedule.task, tick, job_id))
        return True

    async def _sleep(self, retry_at: datetime | None) -> None:
        """Until the earliest next tick (or ``retry_at``), or a reload."""
        now = self._now()
        wakes = [schedule.cron.next_tick(now) for schedule in self._schedules]
        if retry_at is not None:
            wakes.append(retry_at)
        timeout = (min(wakes) - now).total_seconds() + MARGIN if wakes else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reload.wait(), timeout)
