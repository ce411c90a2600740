"""The data-access layer: one typed method per statement, and the only code that runs the
library's SQL (LISTEN included). ``JobMaster``, the worker's services, and (through JobMaster's
read API) the dashboard and the CLI call these methods; the statements themselves are in
``sql/`` (queries.sql for plain statements, the functions for the rest), loaded by the Catalogue.

Every method of the worker's path takes the round-trip deadline (``timeout``) given at
construction, so that a server gone without a TCP reset cannot hang a worker; the inspecting
methods (jobs, counts...) take none, as a user's own queries would.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from .claimer import Claimed, Claimer
from .connection import read_only
from .deploy import deploy_schema
from .insights import Insights
from .notifications import Notification
from .pool import Connect, Pool
from .sql import Catalogue
from .startup import probe
from .ticks import Ticks
from .watch import Watch

__all__ = ("Store",)

logger = logging.getLogger(__name__)


class Store:
    """The statements of one schema, over a pool of connections (and, once jobs are claimed, the
    claim connection of its own: db.claimer)."""

    def __init__(self, sql: Catalogue, connect: Connect, pool_size: int, timeout: float) -> None:
        self.sql = sql
        self.timeout = timeout
        self._connect = connect
        self._pool_size = pool_size
        self._pool: Pool | None = None
        self.claimer = Claimer(sql, connect, self.pool, timeout)
        #: the scheduler's statements, on their own connection (db.ticks)
        self.ticks = Ticks(sql, connect, timeout)
        #: the reads of the dashboard and the CLI (db.insights)
        self.insights = Insights(sql, self.acquire)

    # -- connections -----------------------------------------------------------------------------

    async def pool(self) -> Pool:
        """The connection pool (its connections open on first use)."""
        if self._pool is None:
            self._pool = Pool(self._connect, max_size=self._pool_size)
        return self._pool

    async def open_connection(self) -> asyncpg.Connection:
        """A connection of its own (the LISTEN connection)."""
        return await self._connect()

    async def listen(self, conn: asyncpg.Connection, callback: Callable[[Any, int, str, str], None]) -> None:
        """LISTENs on the schema's channel on ``conn`` (a connection of its own); ``callback`` is
        asyncpg's (connection, pid, channel, payload)."""
        await conn.add_listener(self.sql.channel, callback)

    async def ping(self, conn: asyncpg.Connection, deadline: float) -> None:
        """A round trip on ``conn`` within ``deadline`` seconds: raises if the connection is gone."""
        await conn.execute("SELECT 1", timeout=deadline)

    async def watch(self, on_notification: Callable[[Notification | None], None], on_lost: Callable[[], None]) -> Watch:
        """The dashboard's live connection (db.watch), LISTENing."""
        return await Watch.open(await self._connect(), self.insights, self.sql.channel, on_notification, on_lost)

    async def probe(self) -> None:
        """Opens a connection and closes it: raises unless a read-write server answered (a
        standby raises TargetServerAttributeNotMatched: db.faults.read_only_server)."""
        await probe(self._connect, self.timeout)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self.pool()
        async with pool.acquire() as conn:
            yield conn

    def discard_idle_connections(self) -> None:
        """Closes the connections not in use (after a fault they are suspect); they reopen on
        demand."""
        if self._pool is not None:
            self._pool.discard_idle()
        self.claimer.discard_idle()
        self.ticks.discard_idle()

    async def close(self, worker_id: uuid.UUID | None = None) -> None:
        """Closes every connection; with ``worker_id``, first forgets that worker's row."""
        await self.claimer.close()
        await self.ticks.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if worker_id is not None:
                with contextlib.suppress(Exception):
                    async with pool.acquire() as conn:
                        if not await read_only(conn, self.timeout):
                            await conn.execute(self.sql["remove_worker"], worker_id, timeout=self.timeout)
            await pool.close()

    async def deploy(self, registry: Any, *, reset: bool, prune: bool, retention: timedelta | None) -> None:
        async with self.acquire() as conn:
            await deploy_schema(conn, self.sql, registry, reset=reset, prune=prune, retention=retention)

    # -- inserting -------------------------------------------------------------------------------

    # ``run_at``, ``run_in``: when the jobs are to run, a time or a delay from the server's now
    # (both None: now); ``traceparent``, ``tracestate``: the W3C trace context they are inserted in
    # (None: none; checked in SQL, a malformed one is not stored)

    async def insert_job_fast(
        self,
        type_key: str,
        task_key: str,
        priority: int,
        arguments: str | None,
        run_at: datetime | None = None,
        run_in: timedelta | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> uuid.UUID | None:
        """The common insert as one plain statement; None when it needs the full path
        (dependencies, "ALL", a twin, a refusal)."""
        pool = await self.pool()
        job_id: uuid.UUID | None = await pool.fetchval(
            self.sql["insert_job_fast"],
            type_key,
            task_key,
            priority,
            arguments,
            run_at,
            run_in,
            traceparent,
            tracestate,
        )
        return job_id

    async def insert_job(
        self,
        type_key: str,
        task_key: str,
        priority: int,
        arguments: str | None,
        run_at: datetime | None = None,
        run_in: timedelta | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> uuid.UUID:
        pool = await self.pool()
        job_id: uuid.UUID = await pool.fetchval(
            self.sql["insert_job"], type_key, task_key, priority, arguments, run_at, run_in, traceparent, tracestate
        )
        return job_id

    async def insert_jobs(
        self,
        type_key: str,
        task_key: str,
        priority: int,
        batch: str,
        run_at: datetime | None = None,
        run_in: timedelta | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> list[uuid.UUID]:
        """``batch``: the elements' arguments as one JSON array."""
        pool = await self.pool()
        ids: list[uuid.UUID] = await pool.fetchval(
            self.sql["insert_jobs"], type_key, task_key, priority, batch, run_at, run_in, traceparent, tracestate
        )
        return ids

    # -- the worker's path -----------------------------------------------------------------------

    async def task_ids(self) -> list[asyncpg.Record]:
        """(task_id, type_key, task_key) of every deployed task."""
        pool = await self.pool()
        rows: list[asyncpg.Record] = await pool.fetch(self.sql["task_ids"], timeout=self.timeout)
        return rows

    async def heartbeat(
        self, worker_id: uuid.UUID, node: str, pid: int, lapse: float, conn: asyncpg.Connection | None = None
    ) -> None:
        """Records a worker's heartbeat, on ``conn`` (the LISTEN connection) or the pool's."""
        runner = conn if conn is not None else await self.pool()
        await runner.execute(self.sql["heartbeat"], worker_id, node, pid, lapse, timeout=self.timeout)

    async def remove_worker(self, worker_id: uuid.UUID) -> None:
        """Forgets a worker's row (at shutdown). On a read-only server (a standby, reached after
        a failover) no DELETE is attempted: the row lapses, as a line says."""
        pool = await self.pool()
        async with pool.acquire() as conn:
            if await read_only(conn, self.timeout):
                logger.warning("server is read-only (a standby?): this worker's row is not removed; it lapses")
                return
            await conn.execute(self.sql["remove_worker"], worker_id, timeout=self.timeout)

    async def claim(self, worker_id: uuid.UUID, task_ids: list[int], limit: int, units: int) -> list[Claimed]:
        """The claimed jobs (db/claimer.py CLAIMED: job_id, task_id, priority, arguments, attempts,
        tries, trace_context)."""
        return await self.claimer.claim(worker_id, task_ids, limit, units)

    async def seconds_to_next_run(self, task_ids: list[int]) -> float | None:
        """In how many seconds a job of these tasks may be claimable: 0 or less when one is
        (held by another claimer, or held back by a process_limit), else when the earliest scheduled
        one falls due (None: none waits)."""
        if self.claimer.due_in_known:  # the last claim said it
            return self.claimer.due_in
        pool = await self.pool()
        seconds: float | None = await pool.fetchval(self.sql["seconds_to_next_run"], task_ids, timeout=self.timeout)
        return seconds

    async def complete_jobs(
        self, worker_id: uuid.UUID, ids: Sequence[uuid.UUID], attempts: Sequence[int], results: Sequence[str | None]
    ) -> list[uuid.UUID]:
        """Records successes of jobs still held by (worker, attempt); returns the ids recorded."""
        pool = await self.pool()
        done: list[uuid.UUID] = await pool.fetchval(
            self.sql["complete_jobs"], worker_id, ids, attempts, results, timeout=self.timeout
        )
        return done

    async def fail_jobs(
        self,
        worker_id: uuid.UUID,
        ids: Sequence[uuid.UUID],
        attempts: Sequence[int],
        error_types: Sequence[str | None],
        messages: Sequence[str | None],
        tracebacks: Sequence[str | None],
        retry_delays: Sequence[float | None],
    ) -> list[uuid.UUID]:
        """Records failures (a retry delay: back to waiting then); returns the ids recorded."""
        pool = await self.pool()
        failed: list[uuid.UUID] = await pool.fetchval(
            self.sql["fail_jobs"],
            worker_id,
            ids,
            attempts,
            error_types,
            messages,
            tracebacks,
            retry_delays,
            timeout=self.timeout,
        )
        return failed

    async def outcomes_recorded_by(self, worker_id: uuid.UUID, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Of jobs whose outcome this worker did not find held, those whose outcome it recorded
        already (an earlier try committed, its answer lost); the others were fenced out."""
        pool = await self.pool()
        rows = await pool.fetch(self.sql["outcomes_recorded_by"], worker_id, ids, timeout=self.timeout)
        return {row["job_id"] for row in rows}

    async def release_jobs(self, worker_id: uuid.UUID, ids: Sequence[uuid.UUID], attempts: Sequence[int]) -> None:
        """Puts jobs held by (worker, attempt) back to waiting, their start given back."""
        pool = await self.pool()
        await pool.fetchval(self.sql["release_jobs"], worker_id, ids, attempts, timeout=self.timeout)

    async def held_jobs(self, worker_id: uuid.UUID) -> list[tuple[uuid.UUID, int]]:
        """(job id, attempts) of the jobs the database says this worker holds."""
        pool = await self.pool()
        rows = await pool.fetch(self.sql["held_jobs"], worker_id, timeout=self.timeout)
        return [(row["job_id"], row["attempts"]) for row in rows]

    async def rescue_jobs(self) -> int:
        """Puts back (or fails, past their task's rescues) the jobs of lapsed workers."""
        pool = await self.pool()
        rescued: int = await pool.fetchval(self.sql["rescue_jobs"], timeout=self.timeout)
        return rescued

    async def set_abandoned(self, job_id: uuid.UUID, abandoned: bool) -> None:
        """Marks a job whose thread runs on after a cancel or timeout (process_limit counts it)."""
        pool = await self.pool()
        await pool.execute(self.sql["set_abandoned"], job_id, abandoned, timeout=self.timeout)

    # -- retention -------------------------------------------------------------------------------

    async def prune_jobs(self, older_than: timedelta | None, max_rows: int) -> int:
        """Deletes one batch of prunable finished jobs and their history; how many jobs went."""
        pool = await self.pool()
        deleted: int = await pool.fetchval(self.sql["prune_jobs"], older_than, max_rows)
        return deleted

    async def prune_jobs_if_free(self, max_rows: int) -> int | None:
        """The worker's background pruning: one batch by each task's retention, unless another
        worker is pruning this schema (None then)."""
        pool = await self.pool()
        deleted: int | None = await pool.fetchval(
            self.sql["prune_jobs_if_free"], self.sql.prune_lock, max_rows, timeout=self.timeout
        )
        return deleted

    async def count_prunable_jobs(self, older_than: timedelta | None) -> int:
        pool = await self.pool()
        count: int = await pool.fetchval(self.sql["count_prunable_jobs"], older_than)
        return count

    # -- inspecting and managing -----------------------------------------------------------------

    async def get_job(self, job_id: uuid.UUID) -> asyncpg.Record | None:
        pool = await self.pool()
        row: asyncpg.Record | None = await pool.fetchrow(self.sql["get_job"], job_id)
        return row

    async def list_jobs(
        self, status: str | None, type_key: str | None, task_key: str | None, limit: int
    ) -> list[asyncpg.Record]:
        pool = await self.pool()
        rows: list[asyncpg.Record] = await pool.fetch(self.sql["list_jobs"], status, type_key, task_key, limit)
        return rows

    async def status_counts(self) -> dict[str, int]:
        pool = await self.pool()
        # the statuses that have jobs, as a GROUP BY would give them
        return {row["status"]: row["count"] for row in await pool.fetch(self.sql["status_counts"]) if row["count"]}

    async def active_counts(self) -> dict[str, int]:
        pool = await self.pool()
        [row] = await pool.fetch(self.sql["active_counts"])
        return {"waiting": row["waiting"], "blocked": row["blocked"], "running": row["running"]}

    async def job_events(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        pool = await self.pool()
        return [dict(row) for row in await pool.fetch(self.sql["job_events"], job_id)]

    async def job_dependencies(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        pool = await self.pool()
        return [dict(row) for row in await pool.fetch(self.sql["job_dependencies"], job_id)]

    async def list_schedules(self) -> list[dict[str, Any]]:
        pool = await self.pool()
        return [dict(row) for row in await pool.fetch(self.sql["list_schedules"])]

    async def cancel_job(self, job_id: uuid.UUID) -> str | None:
        """The job's status before (None: no such job)."""
        pool = await self.pool()
        before: str | None = await pool.fetchval(self.sql["cancel_job"], job_id)
        return before

    async def retry_job(self, job_id: uuid.UUID) -> uuid.UUID | None:
        """The id queued (the job's, or an identical active job's); None: no such job."""
        pool = await self.pool()
        new_id: uuid.UUID | None = await pool.fetchval(self.sql["retry_job"], job_id)
        return new_id
