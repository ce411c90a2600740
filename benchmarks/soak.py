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
from benchmarks.soak_meter import LAG, TYPE_KEY, Meter
from benchmarks.soak_report import MB, Sample, chart, report

__all__ = ("add_arguments", "draw", "report", "run")
from benchmarks.soak_tasks import RETENTION
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier

ROOT = Path(__file__).parent.parent
#: seconds between two producer ticks
TICK = 0.05
#: the pool of dependency keys: with ~100 dependents/s and a 36 s freshness window, about half
#: of them find a fresh base job and half create one
KEYS = 3000
#: producer ticks inserting at once (each one round trip per task after the other)
IN_FLIGHT = 4
#: worker concurrency
CONCURRENCY = 50
#: how long the worker may take to drain the queue after the producer stops
DRAIN_LIMIT = 300.0


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


async def local_server(conn: asyncpg.Connection) -> int | None:
    """The postmaster's pid when the server runs on this machine (its CPU is then measured too),
    else None: the parent of this connection's backend, if that process is here and is postgres."""
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(backend).parent()
        if parent is not None and "postgres" in parent.name():
            return int(parent.pid)
    return None


async def soak(dsn: str, seconds: float, rate: float, interval: float, server_pid: int | None) -> dict[str, Any]:
    schema = await deploy(dsn)
    q = quote_identifier(schema)
    conn = await asyncpg.connect(dsn)
    scratch = Path(tempfile.mkdtemp(prefix="soak-"))
    stats_path = scratch / "worker.json"
    process = start_worker(dsn, schema, stats_path)
    samples: list[Sample] = []
    server_pid = server_pid or await local_server(conn)
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
