"""JobMaster's read API: jobs, their history and dependencies, the queue's depth per task, the
workers, the schedules, the charts and the metrics' history, as the dashboard and the CLI show
them (README "Python API"). A mixin of ``JobMaster``: every read goes through its store
(db.store, db.insights; the statements are in sql/queries.sql and sql/dashboard.sql)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from .db.insights import ScanEnd, TaskDepth
from .db.notifications import Notification
from .db.store import Store
from .db.watch import Watch
from .errors import TaskDefinitionError
from .ids import MAX_CANDIDATES, Candidate, id_range
from .jobs import Job, JobStatus, as_job_id
from .schedules import Cron

__all__ = ("Inspection", "ScanEnd", "TaskDepth")


class Inspection:
    """The reads of ``JobMaster`` (a mixin: ``_store`` is the JobMaster's store)."""

    _store: Store

    # -- jobs --------------------------------------------------------------------------------------

    async def get_job(self, job_id: uuid.UUID | str) -> Job | None:
        """The job with that id, or None. A value Python cannot hold shows raw (``Job``)."""
        row = await self._store.get_job(as_job_id(job_id))
        return Job.from_row(row) if row is not None else None

    async def jobs(
        self,
        status: str | None = None,
        type_key: str | None = None,
        task_key: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs, newest first, optionally of one status and task. A row with a value Python
        cannot hold is listed all the same, that value raw (``Job``)."""
        if status is not None and status not in JobStatus.__members__.values():
            raise ValueError(f"unknown status {status!r}; one of {', '.join(JobStatus)}")
        rows = await self._store.list_jobs(status, type_key, task_key, limit)
        return [Job.from_row(row) for row in rows]

    async def find_jobs(self, text: str, limit: int = MAX_CANDIDATES + 1) -> list[Candidate]:
        """The jobs (at most ``limit``, newest first) whose id starts or ends with the hex digits
        of ``text`` (ids.py: a part of an id as people type it)."""
        low, high, pattern = id_range(text)
        found: dict[uuid.UUID, Candidate] = {}
        for row in await self._store.insights.find_jobs(low, high, pattern, limit):
            found.setdefault(row["job_id"], Candidate(**dict(row)))
        return list(found.values())

    async def history(self, job_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """Every status change of a job: status, reason, at, worker_id, node, pid, message."""
        return await self._store.job_events(as_job_id(job_id))

    async def dependencies(self, job_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """The jobs a job waits (or waited) for: job_id, type_key, task_key, status."""
        return await self._store.job_dependencies(as_job_id(job_id))

    async def dependency_tree(
        self, job_id: uuid.UUID | str, depth: int = 8, rows: int = 300
    ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """The jobs above a job (those it depends on: dependent, job_id, type_key, task_key,
        status...) and below it (its dependents: depends_on, job_id, ...), ``depth`` levels and
        ``rows`` rows at most each way."""
        return await self._store.insights.dependency_tree(as_job_id(job_id), depth, rows)

    async def job_worker(self, job_id: uuid.UUID | str, worker_id: uuid.UUID) -> dict[str, Any]:
        """node, pid and alive of the worker that ran (or runs) a job (node and pid None when
        nothing says)."""
        return await self._store.insights.worker_of(as_job_id(job_id), worker_id)

    async def jobs_page(
        self,
        *,
        before: uuid.UUID | None = None,
        status: str | None = None,
        task_id: int | None = None,
        pattern: str | None = None,
        limit: int = 50,
        scan: int = 20_000,
        cut: int = 160,
    ) -> list[asyncpg.Record]:
        """The dashboard's job list: up to ``limit`` jobs older than ``before``, newest first,
        that match (``task_id``: of ``deployed_tasks()``; ``pattern``: a LIKE pattern of the
        arguments and messages, cut at ``cut`` characters). For an active ``status`` all jobs are
        looked at, else the ``scan`` jobs after ``before`` at most (``scan_end`` says where that
        stopped)."""
        return await self._store.insights.jobs_page(
            before=before, status=status, task_id=task_id, pattern=pattern, limit=limit, scan=scan, cut=cut
        )

    async def scan_end(self, before: uuid.UUID | None, scan: int) -> ScanEnd:
        """Where a bounded scan of ``jobs_page`` stopped, and whether older jobs remain."""
        return await self._store.insights.scan_end(before, scan)

    # -- the queue -------------------------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        """How many jobs there are of each status that has any. Exact for waiting, blocked and
        running (read from indexes); for complete, failed and cancelled exact below 100,000
        jobs in the table, else PostgreSQL's estimate (an exact count would read them all)."""
        return await self._store.status_counts()

    async def active_counts(self) -> dict[str, int]:
        """How many jobs are waiting, blocked and running: the queue's depth, read from indexes, so
        it stays cheap however many finished jobs the table keeps (``counts()`` reads them all)."""
        return await self._store.active_counts()

    async def queue_depth(self) -> list[TaskDepth]:
        """The queue's depth per task: the waiting (due), scheduled, blocked and running jobs of
        each task that has any, by name; read from indexes, as ``active_counts()``."""
        return await self._store.insights.depth()

    async def workers(self) -> list[dict[str, Any]]:
        """The workers that heartbeat: worker_id, node, pid, started_at, heartbeat_at,
        heartbeat_age and lapse (seconds), running (its jobs) and alive."""
        return await self._store.insights.workers()

    async def deployed_tasks(self) -> list[dict[str, Any]]:
        """task_id, type_key and task_key of every task deployed in the schema, by name."""
        return [dict(row) for row in await self._store.insights.tasks()]

    async def schema_version(self) -> int | None:
        """The version the schema was last deployed at (migrations applied), or None when it was
        never deployed."""
        return await self._store.insights.schema_version()

    async def schedules(self) -> list[dict[str, Any]]:
        """The periodic tasks' schedules as deployed: type_key, task_key, expression, timezone,
        arguments, priority, created_at, last_tick (the last tick fired), last_job_id and
        last_job_status (the job it created or deduped into), and next_tick (computed here)."""
        now = datetime.now(UTC)
        found = await self._store.list_schedules()
        for schedule in found:
            try:
                cron = Cron(schedule["expression"], schedule["arguments"], schedule["priority"], schedule["timezone"])
            except TaskDefinitionError:
                schedule["next_tick"] = None
            else:
                schedule["next_tick"] = cron.next_tick(now)
        return found

    # -- history: charts and metrics -------------------------------------------------------------

    async def clock(self, less: timedelta = timedelta(0)) -> datetime:
        """The database server's clock, less ``less``."""
        return await self._store.insights.clock(less)

    async def events_per_minute(self, whole: bool = True) -> tuple[list[asyncpg.Record], datetime]:
        """(minute, reason, n): the history's events per minute and reason over the last hour
        (``whole``), else the last three minutes; and the start of the first minute read."""
        return await self._store.insights.chart(whole)

    async def history_window(self, since: datetime, lag: timedelta) -> list[asyncpg.Record]:
        """What ``/metrics`` counts of the history in [since, clock - lag): rows (kind, task_id,
        label, n, seconds, upto), sql/dashboard.sql metrics_window."""
        return await self._store.insights.metrics_window(since, lag)

    async def watch(self, on_notification: Callable[[Notification | None], None], on_lost: Callable[[], None]) -> Watch:
        """A connection of its own that LISTENs on the schema's channel (``on_notification``
        gets each notification, ``on_lost`` is called when it ends) and reads the queue's
        overview and charts on that connection: the dashboard's live view. Close it when done."""
        return await self._store.watch(on_notification, on_lost)
