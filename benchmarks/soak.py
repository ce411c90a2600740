"""Soak: a steady load for minutes, with retention and background pruning, watched for drift.

    python -m benchmarks soak [--minutes 10 | --quick] [--rate 2000] [--dsn DSN]
                              [--out benchmarks/results/soak.png] [--json soak.json]

- Load: a producer inserts ``--rate`` jobs/s with realistic arguments (bench_tasks:
  a path, an e-mail, a float, a nested object) on a fixed schedule, one tick every 50 ms, with
  ``insert_jobs`` (one call per task and tick). Of every 20 jobs: 1 is a ``dependent``, which
  needs a ``base`` job with the same key (drawn from a pool of ``KEYS``) complete within the last
  36 s (a fresh one is linked, else the insert creates one); 2 are ``work`` jobs that raise on
  their first attempt and complete on their one retry; 17 are plain ``work`` jobs. All no-ops.
- One worker process (``benchmarks.soak_worker``, concurrency 50): every task keeps its finished
  jobs for 1 minute, the worker prunes in the background every ~15 s, retries after 0.1 s.
- Every ``--interval`` seconds (30; 10 with ``--quick``), on a connection of its own: jobs
  completed in the interval (the history's 'completed' rows, by its index on ``at``; the
  window ends 2 s back so that every commit in it is visible), insert -> start p50/p99 of the
  first attempts started in it (``started_at - created_at``; ``dependent`` jobs left out, since
  they wait for their dependency by design), also per 5 s, the sizes of the jobs and job_events
  tables and of their indexes, their dead tuples and exact row counts, the queue's depth, and the
  worker's RSS and CPU.
- At the end the producer stops, the worker drains the queue and stops; every inserted job must
  have completed, failed for good or still be active (else it is counted as lost).

Prints a markdown table of the intervals and the goals (last interval's p99 within 1.5x the
first's; table and index sizes flat after the first retention: the size at 2x (retention + prune
interval) against the end; worker RSS growth at most 10 % from the end of the first interval),
and draws the chart (``--out``: a .png, else soak.png in that directory). Without ``--dsn`` it
starts a temporary embedded server with the benchmarks' settings (durable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from benchmarks.bench_tasks import realistic_arguments
from benchmarks.cli import Server, alias, results_of
from benchmarks.common import wait_workers
from benchmarks.soak_tasks import RETENTION
from benchmarks.soak_worker import PRUNE_INTERVAL
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier

ROOT = Path(__file__).parent.parent
TYPE_KEY = "soak_tasks"
#: seconds between two producer ticks
TICK = 0.05
#: the pool of dependency keys: with ~100 dependents/s and a 36 s freshness window, about half
#: of them find a fresh base job and half create one
KEYS = 3000
#: producer ticks inserting at once (each one round trip per task after the other)
IN_FLIGHT = 4
#: a window ends this many seconds before it is read, so that its commits are all visible
LAG = 2.0
#: latency buckets within a window (seconds), to compare prunings with the rest
BUCKET = 5.0
#: worker concurrency
CONCURRENCY = 50
#: how long the worker may take to drain the queue after the producer stops
DRAIN_LIMIT = 300.0
MB = 2**20


# ------------------------------------------------------------------------------------------------
# The producer
# ------------------------------------------------------------------------------------------------


@dataclass
class Producer:
    jm: JobMaster
    rate: float
    rng: random.Random = field(default_factory=lambda: random.Random(18))
    #: jobs handed to insert_jobs so far (their ``i``)
    scheduled: int = 0
    #: jobs whose insert returned, by kind
    work: int = 0
    fail_once: int = 0
    dependents: int = 0
    #: the furthest a tick fell behind its schedule (seconds): it waits while IN_FLIGHT ticks are
    #: still inserting
    max_behind: float = 0.0
    #: seconds each insert_jobs call took, by task
    calls: dict[str, list[float]] = field(default_factory=lambda: {"work": [], "dependent": []})
    _errors: list[BaseException] = field(default_factory=list)

    @property
    def inserted(self) -> int:
        return self.work + self.dependents

    async def run(self, seconds: float) -> None:
        """Inserts ``rate`` jobs a second for ``seconds``: at tick k, the jobs due by k * TICK,
        while the ticks before may still be inserting (at most IN_FLIGHT ticks at once)."""
        start = time.monotonic()
        slots = asyncio.Semaphore(IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()
        for k in range(1, round(seconds / TICK) + 1):
            due_at = start + k * TICK
            await asyncio.sleep(max(0.0, due_at - time.monotonic()))
            await slots.acquire()
            if self._errors:
                raise self._errors[0]
            self.max_behind = max(self.max_behind, time.monotonic() - due_at)
            first, last = self.scheduled, round(self.rate * k * TICK)
            self.scheduled = last
            work: list[dict[str, Any]] = []
            dependents: list[dict[str, Any]] = []
            for i in range(first, last):
                arguments = realistic_arguments(i)
                if i % 20 == 0:
                    dependents.append({"key": self.rng.randrange(KEYS), **arguments})
                else:
                    if i % 10 == 1:
                        arguments["fail_once"] = True
                    work.append(arguments)
            tick = asyncio.create_task(self._insert(work, dependents, slots))
            running.add(tick)
            tick.add_done_callback(running.discard)
        await asyncio.gather(*running)
        if self._errors:
            raise self._errors[0]

    async def _insert(
        self, work: list[dict[str, Any]], dependents: list[dict[str, Any]], slots: asyncio.Semaphore
    ) -> None:
        try:
            if work:
                began = time.perf_counter()
                await self.jm.insert_jobs(TYPE_KEY, "work", 0, work)
                self.calls["work"].append(time.perf_counter() - began)
                self.work += len(work)
                self.fail_once += sum(1 for a in work if a.get("fail_once"))
            if dependents:
                began = time.perf_counter()
                await self.jm.insert_jobs(TYPE_KEY, "dependent", 0, dependents)
                self.calls["dependent"].append(time.perf_counter() - began)
                self.dependents += len(dependents)
        except Exception as exc:
            self._errors.append(exc)
        finally:
            slots.release()


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    phase: str  # load, drain (the producer has stopped) or tail (the last, partial window)
    t: float  # seconds from the start of the load to this sample
    window: float  # seconds of server time the window covers
    elapsed: float  # seconds since the sample before (inserted/s is over these)
    completed: int
    failed: int
    retried: int
    inserted: int  # by the producer in the interval
    started: int  # first attempts started in the window (dependents left out)
    p50_ms: float | None
    p99_ms: float | None
    buckets: list[list[float]]  # [start (epoch s), jobs, p50 ms, p99 ms], BUCKET s each
    jobs_table: int
    jobs_index: int
    events_table: int
    events_index: int
    jobs_dead: int
    events_dead: int
    jobs_rows: int  # live rows (the statistics' count)
    events_rows: int
    jobs_autovacuums: int
    events_autovacuums: int
    waiting: int
    blocked: int
    running: int
    worker_rss: int
    worker_cpu: float  # % of one core over the interval
    harness_cpu: float  # this process: the producer and the measuring
    server_cpu: float | None  # the embedded server's processes, % of one core
    system_cpu: float  # the whole machine, % of all cores
    load1: float
    pruned: int  # by the worker so far
    measure_ms: float  # what measuring took
    measure_parts: dict[str, float]  # ms of each of its statements

    @property
    def backlog(self) -> int:
        return self.waiting + self.blocked + self.running


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


def read_stats(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"counts": {}, "pruned": 0, "prunings": []}
    return data


def start_worker(dsn: str, schema: str, stats_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "benchmarks.soak_worker", dsn, schema, str(CONCURRENCY), str(stats_path)]
    return subprocess.Popen(command, cwd=ROOT, env=env)


async def deploy(dsn: str) -> str:
    """A fresh schema with the soak's tasks (each keeps its finished jobs for RETENTION)."""
    schema = f"soak_{uuid.uuid4().hex[:8]}"
    async with JobMaster(dsn, schema=schema, retention=RETENTION) as jm:
        await jm.deploy()
    return schema


