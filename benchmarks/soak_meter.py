"""The soak's measuring: every interval, on a connection of its own, what the worker did and
what it cost (``python -m benchmarks soak``)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from typing import Any

import asyncpg
import psutil

from benchmarks.soak_report import BUCKET, Sample
from jobmaster_async.db.sql import quote_identifier

TYPE_KEY = "soak_tasks"
#: a window ends this many seconds before it is read, so that its commits are all visible
LAG = 2.0


class Meter:
    """Reads one window's figures on a connection of its own."""

    def __init__(self, conn: asyncpg.Connection, schema: str, worker: psutil.Process, server_pid: int | None) -> None:
        self.conn = conn
        self.q = quote_identifier(schema)
        self.worker = worker
        self.harness = psutil.Process()
        self.server = psutil.Process(server_pid) if server_pid else None
        self._server_cpu: dict[int, float] = {}
        self._cpu_before = (self._cpu(worker), self._cpu(self.harness), self._server_seconds())
        self._when = time.monotonic()
        psutil.cpu_percent()
        self.dependent_task = 0
        self.window_start: dt.datetime | None = None
        self.inserted_before = 0

    async def start(self) -> None:
        await self.conn.execute("SET jit = off")
        self.dependent_task = await self.conn.fetchval(
            f"SELECT task_id FROM {self.q}.tasks WHERE type_key = $1 AND task_key = 'dependent'", TYPE_KEY
        )
        self.window_start = await self.conn.fetchval("SELECT clock_timestamp()")
        self._cpu_before = (self._cpu(self.worker), self._cpu(self.harness), self._server_seconds())
        self._when = time.monotonic()
        psutil.cpu_percent()

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def _server_seconds(self) -> float:
        """CPU seconds of the server's processes so far (those that exited since the last call
        count up to that call)."""
        if self.server is None:
            return 0.0
        for process in [self.server, *self.server.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                self._server_cpu[process.pid] = self._cpu(process)
        return sum(self._server_cpu.values())

    async def _timed(self, parts: dict[str, float], name: str, query: str, *args: Any) -> list[asyncpg.Record]:
        began = time.perf_counter()
        rows: list[asyncpg.Record] = await self.conn.fetch(query, *args)
        parts[name] = (time.perf_counter() - began) * 1000
        return rows

    async def sample(self, phase: str, t: float, inserted: int, pruned: int, lag: float = LAG) -> Sample:
        began = time.perf_counter()
        q, a = self.q, self.window_start
        parts: dict[str, float] = {}
        assert a is not None
        b = await self.conn.fetchval("SELECT clock_timestamp() - $1::float8 * interval '1 second'", lag)
        [events] = await self._timed(
            parts,
            "history",
            f"""SELECT count(*) FILTER (WHERE reason = 'completed') AS completed,
                       count(*) FILTER (WHERE reason = 'failed') AS failed,
                       count(*) FILTER (WHERE reason = 'retried') AS retried
                  FROM {q}.job_events WHERE at >= $1 AND at < $2""",
            a,
            b,
        )
        latency = await self._timed(
            parts,
            "latency",
            f"""WITH started AS (
                    SELECT floor(extract(epoch FROM started_at - $1::timestamptz) / $4)::int AS bucket,
                           extract(epoch FROM started_at - created_at) * 1000 AS ms
                      FROM {q}.jobs
                     WHERE started_at >= $1 AND started_at < $2 AND attempts = 1 AND task_id <> $3)
                SELECT bucket, count(*) AS n,
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
                       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99
                  FROM started GROUP BY GROUPING SETS ((), (bucket)) ORDER BY bucket NULLS FIRST""",
            a,
            b,
            self.dependent_task,
            BUCKET,
        )
        tables = await self._timed(
            parts,
            "sizes",
            """SELECT c.relname, pg_relation_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes,
                      s.n_live_tup, s.n_dead_tup, s.autovacuum_count AS autovacuums
                 FROM pg_class AS c JOIN pg_stat_user_tables AS s ON s.relid = c.oid
                WHERE c.oid IN ($1::regclass, $2::regclass)""",
            f"{q}.jobs",
            f"{q}.job_events",
        )
        sizes = {r["relname"]: r for r in tables}
        [active] = await self._timed(parts, "active", f"SELECT waiting, blocked, running FROM {q}.active_counts()")
        measure_ms = (time.perf_counter() - began) * 1000

        now = time.monotonic()
        elapsed, self._when = now - self._when, now
        cpu = (self._cpu(self.worker), self._cpu(self.harness), self._server_seconds())
        worker_cpu, harness_cpu, server_cpu = (
            (x - y) / elapsed * 100 for x, y in zip(cpu, self._cpu_before, strict=True)
        )
        self._cpu_before = cpu
        overall = latency[0] if latency and latency[0]["bucket"] is None else None
        sample = Sample(
            phase=phase,
            t=t,
            window=(b - a).total_seconds(),
            elapsed=elapsed,
            completed=events["completed"],
            failed=events["failed"],
            retried=events["retried"],
            inserted=inserted - self.inserted_before,
            started=overall["n"] if overall else 0,
            p50_ms=overall["p50"] if overall else None,
            p99_ms=overall["p99"] if overall else None,
            buckets=[
                [a.timestamp() + r["bucket"] * BUCKET, r["n"], r["p50"], r["p99"]]
                for r in latency
                if r["bucket"] is not None
            ],
            jobs_table=sizes["jobs"]["table_bytes"],
            jobs_index=sizes["jobs"]["index_bytes"],
            events_table=sizes["job_events"]["table_bytes"],
            events_index=sizes["job_events"]["index_bytes"],
            jobs_dead=sizes["jobs"]["n_dead_tup"],
            events_dead=sizes["job_events"]["n_dead_tup"],
            jobs_rows=sizes["jobs"]["n_live_tup"],
            events_rows=sizes["job_events"]["n_live_tup"],
            jobs_autovacuums=sizes["jobs"]["autovacuums"],
            events_autovacuums=sizes["job_events"]["autovacuums"],
            waiting=active["waiting"],
            blocked=active["blocked"],
            running=active["running"],
            worker_rss=self.worker.memory_info().rss,
            worker_cpu=worker_cpu,
            harness_cpu=harness_cpu,
            server_cpu=server_cpu if self.server else None,
            system_cpu=psutil.cpu_percent(),
            load1=os.getloadavg()[0],
            pruned=pruned,
            measure_ms=measure_ms,
            measure_parts=parts,
        )
        self.window_start, self.inserted_before = b, inserted
        return sample


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
