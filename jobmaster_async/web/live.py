"""The live view: one poller per app, however many browsers watch.

A ``Broadcaster`` keeps one database connection. It LISTENs on the schema's channel (the wake-ups
that inserts, unblocks and retries already send: no NOTIFY of its own) and, while anybody
subscribes (``/events``), reads the cheap state of the queue (db.insights: active jobs by task
and status, workers, and the history's mark, a sequence's last value): at most once per
``interval``, every second while things change, backing off to ``quiet_period`` when nothing
does, and early when a wake-up arrives. The charts are read again only when the history's mark
moved, from the start of the previous minute (whole minutes, replacing those buckets); the schedules every
``SCHEDULES_EVERY`` seconds or when a deploy changed them. A read never runs more often than ten
times its own duration, so a slow database is not swamped. Each subscriber is handed the latest
snapshot (one that falls behind skips to the newest). Pages that render the overview take the
latest snapshot, read afresh when it is older than ``interval``, so a page load costs the
database nothing more while the live view runs. The connection is closed after ``idle`` seconds
without use (a timer).

The poller has no task of its own: the subscribers read (whichever finds a read due; the others
are handed its snapshot), so it starts with the first subscriber and stops when the last one
leaves or the app closes (``close``), whether the app is served alone or mounted in another one
(which gets no lifespan events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from ..db.faults import database_fault
from ..db.notifications import Notification, SchedulesChanged
from ..db.waiting import ReconnectDelay
from ..db.watch import Watch
from ..inspection import TaskDepth

if TYPE_CHECKING:
    from ..app import JobMaster

__all__ = ("Broadcaster", "Snapshot", "TaskDepth")

logger = logging.getLogger(__name__)

#: How far back a read of the charts after the first one goes (sql/dashboard.sql chart_recent).
CHART_RECENT = timedelta(minutes=2)
#: Seconds between two reads of the charts at least, and without a history mark (no privilege).
CHART_INTERVAL = 2.0
CHART_BLIND_INTERVAL = 15.0
#: Seconds between two reads of the schedules (also read when a deploy changed them).
SCHEDULES_EVERY = 30.0
#: A read runs at most once per this many times its own duration.
COST_FACTOR = 10.0


@dataclass(frozen=True)
class Snapshot:
    """What the overview shows, as read at ``now`` (the server's clock)."""

    version: int
    now: datetime
    depth: tuple[TaskDepth, ...]
    workers: tuple[Mapping[str, Any], ...]
    #: (minute, {reason: events}) for each minute of the last hour, oldest first
    chart: tuple[tuple[datetime, Mapping[str, int]], ...]
    schedules: tuple[Mapping[str, Any], ...]
    #: the history's mark (sql/dashboard.sql history_mark): changes when anything happened
    history_mark: int | None
    #: why the data may be stale (the database is unreachable), else None
    error: str | None = None
    totals: Mapping[str, int] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        """What a viewer sees change (not the clock)."""
        workers = tuple((w["worker_id"], w["running"], w["alive"]) for w in self.workers)
        chart = tuple((minute, tuple(sorted(counts.items()))) for minute, counts in self.chart if counts)
        schedules = tuple((s.get("type_key"), s.get("last_tick"), s.get("next_tick")) for s in self.schedules)
        return (self.depth, workers, chart, schedules, self.history_mark, self.error)


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


class Broadcaster:
    """The live state of one schema, read by one poller and handed to every subscriber."""

    def __init__(
        self,
        jm: JobMaster,
        *,
        interval: float = 1.0,
        quiet_period: float = 5.0,
        keepalive: float = 15.0,
        idle: float = 60.0,
    ) -> None:
        self.jm = jm
        self.interval = interval
        self.quiet_period = quiet_period
        self.keepalive = keepalive
        self.idle = idle
        self._latest: Snapshot | None = None
        self._latest_at = 0.0  # monotonic time of the read
        self._conn: Watch | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()  # set (and replaced) by _poke
        self._wake = asyncio.Event()  # set: a wake-up arrived, read at the next pace
        self._idle_timer: asyncio.TimerHandle | None = None
        self._backoff = ReconnectDelay(first=0.5, cap=10.0)
        self._retry_at: float | None = None  # after a failed read: when to try again
        self._subscribers = 0
        self._last_used = 0.0
        self._closed = False
        self._poll_cost = 0.0
        self._period = interval
        # the charts: {minute: {reason: events}}
        self._buckets: dict[datetime, dict[str, int]] = {}
        self._chart_read_at: float | None = None
        self._chart_mark: int | None = None
        self._chart_cost = 0.0
        self._schedules: tuple[Mapping[str, Any], ...] = ()
        self._schedules_read_at: float | None = None
        self._failing = False

    @property
    def subscribers(self) -> int:
        return self._subscribers

    # -- what pages and /events use ---------------------------------------------------------------

    async def snapshot(self, max_age: float | None = None) -> Snapshot:
        """The latest snapshot, read afresh when older than ``max_age`` seconds (default:
        ``interval``). When the database cannot be read, the last one with ``error`` set (raises
        when there is none)."""
        self._use()
        age = self.interval if max_age is None else max_age
        if self._latest is not None and time.monotonic() - self._latest_at <= age:
            return self._latest
        async with self._lock:
            if self._latest is None or time.monotonic() - self._latest_at > age:
                try:
                    await self._poll()
                except Exception as exc:
                    self._fault(exc)
                    if self._latest is None:
                        raise
                finally:
                    self._poke()  # a subscriber that found the lock held looks again now
        assert self._latest is not None
        return self._latest

    async def subscribe(self) -> AsyncIterator[Snapshot | None]:
        """The latest snapshot now, then each newer one (None every ``keepalive`` seconds
        without one), until closed. The subscribers are the poller: whichever finds a read due
        does it (one at a time), the others are handed its snapshot. So the poller starts with
        the first subscriber and stops when the last one leaves, with no task of its own (a
        dashboard mounted in another app gets no lifespan events to start or stop one)."""
        self._subscribers += 1
        self._use()
        self._wake.set()
        try:
            latest = await self.snapshot()
            yield latest
            seen = latest.version
            keepalive_at = time.monotonic() + self.keepalive
            while not self._closed:
                if self._latest is not None and self._latest.version != seen:
                    latest = self._latest
                    seen = latest.version
                    yield latest
                    keepalive_at = time.monotonic() + self.keepalive
                    continue
                now = time.monotonic()
                if now >= keepalive_at:
                    yield None
                    keepalive_at = now + self.keepalive
                    continue
                due = self._read_due()
                if due <= now and not self._lock.locked():
                    await self._read()
                    continue
                # until a snapshot, a wake-up, a read's end (another subscriber's), or a due time
                changed = self._changed
                until = keepalive_at if due <= now else min(due, keepalive_at)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), until - now)
        finally:
            self._subscribers -= 1
            self._use()

    async def close(self) -> None:
        """Ends every subscription and closes the connection."""
        self._closed = True
        self._poke()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        await self._disconnect()

    # -- the poller: the subscribers' reads ------------------------------------------------------

    def _poke(self) -> None:
        """Subscribers look again (a snapshot, a wake-up, a read ended, closed)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _read_due(self) -> float:
        """When the next read is due (monotonic): after a failed read, its backoff; after a
        wake-up, ``_pace()`` after the last read; else the longer of the two waits."""
        if self._retry_at is not None:
            return self._retry_at
        wait = self._pace() if self._wake.is_set() else max(self._period, self._pace())
        return self._latest_at + wait

    async def _read(self) -> None:
        async with self._lock:
            self._wake.clear()
            try:
                await self._poll()
            except Exception as exc:
                self._fault(exc)
                self._retry_at = time.monotonic() + self._backoff.delay()
            else:
                self._backoff.reset()
                self._retry_at = None
            finally:
                self._poke()

    def _use(self) -> None:
        """Keeps the connection for ``idle`` seconds more (a timer, no task, closes it unused)."""
        self._last_used = time.monotonic()
        if self._idle_timer is None and not self._closed:
            self._idle_timer = asyncio.get_running_loop().call_later(self.idle, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._idle_timer = None
        left = self._last_used + self.idle - time.monotonic()
        if self._subscribers or self._lock.locked() or left > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(max(left, self.idle / 10), self._close_if_idle)
            return
        conn, self._conn = self._conn, None  # unused for `idle` seconds: the next use opens another
        if conn is not None:
            conn.terminate()

    def _pace(self) -> float:
        """Seconds between two reads at least."""
        return max(self.interval, COST_FACTOR * self._poll_cost)

    async def _connection(self) -> Watch:
        if self._closed:
            raise RuntimeError("the dashboard was closed (Dashboard.aclose)")
        if self._conn is None or self._conn.is_closed():
            self._conn = await self.jm.watch(self._on_notification, self._woken)
        return self._conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _on_notification(self, notification: Notification | None) -> None:
        if isinstance(notification, SchedulesChanged):
            self._schedules_read_at = None
        self._woken()

    def _woken(self) -> None:
        self._wake.set()
        self._poke()

    def _fault(self, exc: Exception) -> None:
        """A read failed: the connection is dropped, subscribers are told, the log says it once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
        message = f"cannot read the database: {type(exc).__name__}: {exc}"
        if not self._failing:
            self._failing = True
            if database_fault(exc) or isinstance(exc, asyncpg.PostgresError):
                logger.warning("dashboard: %s", message)
            else:
                logger.exception("dashboard: the live view's read failed")
        if self._latest is not None and self._latest.error != message:
            self._publish(replace(self._latest, version=self._latest.version + 1, error=message))

    async def _poll(self) -> None:
        """Reads the cheap state (and the charts and schedules when due) and publishes a
        snapshot if anything a viewer sees changed. Call it holding the lock."""
        conn = await self._connection()
        started = time.monotonic()
        overview = await conn.overview()
        self._poll_cost = time.monotonic() - started
        await self._read_chart(conn, overview.history_mark)
        await self._read_schedules()
        version = self._latest.version + 1 if self._latest is not None else 1
        depth = tuple(overview.depth)
        totals = {
            status: sum(getattr(task, status) for task in depth)
            for status in ("waiting", "scheduled", "blocked", "running")
        }
        snapshot = Snapshot(
            version=version,
            now=overview.now,
            depth=depth,
            workers=tuple(overview.workers),
            chart=self._chart(overview.now),
            schedules=self._schedules,
            history_mark=overview.history_mark,
            totals=totals,
        )
        if self._failing:
            self._failing = False
            logger.warning("dashboard: the database can be read again")
        changed = self._latest is None or snapshot.key() != self._latest.key()
        self._latest_at = time.monotonic()
        if changed:
            self._period = self.interval
            self._publish(snapshot)
        else:
            # nothing changed: wait longer before the next read (a wake-up cuts it short)
            self._period = min(self.quiet_period, self._period * 2)
            assert self._latest is not None
            self._latest = replace(self._latest, now=snapshot.now, workers=snapshot.workers, chart=snapshot.chart)

    def _publish(self, snapshot: Snapshot) -> None:
        self._latest = snapshot
        self._poke()

    # -- charts and schedules --------------------------------------------------------------------

    async def _read_chart(self, conn: Watch, mark: int | None) -> None:
        now = time.monotonic()
        last = self._chart_read_at
        if last is not None:
            if mark is not None and mark == self._chart_mark:
                return  # the history did not grow
            spacing = CHART_INTERVAL if mark is not None else CHART_BLIND_INTERVAL
            if now - last < max(spacing, COST_FACTOR * self._chart_cost):
                return
        # the whole hour at first, or when the last read is too old to build on; else the last
        # few minutes, whose buckets the read replaces
        whole = last is None or now - last > (CHART_RECENT - timedelta(minutes=1)).total_seconds()
        rows, since = await conn.chart(whole)
        self._chart_cost = time.monotonic() - now
        self._buckets = {} if whole else {m: c for m, c in self._buckets.items() if m < since}
        for row in rows:
            self._buckets.setdefault(row["minute"], {})[row["reason"]] = row["n"]
        self._chart_read_at = now
        self._chart_mark = mark

    def _chart(self, now: datetime) -> tuple[tuple[datetime, Mapping[str, int]], ...]:
        """The last hour, minute by minute, ending with the current one."""
        current = _minute(now)
        minutes = [current - timedelta(minutes=n) for n in range(59, -1, -1)]
        for minute in [m for m in self._buckets if m < minutes[0]]:
            del self._buckets[minute]
        return tuple((minute, dict(self._buckets.get(minute, {}))) for minute in minutes)

    async def _read_schedules(self) -> None:
        now = time.monotonic()
        if self._schedules_read_at is not None and now - self._schedules_read_at < SCHEDULES_EVERY:
            return
        self._schedules = tuple(await self.jm.schedules())
        self._schedules_read_at = now
