"""Retention's costs and gains, on one server, both sides in one run.

    python -m benchmarks retention [--dsn DSN] [--finished 20000,200000] [--rate 1000] [--seconds 60] [--rounds 2]

Listings: with N finished jobs (realistic arguments) and 100 waiting in the table, the median of
20 calls of: the newest 100 jobs (jm.jobs(), then the statement it replaced: ORDER BY seq, no
index), counts() (then a GROUP BY over the table, what it replaced) and SELECT * FROM job_list
LIMIT 100 (then the old view's order: active first, then created_at).

Pruning beside claims: a worker process (concurrency 50) runs no-op jobs that a producer inserts
at a fixed rate for a while, with 200,000 finished jobs older than their retention in the table;
once with background pruning off, once with it every second (it deletes the 200,000 in batches
meanwhile), in turns. Insert -> start p50/p99 of the produced jobs, from the jobs table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from benchmarks.bench_tasks import realistic_arguments
from benchmarks.cli import Server, alias
from benchmarks.common import ROOT, fresh_schema, wait_workers
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier

TASK = ("bench_tasks", "noop_async")

#: what the listings were before migration 0014 (for the comparison only)
OLD_NEWEST = """SELECT j.job_id, t.type_key, t.task_key, j.priority, j.arguments, j.status
  FROM {q}.jobs AS j JOIN {q}.tasks AS t ON t.task_id = j.task_id ORDER BY j.seq DESC LIMIT 100"""
OLD_COUNTS = "SELECT status, count(*) FROM {q}.jobs GROUP BY status"
OLD_VIEW = """SELECT j.job_id, t.type_key, t.task_key, j.status, j.priority, j.arguments
  FROM {q}.jobs AS j JOIN {q}.tasks AS t ON t.task_id = j.task_id
  LEFT JOIN {q}.workers AS w ON w.worker_id = j.worker_id
 ORDER BY j.status IN ('running', 'waiting', 'blocked') DESC, j.created_at DESC, j.seq DESC LIMIT 100"""


async def finished_jobs(jm: JobMaster, conn: asyncpg.Connection, count: int, age: str) -> None:
    """``count`` complete jobs that finished ``age`` ago."""
    q = quote_identifier(jm.schema)
    for start in range(0, count, 10_000):
        batch = [realistic_arguments(i) for i in range(start, min(count, start + 10_000))]
        await jm.insert_jobs(*TASK, 0, batch)
        await conn.execute(
            f"UPDATE {q}.jobs SET status = 'complete', attempts = 1, started_at = now(), "
            f"finished_at = now() - $1::text::interval WHERE status = 'waiting'",
            age,
        )
    await conn.execute(f"VACUUM ANALYZE {q}.jobs")


async def median_ms(call: Callable[[], Awaitable[Any]], times: int = 20) -> float:
    await call()
    spent = []
    for _ in range(times):
        start = time.perf_counter()
        await call()
        spent.append((time.perf_counter() - start) * 1000)
    return statistics.median(spent)


async def listings(dsn: str, finished: int) -> dict[str, float]:
    schema = await fresh_schema(dsn)
    q = quote_identifier(schema)
    conn = await asyncpg.connect(dsn)
    try:
        async with JobMaster(dsn, schema=schema) as jm:
            await finished_jobs(jm, conn, finished, "1 hour")
            await jm.insert_jobs(*TASK, 0, [realistic_arguments(finished + i) for i in range(100)])
            return {
                "jobs() newest 100": await median_ms(lambda: jm.jobs(limit=100)),
                "before: ORDER BY seq": await median_ms(lambda: conn.fetch(OLD_NEWEST.format(q=q))),
                "counts()": await median_ms(jm.counts),
                "before: GROUP BY status": await median_ms(lambda: conn.fetch(OLD_COUNTS.format(q=q))),
                "job_list LIMIT 100": await median_ms(lambda: conn.fetch(f"SELECT * FROM {q}.job_list LIMIT 100")),
                "before: the old view's order": await median_ms(lambda: conn.fetch(OLD_VIEW.format(q=q))),
            }
    finally:
        await conn.execute(f"DROP SCHEMA {q} CASCADE")
        await conn.close()


async def beside_claims(dsn: str, prune_interval: float, rate: int, seconds: float) -> dict[str, float]:
    schema = await fresh_schema(dsn)
    q = quote_identifier(schema)
    conn = await asyncpg.connect(dsn)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        async with JobMaster(dsn, schema=schema) as jm:
            await finished_jobs(jm, conn, 200_000, "8 days")
            command = ["-m", "benchmarks.worker", dsn, schema, "50", str(prune_interval)]
            worker = await asyncio.create_subprocess_exec(sys.executable, *command, cwd=ROOT, env=env)
            try:
                await wait_workers(conn, schema, 1)
                await jm.insert_jobs(*TASK, 0, [realistic_arguments(-1)])  # the worker's first claim
                await asyncio.sleep(1)
                began = time.monotonic()
                per_tick, i = max(1, int(rate * 0.05)), 0
                while time.monotonic() - began < seconds:
                    await jm.insert_jobs(*TASK, 0, [realistic_arguments(10**7 + i + k) for k in range(per_tick)])
                    i += per_tick
                    await asyncio.sleep(max(0.0, began + (i / rate) - time.monotonic()))
                for _ in range(600):
                    if not await conn.fetchval(f"SELECT count(*) FROM {q}.jobs WHERE status IN ('waiting', 'running')"):
                        break
                    await asyncio.sleep(0.2)
            finally:
                worker.terminate()
                await asyncio.wait_for(worker.wait(), 30)
            delays = [
                float(row[0]) * 1000
                for row in await conn.fetch(
                    f"SELECT extract(epoch FROM started_at - created_at) FROM {q}.jobs "
                    f"WHERE finished_at > now() - interval '1 day' AND (arguments->>'i')::bigint >= {10**7}"
                )
            ]
            statuses = await conn.fetch(
                f"SELECT status, count(*) FROM {q}.jobs WHERE (arguments->>'i')::bigint >= {10**7} GROUP BY status"
            )
            if sum(row[1] for row in statuses) != i or len(delays) != i:
                raise AssertionError(f"{i} jobs inserted, found {dict(statuses)}, {len(delays)} finished")
            left = await conn.fetchval(f"SELECT count(*) FROM {q}.jobs WHERE finished_at < now() - interval '1 day'")
            cuts = statistics.quantiles(delays, n=100)
            return {"p50_ms": cuts[49], "p99_ms": cuts[98], "jobs": len(delays), "old_left": left}
    finally:
        await conn.execute(f"DROP SCHEMA {q} CASCADE")
        await conn.close()


async def run_all(dsn: str, finished: list[int], rate: int, seconds: float, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {"rate": rate, "seconds": seconds, "listings": {}, "beside_claims": []}
    for n in finished:
        results["listings"][str(n)] = await listings(dsn, n)
        print(f"listings with {n:,} finished jobs: done", flush=True)
    for r in range(rounds):
        for interval in (0.0, 1.0):
            res = await beside_claims(dsn, interval, rate, seconds)
            results["beside_claims"].append({"round": r + 1, "pruning": "every 1 s" if interval else "off", **res})
            print(f"round {r + 1}, pruning {results['beside_claims'][-1]['pruning']}: p99 {res['p99_ms']:.2f} ms")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--finished", default="20000,200000", help="finished jobs in the table, comma-separated")
    parser.add_argument("--rate", type=int, default=1000, help="jobs/s the producer inserts")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    finished = [int(n) for n in args.finished.split(",") if n]
    return await run_all(server.dsn, finished, args.rate, args.seconds, args.rounds)


def report(results: dict[str, Any]) -> str:
    lines = ["## Listings (median ms of 20 calls)\n"]
    lines.append("| finished jobs | " + " | ".join(["measure", "ms"]) + " |\n|---|---|---|")
    for n, figures in results["listings"].items():
        for name, ms in figures.items():
            lines.append(f"| {int(n):,} | {name} | {ms:.2f} |")
    rate, seconds = results["rate"], results["seconds"]
    lines.append(f"\n## Insert -> start at {rate} jobs/s for {seconds:.0f} s, 200,000 prunable jobs in the table\n")
    lines.append("| round | pruning | p50 ms | p99 ms | jobs | old jobs left |\n|---|---|---|---|---|---|")
    for res in results["beside_claims"]:
        lines.append(
            f"| {res['round']} | {res['pruning']} | {res['p50_ms']:.2f} | {res['p99_ms']:.2f} | {res['jobs']:.0f} "
            f"| {res['old_left']:,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    alias("retention")
