"""The reads of the tools for people (the dashboard, the CLI): one method per statement of
``sql/dashboard.sql``. Read-only; the dashboard's poller passes its own connection (db.watch),
the pages and the CLI use the pool's.

Reached as ``Store.insights``, and by users through JobMaster's read API (inspection.py). What
the statements cost with millions of finished jobs is said beside each of them in the SQL file."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from .sql import Catalogue

__all__ = ("Insights", "Overview", "ScanEnd", "TaskDepth")

logger = logging.getLogger(__name__)

#: Planner settings of the reads of active jobs: along the partial indexes of the active
#: statuses, never a read of the whole table (as active_counts() does, sql/functions/views_grants.sql).
_INDEXES_ONLY = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off"


@dataclass(frozen=True)
class TaskDepth:
    """The active jobs of one task: waiting (due), scheduled (waiting for a later time), blocked
    and running."""

    type_key: str
    task_key: str
    waiting: int = 0
    scheduled: int = 0
    blocked: int = 0
    running: int = 0

    @property
    def name(self) -> str:
        return f"{self.type_key}.{self.task_key}"

    @property
    def total(self) -> int:
        return self.waiting + self.scheduled + self.blocked + self.running


def _depth(rows: list[asyncpg.Record]) -> list[TaskDepth]:
    """The rows of sql/dashboard.sql depth (a task's jobs of one status), a TaskDepth per task."""
    found: dict[tuple[str, str], dict[str, int]] = {}
    for row in rows:
        counts = found.setdefault((row["type_key"], row["task_key"]), {})
        status = "scheduled" if row["status"] == "waiting" and row["scheduled"] else row["status"]
        counts[status] = counts.get(status, 0) + row["n"]
    return [TaskDepth(type_key, task_key, **counts) for (type_key, task_key), counts in sorted(found.items())]


def _workers(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [{**dict(row), "alive": row["heartbeat_age"] <= row["lapse"]} for row in rows]


@dataclass(frozen=True)
class Overview:
    """The cheap state of the queue, read in one snapshot: active jobs per task, the workers,
    and the history's mark (None: unknown)."""

    depth: list[TaskDepth]
    workers: list[dict[str, Any]]
    history_mark: int | None
    now: datetime


@dataclass(frozen=True)
class ScanEnd:
    """Where a bounded scan of the job list stopped: the oldest job it looked at (None: none),
    and whether older jobs remain."""

    last_id: uuid.UUID | None
    more: bool


class Insights:
    """The statements of sql/dashboard.sql, for one schema."""

    def __init__(self, sql: Catalogue, acquire: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]) -> None:
        self.sql = sql
        self._acquire = acquire
        self._statements = sql.dashboard
        self._job_events = f"{sql.quoted_schema}.job_events"
        #: False once the history's mark could not be read (no privilege on its sequence)
        self.mark_readable = True

    @contextlib.asynccontextmanager
    async def _connection(self, conn: asyncpg.Connection | None) -> AsyncIterator[asyncpg.Connection]:
        if conn is not None:
            yield conn
        else:
            async with self._acquire() as pooled:
                yield pooled

    async def overview(self, conn: asyncpg.Connection | None = None) -> Overview:
        """Active jobs by task and status, workers, and the history's mark."""
        async with self._connection(conn) as c:
            mark, now = await self._history_mark(c)
            async with c.transaction(readonly=True):
                await c.execute(_INDEXES_ONLY)
                depth = await c.fetch(self._statements["depth"])
                workers = await c.fetch(self._statements["workers"])
        return Overview(_depth(depth), _workers(workers), mark, now)

    async def _history_mark(self, conn: asyncpg.Connection) -> tuple[int | None, datetime]:
        if self.mark_readable:
            try:
                row = await conn.fetchrow(self._statements["history_mark"], self._job_events)
            except asyncpg.InsufficientPrivilegeError as exc:
                self.mark_readable = False
                logger.warning(
                    "the dashboard cannot read the sequence of job_events.event_id (%s): charts are read "
                    "on a timer instead of when the history grows; GRANT SELECT on it (README: Dashboard)",
                    exc,
                )
            else:
                assert row is not None
                return row["mark"], row["now"]
        now: datetime = await conn.fetchval(self._statements["clock"], timedelta(0))
        return None, now

    async def depth(self) -> list[TaskDepth]:
        """The active jobs of each task that has any, by task name."""
        async with self._connection(None) as c, c.transaction(readonly=True):
            await c.execute(_INDEXES_ONLY)
            rows: list[asyncpg.Record] = await c.fetch(self._statements["depth"])
        return _depth(rows)

    async def workers(self) -> list[dict[str, Any]]:
        """The workers that heartbeat: worker_id, node, pid, started_at, heartbeat_at,
        heartbeat_age and lapse (seconds), running (jobs) and alive (heartbeat_age <= lapse)."""
        async with self._connection(None) as c:
            rows: list[asyncpg.Record] = await c.fetch(self._statements["workers"])
        return _workers(rows)

    async def chart(self, whole: bool, conn: asyncpg.Connection | None = None) -> tuple[list[asyncpg.Record], datetime]:
        """(minute, reason, n): history events per minute over the last hour (``whole``), else
        the last three minutes; and the start of the first minute read."""
        async with self._connection(conn) as c:
            rows: list[asyncpg.Record] = await c.fetch(self._statements["chart_hour" if whole else "chart_recent"])
        since = next(row["minute"] for row in rows if row["reason"] is None)
        return [row for row in rows if row["reason"] is not None], since

    async def tasks(self) -> list[asyncpg.Record]:
        """(task_id, type_key, task_key) of every task, by name."""
        async with self._connection(None) as c:
            rows: list[asyncpg.Record] = await c.fetch(self._statements["tasks"])
        return rows

    async def find_jobs(self, low: uuid.UUID, high: uuid.UUID, pattern: str, limit: int) -> list[asyncpg.Record]:
        """(job_id, type_key, task_key, status, created_at) of the jobs, newest first, whose id is
        in [low, high] or whose text form is LIKE ``pattern``."""
        async with self._connection(None) as c:
            rows: list[asyncpg.Record] = await c.fetch(self._statements["find_jobs"], low, high, pattern, limit)
        return rows

    async def schema_version(self) -> int | None:
        """The version the schema was last deployed at, or None when it never was."""
        async with self._connection(None) as c:
            table = f"{self.sql.quoted_schema}.schema_version"
            if not await c.fetchval(self._statements["schema_deployed"], table):
                return None
            version: int = await c.fetchval(self.sql["current_version"])
        return version

    async def jobs_page(
        self,
        *,
        before: uuid.UUID | None,
        status: str | None,
        task_id: int | None,
        pattern: str | None,
        limit: int,
        scan: int,
        cut: int,
    ) -> list[asyncpg.Record]:
        """Up to ``limit`` jobs older than ``before``, newest first, that match: for an active
        ``status`` all of them are looked at, else the ``scan`` jobs after ``before`` at most
        (``scan_end`` says where that stopped). ``pattern``: a LIKE pattern. Arguments and
        messages cut at ``cut`` characters."""
        async with self._connection(None) as c:
            if status in ("waiting", "blocked", "running"):
                statement = self._statements["active_jobs_page"]
                rows: list[asyncpg.Record] = await c.fetch(statement, before, status, task_id, pattern, cut, limit)
            else:
                statement = self._statements["jobs_page"]
                rows = await c.fetch(statement, before, scan, status, task_id, pattern, cut, limit)
        return rows

    async def scan_end(self, before: uuid.UUID | None, scan: int) -> ScanEnd:
        async with self._connection(None) as c:
            row = await c.fetchrow(self._statements["scan_end"], before, scan)
        assert row is not None
        return ScanEnd(row["last_id"], row["n"] >= scan)

    async def dependency_tree(
        self, job_id: uuid.UUID, depth: int, rows: int
    ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """The jobs above (depends_on: dependent, job_id, ...) and below (dependents:
        depends_on, job_id, ...) a job, ``depth`` levels and ``rows`` rows at most each way."""
        async with self._connection(None) as c:
            up: list[asyncpg.Record] = await c.fetch(self._statements["depends_on"], job_id, depth, rows)
            down: list[asyncpg.Record] = await c.fetch(self._statements["dependents"], job_id, depth, rows)
        return up, down

    async def worker_of(self, job_id: uuid.UUID, worker_id: uuid.UUID) -> dict[str, Any]:
        """node, pid and alive of a job's worker (node and pid None when nothing says)."""
        async with self._connection(None) as c:
            row = await c.fetchrow(self._statements["worker_of"], job_id, worker_id)
        assert row is not None
        return dict(row)

    async def clock(self, less: timedelta = timedelta(0)) -> datetime:
        """The server's clock, less ``less``."""
        async with self._connection(None) as c:
            now: datetime = await c.fetchval(self._statements["clock"], less)
        return now

    async def metrics_window(self, since: datetime, lag: timedelta) -> list[asyncpg.Record]:
        """(kind, task_id, label, n, seconds, upto) rows of the history in [since, clock - lag)
        (sql/dashboard.sql metrics_window)."""
        async with self._connection(None) as c, c.transaction(readonly=True):
            await c.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            rows: list[asyncpg.Record] = await c.fetch(self._statements["metrics_window"], since, lag)
        return rows