async def soak(dsn: str, seconds: float, rate: float, interval: float, server_pid: int | None) -> dict[str, Any]:
    schema = await deploy(dsn)
    q = quote_identifier(schema)
    conn = await asyncpg.connect(dsn)
    scratch = Path(tempfile.mkdtemp(prefix="soak-"))
    stats_path = scratch / "worker.json"
    process = start_worker(dsn, schema, stats_path)
    samples: list[Sample] = []
    try:
        await wait_workers(conn, schema, 1)
        meter = Meter(conn, schema, psutil.Process(process.pid), server_pid)
        await meter.start()
        async with JobMaster(dsn, schema=schema, retention=RETENTION) as jm:
            producer = Producer(jm, rate)
            started, wall_start = time.monotonic(), time.time()
            producing = asyncio.create_task(producer.run(seconds))

            async def take(phase: str, lag: float = LAG) -> None:
                if process.poll() is not None:
                    raise RuntimeError("the worker process died (its error is above)")
                pruned = read_stats(stats_path).get("pruned", 0)
                sample = await meter.sample(phase, time.monotonic() - started, producer.inserted, pruned, lag)
                samples.append(sample)
                p99 = f"{sample.p99_ms:.1f}" if sample.p99_ms is not None else "-"
                print(
                    f"[{sample.t:6.0f} s] {phase}: {sample.completed / sample.window:,.0f} done/s, p99 {p99} ms, "
                    f"backlog {sample.backlog:,}, jobs {sample.jobs_rows:,} rows, "
                    f"{(sample.jobs_table + sample.jobs_index) / MB:.1f} MB, "
                    f"history {(sample.events_table + sample.events_index) / MB:.1f} MB, "
                    f"RSS {sample.worker_rss / MB:.1f} MB; CPU % worker {sample.worker_cpu:.0f}, "
                    f"harness {sample.harness_cpu:.0f}, server {sample.server_cpu or 0:.0f}, "
                    f"machine {sample.system_cpu:.0f}; producer behind {producer.max_behind:.2f} s; measuring "
                    + ", ".join(f"{k} {v:.0f}" for k, v in sample.measure_parts.items())
                    + " ms",
                    flush=True,
                )

            next_at = started + interval
            while not producing.done():
                await asyncio.wait({producing}, timeout=max(0.0, next_at - time.monotonic()))
                if time.monotonic() >= next_at - 0.01:
                    await take("load")
                    next_at += interval
            await producing  # raises what the producer raised
            produced_for = time.monotonic() - started
            if time.monotonic() - next_at + interval > interval / 3:  # the load's last part, if not tiny
                await take("load")
                next_at = time.monotonic() + interval
            # the drain: sampled on, so that no history row is pruned before it was counted
            drain_deadline = time.monotonic() + DRAIN_LIMIT
            while time.monotonic() < drain_deadline:
                active = await conn.fetchrow(f"SELECT waiting, blocked, running FROM {q}.active_counts()")
                assert active is not None
                if active["waiting"] + active["blocked"] + active["running"] == 0:
                    break
                if time.monotonic() >= next_at:
                    await take("drain")
                    next_at += interval
                await asyncio.sleep(0.5)
            drained = time.monotonic() - started - produced_for
            await asyncio.sleep(LAG)
            await take("tail", lag=0.0)
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 60)
        worker = read_stats(stats_path)
        await asyncio.sleep(1.5)  # the worker's backends have reported their statistics
        end = await conn.fetchrow(
            f"""SELECT count(*) AS rows,
                       (SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = '{q}.jobs'::regclass) AS ever,
                       (SELECT n_tup_del FROM pg_stat_user_tables WHERE relid = '{q}.jobs'::regclass) AS deleted,
                       count(*) FILTER (WHERE t.task_key <> 'base' AND j.status IN ('waiting', 'blocked', 'running'))
                           AS active,
                       count(*) FILTER (WHERE t.task_key = 'base' AND j.status IN ('waiting', 'blocked', 'running'))
                           AS active_base,
                       count(*) FILTER (WHERE j.status = 'failed') AS failed
                  FROM {q}.jobs AS j JOIN {q}.tasks AS t USING (task_id)"""
        )
        assert end is not None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        with contextlib.suppress(Exception):
            await conn.execute(f"DROP SCHEMA {q} CASCADE")
        await conn.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "seconds": seconds,
        "wall_start": wall_start,
        "produced_for": produced_for,
        "drained_in": drained,
        "rate": rate,
        "interval": interval,
        "producer": {
            "inserted": producer.inserted,
            "work": producer.work,
            "fail_once": producer.fail_once,
            "dependents": producer.dependents,
            "max_behind": producer.max_behind,
            "calls": producer.calls,
        },
        "worker": worker,
        "end": dict(end),
        "samples": [asdict(s) for s in samples],
    }


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(samples: list[Sample]) -> str:
    lines = [
        "| t (s) | phase | inserted/s | completed/s | backlog | p50 / p99 ms | jobs MB (table + idx) "
        "| history MB (table + idx) | dead tuples jobs / history | live rows jobs / history "
        "| autovacuums jobs / history | worker RSS MB | CPU % worker / harness / server / machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in samples:
        server = "-" if s.server_cpu is None else f"{s.server_cpu:.0f}"
        lines.append(
            f"| {s.t:.0f} | {s.phase} | {s.inserted / s.elapsed:,.0f} | {s.completed / s.window:,.0f} | {s.backlog:,} "
            f"| {_ms(s.p50_ms)} / {_ms(s.p99_ms)} "
            f"| {s.jobs_table / MB:.1f} + {s.jobs_index / MB:.1f} "
            f"| {s.events_table / MB:.1f} + {s.events_index / MB:.1f} "
            f"| {s.jobs_dead:,} / {s.events_dead:,} | {s.jobs_rows:,} / {s.events_rows:,} "
            f"| {s.jobs_autovacuums} / {s.events_autovacuums} | {s.worker_rss / MB:.1f} "
            f"| {s.worker_cpu:.0f} / {s.harness_cpu:.0f} / {server} / {s.system_cpu:.0f} |"
        )
    return "\n".join(lines)


def _growth(before: float, after: float) -> float:
    return (after - before) / before * 100 if before else float("nan")


def goals(result: dict[str, Any], samples: list[Sample]) -> list[str]:
    """The goals, evaluated on the load's full intervals, and the count of lost jobs."""
    load = [s for s in samples if s.phase == "load"]
    full = [s for s in load if s.window > result["interval"] * 0.9]
    lines: list[str] = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    rate, seconds = result["rate"], result["produced_for"]
    producer = result["producer"]
    done = sum(s.completed for s in load)
    window = sum(s.window for s in load)
    backlogs = [s.backlog for s in full]
    sustained = done / window >= 0.97 * rate and (not backlogs or backlogs[-1] <= rate)
    lines.append(
        f"- Throughput: inserted {producer['inserted']:,} jobs in {seconds:.0f} s "
        f"({producer['inserted'] / seconds:,.0f}/s; a tick fell behind its schedule by {producer['max_behind']:.2f} s "
        f"at most); completed {done / window:,.0f}/s over the load (base jobs included), backlog at the load's "
        f"end {backlogs[-1] if backlogs else 0:,} (largest {max(backlogs, default=0):,}); drained in "
        f"{result['drained_in']:.1f} s: {'sustained' if sustained else 'NOT sustained'} at {rate:,.0f} jobs/s"
    )
    if len(full) >= 2 and full[0].p99_ms and full[-1].p99_ms:
        first, last = full[0].p99_ms, full[-1].p99_ms
        lines.append(
            f"- p99 of the last interval within 1.5x the first's: {last:.1f} ms against {first:.1f} ms "
            f"({last / first:.2f}x): {verdict(last <= 1.5 * first)}"
        )
    else:
        lines.append("- p99 of the last interval within 1.5x the first's: n/a (fewer than two full intervals)")

    settled_at = 2 * (RETENTION.total_seconds() + PRUNE_INTERVAL)
    settled = next((s for s in load if s.t >= settled_at - 1), None)
    if settled is not None and settled is not load[-1]:
        last_s = load[-1]
        parts = {
            "jobs table": (settled.jobs_table, last_s.jobs_table),
            "jobs indexes": (settled.jobs_index, last_s.jobs_index),
            "history table": (settled.events_table, last_s.events_table),
            "history indexes": (settled.events_index, last_s.events_index),
        }
        before = sum(b for b, _ in parts.values())
        after = sum(a for _, a in parts.values())
        detail = ", ".join(
            f"{name} {b / MB:.1f} -> {a / MB:.1f} MB ({_growth(b, a):+.0f} %)" for name, (b, a) in parts.items()
        )
        lines.append(
            f"- Sizes flat after the first retention (t = {settled.t:.0f} s against the end, t = {last_s.t:.0f} s): "
            f"{before / MB:.1f} -> {after / MB:.1f} MB in all ({_growth(before, after):+.1f} %; {detail}): "
            f"{verdict(_growth(before, after) <= 10)} (flat: at most +10 %)"
        )
    else:
        lines.append(f"- Sizes flat after the first retention: n/a (the load ended before t = {settled_at:.0f} s)")
    if len(full) >= 2:
        # finished jobs still in the table: about retention + the time since the last pruning's worth
        last_s = load[-1]
        finished = max(0, last_s.jobs_rows - last_s.backlog)
        per_second = last_s.completed / last_s.window
        kept = f", about {finished / per_second:.0f} s of completions" if per_second else ""
        lines.append(
            f"- Pruning keeping up: at the load's end the jobs table held about {last_s.jobs_rows:,} live rows "
            f"(the statistics' estimate), {last_s.backlog:,} of them queued and about {finished:,} finished{kept} "
            f"(retention {RETENTION.total_seconds():.0f} s, "
            f"pruning every {PRUNE_INTERVAL / 2:.1f}-{PRUNE_INTERVAL:.0f} s)"
        )

    if len(load) >= 2:
        first_rss, last_rss = load[0].worker_rss, load[-1].worker_rss
        growth = _growth(first_rss, last_rss)
        lines.append(
            f"- Worker RSS growth at most 10 % (end of the first interval to the end): {first_rss / MB:.1f} -> "
            f"{last_rss / MB:.1f} MB ({growth:+.1f} %; peak {max(s.worker_rss for s in samples) / MB:.1f} MB): "
            f"{verdict(growth <= 10)}"
        )

    worker, end = result["worker"], result["end"]
    counts = worker.get("counts", {})
    ran = counts.get("work", 0) + counts.get("dependent", 0)
    failed = sum(s.failed for s in samples)
    lost = producer["inserted"] - ran - failed - end["active"]
    lines.append(
        f"- Jobs lost: {lost:,} ({verdict(lost == 0)}): inserted {producer['inserted']:,}; the worker completed "
        f"{ran:,} of them ({counts.get('work', 0):,} work, {counts.get('dependent', 0):,} dependent); failed for "
        f"good {failed:,} (history); still active {end['active']:,}"
        + (f"; {-lost:,} runs more than once" if lost < 0 else "")
    )
    history_done = sum(s.completed for s in samples)
    worker_done = ran + counts.get("base", 0)
    retried = sum(s.retried for s in samples)
    base_jobs = counts.get("base", 0) + end["active_base"]
    rows_ok = end["ever"] == producer["inserted"] + base_jobs and end["ever"] - end["deleted"] == end["rows"]
    lines.append(
        f"- Cross-checks: completions in the history {history_done:,}, run by the worker {worker_done:,} "
        f"({counts.get('base', 0):,} base jobs its dependents created); first attempts that raised "
        f"{counts.get('raised', 0):,} of {producer['fail_once']:,} planned, retries in the history {retried:,}; "
        f"jobs table (statistics' counters): {end['ever']:,} rows inserted (= inserted + base jobs: "
        f"{'yes' if end['ever'] == producer['inserted'] + base_jobs else 'NO'}), {end['deleted']:,} deleted by "
        f"pruning, {end['rows']:,} left ({'consistent' if rows_ok else 'INCONSISTENT'})"
    )
    calls = producer.get("calls", {})
    if calls.get("work"):
        lines.append(
            "- Producer: insert_jobs round trips (p50 / p99 / max ms): "
            + "; ".join(
                f"{task} {len(v) and statistics.median(v) * 1000:.1f} / {_percentile(v, 0.99) * 1000:.1f} / "
                f"{max(v) * 1000:.1f} ({len(v):,} calls)"
                for task, v in calls.items()
                if v
            )
        )
    prunings = worker.get("prunings", [])
    if prunings:
        took = [p[1] - p[0] for p in prunings]
        lines.append(
            f"- Background pruning: {len(prunings)} prunings deleted {sum(int(p[2]) for p in prunings):,} jobs, "
            f"{statistics.median(int(p[2]) for p in prunings):,.0f} each (median) in "
            f"{statistics.median(took):.2f} s (median; longest {max(took):.2f} s)"
        )
        during, outside = prune_buckets(samples, prunings)
        if during and outside:
            lines.append(
                f"- p99 of {BUCKET:.0f} s buckets overlapping a pruning against the others (median of the buckets' "
                f"p99): {statistics.median(during):.1f} ms ({len(during)} buckets) against "
                f"{statistics.median(outside):.1f} ms ({len(outside)})"
            )
    measuring = [s.measure_ms for s in samples]
    lines.append(
        f"- Measuring took {statistics.median(measuring):.0f} ms per interval (median; longest {max(measuring):.0f} ms)"
    )
    return lines


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def prune_buckets(samples: list[Sample], prunings: list[list[float]]) -> tuple[list[float], list[float]]:
    """The p99s of the load's latency buckets that overlap a pruning, and of the others."""
    during: list[float] = []
    outside: list[float] = []
    for s in samples:
        if s.phase != "load":
            continue
        for start, n, _p50, p99 in s.buckets:
            if n < 50 or p99 is None:
                continue
            overlaps = any(p[0] < start + BUCKET and p[1] > start for p in prunings)
            (during if overlaps else outside).append(p99)
    return during, outside


def chart(result: dict[str, Any], samples: list[Sample], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load = [s for s in samples if s.phase != "tail"]
    minutes = [s.t / 60 for s in load]
    fig, axes = plt.subplots(5, 1, figsize=(10, 15), sharex=True)
    ax = axes[0]
    ax.plot(minutes, [s.completed / s.window for s in load], marker="o", label="completed/s")
    ax.plot(minutes, [s.inserted / s.elapsed for s in load], linestyle="--", label="inserted/s")
    ax.set_ylabel("jobs/s")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(minutes, [s.backlog for s in load], color="grey", alpha=0.6, label="backlog (right)")
    twin.set_ylabel("backlog (jobs)")
    twin.set_ylim(bottom=0)
    ax.legend(loc="lower left")
    twin.legend(loc="lower right")
    ax.set_title(f"soak: {result['rate']:,.0f} jobs/s offered, 1 worker, retention 1 min, pruning every ~15 s")

    ax = axes[1]
    ax.plot(minutes, [s.p50_ms for s in load], marker="o", label="p50 (interval)")
    ax.plot(minutes, [s.p99_ms for s in load], marker="o", label="p99 (interval)")
    origin = result["wall_start"]  # buckets and prunings are in wall-clock time
    buckets = [b for s in load for b in s.buckets if b[3] is not None]
    ax.plot(
        [(b[0] + BUCKET / 2 - origin) / 60 for b in buckets],
        [b[3] for b in buckets],
        color="tab:orange",
        alpha=0.3,
        linewidth=0.8,
        label=f"p99 per {BUCKET:.0f} s",
    )
    for start, end, *_ in result["worker"].get("prunings", []):
        ax.axvspan((start - origin) / 60, (end - origin) / 60, color="tab:red", alpha=0.15, linewidth=0)
    ax.set_ylabel("insert -> start (ms)")
    ax.set_yscale("log")
    ax.legend(loc="upper left", title="red: background prunings", fontsize="small")

    ax = axes[2]
    for name, key in (
        ("jobs table", "jobs_table"),
        ("jobs indexes", "jobs_index"),
        ("history table", "events_table"),
        ("history indexes", "events_index"),
    ):
        ax.plot(minutes, [getattr(s, key) / MB for s in load], marker=".", label=name)
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small")

    ax = axes[3]
    ax.plot(minutes, [s.jobs_dead for s in load], marker=".", label="jobs")
    ax.plot(minutes, [s.events_dead for s in load], marker=".", label="job_events")
    ax.set_ylabel("dead tuples")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small")

    ax = axes[4]
    ax.plot(minutes, [s.worker_rss / MB for s in load], marker="o")
    ax.set_ylabel("worker RSS (MB)")
    ax.set_xlabel("minutes")
    ax.set_ylim(bottom=0)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.axvline(result["produced_for"] / 60, color="black", linestyle=":", linewidth=1)
    axes[0].annotate(
        "producer stops", (result["produced_for"] / 60, 0), xytext=(4, 4), textcoords="offset points", fontsize="small"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def report(result: dict[str, Any]) -> str:
    """The table and the goals."""
    samples = [Sample(**s) for s in result["samples"]]
    header = [result["header"], ""] if result.get("header") else []
    return "\n".join([*header, table(samples), "", *goals(result, samples)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="1 minute, sampled every 10 s: a smoke run")
    parser.add_argument("--rate", type=float, default=2000.0, help="jobs inserted per second")
    parser.add_argument("--interval", type=float, help="seconds between samples (default 30; 10 with --quick)")
    parser.add_argument("--from-json", type=Path, help="run nothing: report (and draw) a run that --json wrote")


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    if args.from_json:
        return results_of(json.loads(args.from_json.read_text()))
    minutes = 1.0 if args.quick else args.minutes
    interval = args.interval or (10.0 if args.quick else 30.0)
    began = dt.datetime.now(dt.UTC)
    result = await soak(server.dsn, minutes * 60, args.rate, interval, server.pid)
    result["header"] = (
        f"`{args.command}`, {began:%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average at the end {' / '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    return result


def draw(result: dict[str, Any], args: argparse.Namespace) -> None:
    out = args.out if args.out.suffix == ".png" else args.out / "soak.png"
    chart(result, [Sample(**s) for s in result["samples"]], out)
    print(f"chart: {out}")


if __name__ == "__main__":
    alias("soak")
