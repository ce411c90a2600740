"""The dashboard's pages with a large table: how long each takes to serve, measured in the server
(httpx calling the ASGI app in this process: no network, the database round trips included).

    python -m benchmarks dashboard [--dsn DSN] [--jobs 200000] [--requests 20] [--json out.json]

The table: ``--jobs`` jobs of bench_tasks.noop_async with realistic arguments, drained by two
worker processes (so each has its real history: inserted, claimed, completed), their history
then moved a day back (as if they had run yesterday) and the history table rewritten in time
order, as a table that grew by appending is; 2,000 jobs that fail (run here), 1,000 cancelled, and
a backlog of a tenth of ``--jobs`` waiting, inserted now. Each page is requested ``--requests``
times after one warm-up request; the figure is the median, and the slowest. Twice: with the index
on job_events (at) of migration 0014, which the charts' and the metrics' reads of recent history
use, and after dropping it.

"overview (fresh)" makes the live view read the database on every request (the cheap state, and
the charts when the history grew): what the poller costs each time it runs; "overview" takes the
snapshot of the last second, as pages do while the live view runs.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import uuid
from typing import Any

import asyncpg
import httpx

import benchmarks.bench_tasks  # noqa: F401  (the tasks deployed)
from benchmarks.cli import Server, alias
from benchmarks.common import insert_realistic, wait_done, wait_workers, workers
from jobmaster_async import JobMaster, task
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.web import create_app

#: The index of migration 0014 that the charts' and the metrics' reads use (dropped for the
#: second measure).
AT_INDEX = "job_events_at_idx"


@task
def fails(i: int) -> None:
    raise ValueError(f"row {i} does not parse")


async def build(dsn: str, schema: str, jobs: int) -> dict[str, Any]:
    """The table described above; returns ids to request."""
    q = quote_identifier(schema)
    conn = await asyncpg.connect(dsn)
    try:
        async with JobMaster(dsn, schema=schema, retry_backoff=0.0) as jm:
            await jm.deploy()
            started = time.monotonic()
            await insert_realistic(jm, range(jobs))
            inserted = time.monotonic() - started
            with workers(dsn, schema, 2, 64):
                await wait_workers(conn, schema, 2)
                await wait_done(conn, schema, jobs, limit=3600)
            drained = time.monotonic() - started - inserted
            # yesterday's history, in time order (as appended)
            await conn.execute(f"UPDATE {q}.job_events SET at = at - interval '1 day'")
            await conn.execute(f"UPDATE {q}.jobs SET created_at = created_at - interval '1 day'")
            await conn.execute(f"CREATE INDEX bench_at ON {q}.job_events (at)")
            await conn.execute(f"CLUSTER {q}.job_events USING bench_at")
            await conn.execute(f"DROP INDEX {q}.bench_at")
            await jm.insert_jobs("bench_tasks", "noop_async", 0, [{"i": -i} for i in range(1, 2001)])
            await jm.insert_jobs("dashboard", "fails", 0, [{"i": i} for i in range(2000)])
            failing = await jm.run()
            await insert_realistic(jm, range(jobs, jobs + jobs // 10))  # the backlog
            for job in await jm.jobs(status="waiting", limit=1000):
                await jm.cancel(job.job_id)
            await conn.execute(f"VACUUM ANALYZE {q}.jobs, {q}.job_events")
            complete = await jm.jobs(status="complete", limit=1)
            failed = await jm.jobs(status="failed", limit=1)
            middle = await conn.fetchval(f"SELECT job_id FROM {q}.jobs ORDER BY seq OFFSET $1 LIMIT 1", jobs // 2)
            sizes = await conn.fetchrow(
                f"SELECT (SELECT count(*) FROM {q}.jobs) AS jobs, (SELECT count(*) FROM {q}.job_events) AS events"
            )
    finally:
        await conn.close()
    return {
        "jobs": sizes["jobs"],
        "events": sizes["events"],
        "insert_seconds": inserted,
        "drain_seconds": drained,
        "failed_run": failing,
        "complete_id": complete[0].job_id,
        "failed_id": failed[0].job_id,
        "middle_id": middle,
    }


def routes(ids: dict[str, Any]) -> list[tuple[str, str]]:
    complete: uuid.UUID = ids["complete_id"]
    return [
        ("overview (fresh)", "/"),
        ("overview", "/"),
        ("jobs: newest", "/jobs"),
        ("jobs: a page deep down (before=)", f"/jobs?before={ids['middle_id']}"),
        ("jobs: status=waiting", "/jobs?status=waiting"),
        ("jobs: status=complete", "/jobs?status=complete"),
        ("jobs: status=failed (rare: scan bound)", "/jobs?status=failed"),
        ("jobs: task=", "/jobs?task=bench_tasks.noop_async"),
        ("jobs: q= text search (scan bound)", "/jobs?q=user4242%40example.org"),
        ("job page (complete)", f"/jobs/{complete}"),
        ("job page (failed)", f"/jobs/{ids['failed_id']}"),
        ("job by its short id (redirect)", f"/jobs/{complete.hex[-12:]}"),
        ("/metrics", "/metrics"),
    ]


async def measure(dsn: str, schema: str, ids: dict[str, Any], requests: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    async with JobMaster(dsn, schema=schema) as jm:
        app = create_app(jm, secret="benchmark")
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
                for name, path in routes(ids):
                    app.broadcaster.interval = 0.0 if "fresh" in name else 3600.0
                    response = await http.get(path)  # warm-up (and the metrics' first scrape)
                    if response.status_code not in (200, 302):
                        raise AssertionError(f"{path}: {response.status_code} {response.text[:300]}")
                    times = []
                    for _ in range(requests):
                        started = time.perf_counter()
                        response = await http.get(path)
                        times.append((time.perf_counter() - started) * 1000)
                    results[name] = {"median_ms": statistics.median(times), "max_ms": max(times)}
                # the live view's reads, alone
                for name, whole in (("chart: the whole hour", True), ("chart: from the previous minute", False)):
                    times = []
                    for _ in range(requests):
                        started = time.perf_counter()
                        await jm.events_per_minute(whole)
                        times.append((time.perf_counter() - started) * 1000)
                    results[name] = {"median_ms": statistics.median(times), "max_ms": max(times)}
        finally:
            await app.aclose()
    return results


async def run_all(dsn: str, jobs: int, requests: int) -> dict[str, Any]:
    schema = f"bench_dash_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(dsn)
    try:
        ids = await build(dsn, schema, jobs)
        with_index = await measure(dsn, schema, ids, requests)
        await conn.execute(f"DROP INDEX {quote_identifier(schema)}.{AT_INDEX}")
        await conn.execute(f"ANALYZE {quote_identifier(schema)}.job_events")
        without = await measure(dsn, schema, ids, requests)
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(schema)} CASCADE")
        await conn.close()
    table = {k: v for k, v in ids.items() if not k.endswith("_id")}
    return {"table": table, "requests": requests, "without_index": without, "with_index": with_index}


def report(results: dict[str, Any]) -> str:
    lines = [
        f"{results['table']['jobs']:,} jobs, {results['table']['events']:,} history rows; "
        f"median of {results['requests']} requests (slowest), ms",
        "",
        "| page | without the index on at | with it (migration 0014) |",
        "|---|---|---|",
    ]
    for name, figures in results["without_index"].items():
        other = results["with_index"][name]
        lines.append(
            f"| {name} | {figures['median_ms']:.1f} ({figures['max_ms']:.1f}) "
            f"| {other['median_ms']:.1f} ({other['max_ms']:.1f}) |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=20)


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    logging.getLogger("jobmaster_async").setLevel(logging.CRITICAL)  # the failing jobs' tracebacks
    return await run_all(server.dsn, args.jobs, args.requests)


if __name__ == "__main__":
    alias("dashboard")
