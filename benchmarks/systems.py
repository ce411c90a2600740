"""The systems compared, each configured as its own docs recommend for speed, behind one small
interface: reset, enqueue (one per call or bulk), count what is left, verify exactly-once, and the
command line of a worker process (``benchmarks.peer_worker``).

Job kinds: ``async`` and ``sync`` no-ops, and ``probe``, which appends ``i time`` to the file
named by ``BENCH_PROBE_FILE`` (insert -> start latency)."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, ClassVar

import asyncpg

from jobmaster_async import JobMaster

BULK_SLICE = 5000  # jobs per bulk call

JOBMASTER_TASKS = {"async": "noop_async", "sync": "noop_sync", "probe": "probe_file"}


class System:
    """One system: a producer client (``open``/``close``), its schema, its worker command."""

    name: ClassVar[str]

    async def reset(self, dsn: str) -> None:
        """Drops and re-creates the system's schema."""

    async def open(self, dsn: str) -> None:
        """Opens the producer client."""

    async def close(self) -> None: ...

    async def enqueue_each(self, kind: str, ids: range) -> None:
        """One call per job."""

    async def enqueue_bulk(self, kind: str, ids: range) -> None:
        """The system's fastest bulk API, BULK_SLICE jobs per call."""

    async def remaining(self, conn: asyncpg.Connection) -> int:
        """Jobs not done yet."""
        raise NotImplementedError

    async def verify(self, conn: asyncpg.Connection, count: int) -> None:
        """Raises unless exactly ``count`` jobs each ran exactly once."""

    def worker_argv(self, dsn: str, kind: str, concurrency: int) -> list[str]:
        return [sys.executable, "-m", "benchmarks.peer_worker", self.name, dsn, kind, str(concurrency)]


def _slices(ids: range) -> list[range]:
    return [ids[s : s + BULK_SLICE] for s in range(0, len(ids), BULK_SLICE)]


class JobmasterSystem(System):
    name = "jobmaster_async"
    schema = "bench"
    jm: JobMaster

    async def reset(self, dsn: str) -> None:
        import benchmarks.bench_tasks  # noqa: F401

        async with JobMaster(dsn, schema=self.schema) as jm:
            await jm.deploy(_reset=True)

    async def open(self, dsn: str) -> None:
        self.jm = JobMaster(dsn, schema=self.schema)

    async def close(self) -> None:
        await self.jm.close()

    async def enqueue_each(self, kind: str, ids: range) -> None:
        for i in ids:
            await self.jm.insert_job("bench_tasks", JOBMASTER_TASKS[kind], 0, {"i": i})

    async def enqueue_bulk(self, kind: str, ids: range) -> None:
        for part in _slices(ids):
            await self.jm.insert_jobs("bench_tasks", JOBMASTER_TASKS[kind], 0, [{"i": i} for i in part])

    async def remaining(self, conn: asyncpg.Connection) -> int:
        """Through active_counts(), the queue's depth as users read it: finished jobs stay in the
        table, and a plain count(*) over the active statuses visits each of them until vacuum."""
        return int(await conn.fetchval(f"SELECT waiting + blocked + running FROM {self.schema}.active_counts()"))

    async def verify(self, conn: asyncpg.Connection, count: int) -> None:
        row = await conn.fetchrow(
            f"SELECT count(*) FILTER (WHERE status = 'complete' AND attempts = 1) AS once, count(*) AS jobs,"
            f" (SELECT count(*) FROM {self.schema}.job_events WHERE status = 'running') AS starts"
            f" FROM {self.schema}.jobs"
        )
        assert row is not None
        if not row["once"] == row["jobs"] == row["starts"] == count:
            raise AssertionError(f"{self.name}: not exactly once: {dict(row)} for {count} jobs")


class PgqueuerSystem(System):
    """pgqueuer 1.6: asyncpg driver, batch_size 100 (its docs' advice for throughput), bulk
    enqueue with lists."""

    name = "pgqueuer"
    entrypoints: ClassVar[dict[str, str]] = {"async": "noop_async", "sync": "noop_sync", "probe": "probe"}
    conn: asyncpg.Connection
    queries: Any

    async def reset(self, dsn: str) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        conn = await asyncpg.connect(dsn)
        try:
            queries = Queries(AsyncpgDriver(conn))
            with contextlib.suppress(Exception):  # nothing installed yet
                await queries.uninstall()
            await queries.install()
        finally:
            await conn.close()

    async def open(self, dsn: str) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        self.conn = await asyncpg.connect(dsn)
        self.queries = Queries(AsyncpgDriver(self.conn))

    async def close(self) -> None:
        await self.conn.close()

    async def enqueue_each(self, kind: str, ids: range) -> None:
        for i in ids:
            await self.queries.enqueue(self.entrypoints[kind], json.dumps({"i": i}).encode(), 0)

    async def enqueue_bulk(self, kind: str, ids: range) -> None:
        for part in _slices(ids):
            n = len(part)
            payloads = [json.dumps({"i": i}).encode() for i in part]
            await self.queries.enqueue([self.entrypoints[kind]] * n, payloads, [0] * n)

    async def remaining(self, conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("SELECT count(*) FROM pgqueuer"))

    async def verify(self, conn: asyncpg.Connection, count: int) -> None:
        done = await conn.fetchval("SELECT count(DISTINCT job_id) FROM pgqueuer_log WHERE status = 'successful'")
        logged = await conn.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
        left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        if not (done == logged == count and left == 0):
            raise AssertionError(f"{self.name}: not exactly once: {done} distinct, {logged} logged, {left} left")


class ProcrastinateSystem(System):
    """procrastinate 3.10: psycopg connector, LISTEN/NOTIFY, worker concurrency as given,
    batch_defer_async for bulk."""

    name = "procrastinate"
    app: Any

    async def reset(self, dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("DROP SCHEMA IF EXISTS procrastinate CASCADE; CREATE SCHEMA procrastinate")
        finally:
            await conn.close()
        from benchmarks.peer_worker import procrastinate_app

        app = procrastinate_app(dsn)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    async def open(self, dsn: str) -> None:
        from benchmarks.peer_worker import procrastinate_app

        self.app = procrastinate_app(dsn)
        await self.app.open_async()

    async def close(self) -> None:
        await self.app.close_async()

    def _task(self, kind: str) -> Any:
        return self.app.tasks[f"noop_{kind}" if kind != "probe" else "probe"]

    async def enqueue_each(self, kind: str, ids: range) -> None:
        task = self._task(kind)
        for i in ids:
            await task.defer_async(i=i)

    async def enqueue_bulk(self, kind: str, ids: range) -> None:
        task = self._task(kind)
        for part in _slices(ids):
            await task.batch_defer_async(*({"i": i} for i in part))

    async def remaining(self, conn: asyncpg.Connection) -> int:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE status IN ('todo', 'doing')"
            )
        )

    async def verify(self, conn: asyncpg.Connection, count: int) -> None:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'succeeded') AS ok, count(*) AS jobs,"
            " (SELECT count(*) FROM procrastinate.procrastinate_events WHERE type = 'started') AS starts"
            " FROM procrastinate.procrastinate_jobs"
        )
        assert row is not None
        if not row["ok"] == row["jobs"] == row["starts"] == count:
            raise AssertionError(f"{self.name}: not exactly once: {dict(row)} for {count} jobs")


SYSTEMS: dict[str, type[System]] = {s.name: s for s in (JobmasterSystem, PgqueuerSystem, ProcrastinateSystem)}
