"""Throughput and latency of jobmaster_async worker processes.

    python -m benchmarks.throughput [--dsn DSN] [--jobs 20000] [--concurrency 100] [--json out.json]

Drain: N no-op jobs (async, then sync) with realistic arguments (bench_tasks.realistic_arguments:
a path, an e-mail, a float, a nested object), inserted in slices of 5,000, drained by 1 and by 2 worker
processes; the rate is N / (last finish - first start), read from the jobs table. Latency: 500
jobs inserted one at a time (~200/s) into an idle worker; insert -> start, from the task's own
clock reading. Every run checks that each job completed exactly once before its figure counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.bench_tasks import realistic_arguments
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier

ROOT = Path(__file__).parent.parent
#: The server the benchmarks start: durable (fsync and synchronous_commit on), room for clients.
SERVER_SETTINGS = {"max_connections": "200", "shared_buffers": "256MB"}


@contextmanager
def workers(dsn: str, schema: str, count: int, concurrency: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen([sys.executable, "-m", "benchmarks.worker", dsn, schema, str(concurrency)], cwd=ROOT, env=env)
        for _ in range(count)
    ]
    try:
        yield processes
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


async def _wait_workers(conn: asyncpg.Connection, schema: str, count: int) -> None:
    for _ in range(600):
        if await conn.fetchval(f"SELECT count(*) FROM {quote_identifier(schema)}.workers") >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("workers did not start")


async def _wait_done(conn: asyncpg.Connection, schema: str, total: int, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    q = quote_identifier(schema)
    while time.monotonic() < deadline:
        done = await conn.fetchval(f"SELECT count(*) FROM {q}.jobs WHERE status IN ('complete', 'failed')")
        if done >= total:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"jobs not done within {limit}s")


async def fresh_schema(dsn: str) -> str:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    async with JobMaster(dsn, schema=schema) as jm:
        await jm.deploy()
    return schema


async def check_exactly_once(conn: asyncpg.Connection, schema: str, total: int) -> None:
    q = quote_identifier(schema)
    row = await conn.fetchrow(
        f"SELECT count(*) FILTER (WHERE status = 'complete' AND attempts = 1) AS once, count(*) AS jobs, "
        f"(SELECT count(*) FROM {q}.job_events WHERE status = 'running') AS starts FROM {q}.jobs"
    )
    assert row is not None
    if not (row["once"] == row["jobs"] == row["starts"] == total):
        raise AssertionError(f"not exactly once: {dict(row)} for {total} jobs")


async def run_to_completion(
    conn: asyncpg.Connection, dsn: str, schema: str, total: int, processes: int, concurrency: int
) -> float:
    """Worker processes run the schema's ``total`` queued jobs; each must have run exactly once.
    Returns the seconds from the first start to the last finish."""
    with workers(dsn, schema, processes, concurrency):
        await _wait_done(conn, schema, total)
    q = quote_identifier(schema)
    seconds = await conn.fetchval(f"SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM {q}.jobs")
    await check_exactly_once(conn, schema, total)
    return float(seconds)


async def drain(dsn: str, task_key: str, jobs: int, processes: int, concurrency: int) -> dict[str, Any]:
    schema = await fresh_schema(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        async with JobMaster(dsn, schema=schema) as jm:  # pre-inserted, in slices of one transaction each
            for start in range(0, jobs, 5000):
                arguments = [realistic_arguments(i) for i in range(start, min(jobs, start + 5000))]
                await jm.insert_jobs("bench_tasks", task_key, 0, arguments)
        seconds = await run_to_completion(conn, dsn, schema, jobs, processes, concurrency)
    finally:
        await conn.execute(f"DROP SCHEMA {quote_identifier(schema)} CASCADE")
        await conn.close()
    return {"jobs": jobs, "processes": processes, "seconds": seconds, "rate": jobs / seconds}


async def latency(dsn: str, jobs: int = 500, per_second: float = 200) -> dict[str, Any]:
    schema = await fresh_schema(dsn)
    conn = await asyncpg.connect(dsn)
    q = quote_identifier(schema)
    sent: dict[uuid.UUID, float] = {}
    try:
        with workers(dsn, schema, 1, 8):
            await _wait_workers(conn, schema, 1)
            await asyncio.sleep(0.5)  # the worker's first claim round is over: it idles on LISTEN
            interval = 1 / per_second
            next_at = time.monotonic()
            for i in range(jobs):
                now = time.time()
                job_id = await conn.fetchval(
                    f"SELECT {q}.add_job('bench_tasks', 'probe', 0, $1::json)", json.dumps(realistic_arguments(i))
                )
                sent[job_id] = now
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await _wait_done(conn, schema, jobs)
        rows = await conn.fetch(f"SELECT job_id, result FROM {q}.jobs")
        await check_exactly_once(conn, schema, jobs)
    finally:
        await conn.execute(f"DROP SCHEMA {q} CASCADE")
        await conn.close()
    delays = sorted((float(json.loads(r["result"])) - sent[r["job_id"]]) * 1000 for r in rows)
    return {
        "jobs": jobs,
        "p50_ms": statistics.median(delays),
        "p95_ms": delays[int(len(delays) * 0.95) - 1],
        "p99_ms": delays[int(len(delays) * 0.99) - 1],
        "max_ms": delays[-1],
    }


async def run_all(dsn: str, jobs: int, concurrency: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for task_key in ("noop_async", "noop_sync"):
        for processes in (1, 2):
            result = results[f"drain_{task_key}_{processes}p"] = await drain(
                dsn, task_key, jobs, processes, concurrency
            )
            print(f"drain {task_key} x{processes} process(es): {result['rate']:,.0f} jobs/s", flush=True)
    results["latency"] = await latency(dsn)
    return results


def table(results: dict[str, Any]) -> str:
    lines = ["| measure | figure |", "|---|---|"]
    for key, value in results.items():
        if key.startswith("drain_"):
            lines.append(f"| {key} ({value['jobs']} jobs) | {value['rate']:,.0f} jobs/s |")
    lat = results["latency"]
    figures = f"{lat['p50_ms']:.2f} / {lat['p95_ms']:.2f} / {lat['p99_ms']:.2f} ms"
    lines.append(f"| insert -> start latency, p50 / p95 / p99 | {figures} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="an existing server (default: start a temporary embedded one)")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    def go(dsn: str) -> dict[str, Any]:
        return asyncio.run(run_all(dsn, args.jobs, args.concurrency))

    if args.dsn:
        results = go(args.dsn)
    else:
        from jobmaster_async.cli.embedded import temporary_server

        with temporary_server(SERVER_SETTINGS) as server:
            results = go(server.dsn)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
