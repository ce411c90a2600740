"""Throughput and latency of jobmaster_async worker processes.

    python -m benchmarks throughput [--dsn DSN] [--jobs 20000] [--concurrency 100] [--json out.json]

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
import statistics
import time
import uuid
from typing import Any

import asyncpg

from benchmarks.bench_tasks import realistic_arguments
from benchmarks.cli import Server, alias
from benchmarks.common import (
    check_exactly_once,
    fresh_schema,
    insert_realistic,
    run_to_completion,
    wait_done,
    wait_workers,
    workers,
)
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier


async def drain(dsn: str, task_key: str, jobs: int, processes: int, concurrency: int) -> dict[str, Any]:
    schema = await fresh_schema(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        async with JobMaster(dsn, schema=schema) as jm:  # pre-inserted, in slices of one transaction each
            await insert_realistic(jm, range(jobs), task_key)
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
            await wait_workers(conn, schema, 1)
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
            await wait_done(conn, schema, jobs)
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


def report(results: dict[str, Any]) -> str:
    lines = ["| measure | figure |", "|---|---|"]
    for key, value in results.items():
        if key.startswith("drain_"):
            lines.append(f"| {key} ({value['jobs']} jobs) | {value['rate']:,.0f} jobs/s |")
    lat = results["latency"]
    figures = f"{lat['p50_ms']:.2f} / {lat['p95_ms']:.2f} / {lat['p99_ms']:.2f} ms"
    lines.append(f"| insert -> start latency, p50 / p95 / p99 | {figures} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    return await run_all(server.dsn, args.jobs, args.concurrency)


if __name__ == "__main__":
    alias("throughput")
