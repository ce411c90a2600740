"""Scheduled jobs: how promptly they start, what an idle worker costs with many of them, and what
they cost a claim.

    python -m benchmarks scheduled [--dsn DSN] [--jobs 500] [--spread 10] [--idle 30] [--json out.json]

- delay: one idle worker process (concurrency 8); ``--jobs`` probe jobs with realistic arguments,
  each inserted with its own run_at, due at random times spread over ``--spread`` seconds
  (starting 2 s after the inserts); run_at -> start, as the claim recorded it (started_at) and
  as the task's own clock read it when it began. Every job is checked to have started at or
  after its run_at, exactly once.
- idle: the statements an idle worker process sends in ``--idle`` seconds, with 10,000 jobs
  scheduled an hour ahead and with none (from pg_stat_statements when the server has it loaded,
  else the database's committed transactions).
- claim: the plain claim's round trip (the worker's statement, on a connection with the claimer's
  session settings), taking one job of 2,000 claimable ones and finding none left, with 100,000
  jobs scheduled an hour ahead and with none, alternately twice.

A server started here loads pg_stat_statements. With --dsn, add it to shared_preload_libraries
and CREATE EXTENSION pg_stat_statements to count statements by text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from benchmarks import common
from benchmarks.bench_tasks import realistic_arguments
from benchmarks.cli import Server, alias
from benchmarks.common import fresh_schema, insert_realistic, wait_done, wait_workers, workers
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier

#: The server this benchmark starts: the benchmarks' settings, and pg_stat_statements.
SERVER_SETTINGS = {**common.SERVER_SETTINGS, "shared_preload_libraries": "pg_stat_statements"}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[max(0, int(len(ordered) * 0.99) - 1)],
        "max_ms": ordered[-1],
    }


async def delay(dsn: str, jobs: int, spread: float) -> dict[str, Any]:
    schema = await fresh_schema(dsn)
    conn = await asyncpg.connect(dsn)
    q = quote_identifier(schema)
    rng = random.Random(17)
    try:
        with workers(dsn, schema, 1, 8):
            await wait_workers(conn, schema, 1)
            await asyncio.sleep(0.5)  # the worker's first claim round is over: it idles on LISTEN
            base = await conn.fetchval("SELECT clock_timestamp()") + timedelta(seconds=2)
            async with JobMaster(dsn, schema=schema) as jm:
                for i in range(jobs):
                    run_at = base + timedelta(seconds=rng.uniform(0, spread))
                    await jm.insert_job("bench_tasks", "probe", 0, realistic_arguments(i), run_at=run_at)
            await wait_done(conn, schema, jobs, limit=spread + 60)
        rows = await conn.fetch(f"SELECT run_at, started_at, result, attempts, status FROM {q}.jobs")
    finally:
        await conn.execute(f"DROP SCHEMA {q} CASCADE")
        await conn.close()
    if not all(r["status"] == "complete" and r["attempts"] == 1 for r in rows) or len(rows) != jobs:
        raise AssertionError("not every job completed exactly once")
    early = [r for r in rows if r["started_at"] < r["run_at"]]
    if early:
        raise AssertionError(f"{len(early)} jobs started before their run_at")
    claimed = [(r["started_at"] - r["run_at"]).total_seconds() * 1000 for r in rows]
    began = [(float(json.loads(r["result"])) - r["run_at"].timestamp()) * 1000 for r in rows]
    return {"jobs": jobs, "spread_s": spread, "claimed": percentiles(claimed), "began": percentiles(began)}


async def _statement_count(conn: asyncpg.Connection, stats: bool) -> int:
    if stats:  # the harness's own reads left out
        return int(
            await conn.fetchval(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat%'"
            )
        )
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))


async def idle(dsn: str, scheduled: int, seconds: float) -> dict[str, Any]:
    schema = await fresh_schema(dsn)
    conn = await asyncpg.connect(dsn)
    q = quote_identifier(schema)
    try:
        stats = await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'") > 0
        if scheduled:
            async with JobMaster(dsn, schema=schema) as jm:
                arguments = [realistic_arguments(i) for i in range(scheduled)]
                await jm.insert_jobs("bench_tasks", "noop_async", 0, arguments, run_at=timedelta(hours=1))
        await conn.execute(f"ANALYZE {q}.jobs")
        with workers(dsn, schema, 1, 8):
            await wait_workers(conn, schema, 1)
            await asyncio.sleep(2)  # started, claimed, idle
            if stats:
                await conn.execute("SELECT pg_stat_statements_reset()")
            before = await _statement_count(conn, stats)
            await asyncio.sleep(seconds)
            after = await _statement_count(conn, stats)
            top = []
            if stats:
                top = [
                    {"calls": r["calls"], "query": " ".join(r["query"].split())[:90]}
                    for r in await conn.fetch(
                        "SELECT calls, query FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat%' "
                        "ORDER BY calls DESC, query"
                    )
                ]
        waiting = await conn.fetchval(f"SELECT count(*) FROM {q}.jobs WHERE status = 'waiting'")
    finally:
        await conn.execute(f"DROP SCHEMA {q} CASCADE")
        await conn.close()
    if waiting != scheduled:
        raise AssertionError(f"{scheduled - waiting} scheduled jobs ran an hour early")
    # the harness's own transactions in the window, when counting them all: reading the count
    own = 0 if stats else 2
    return {
        "scheduled": scheduled,
        "seconds": seconds,
        "counted_by": "pg_stat_statements" if stats else "xact_commit",
        "statements": after - before - own,
        "by_statement": top,
    }


async def claim_times(dsn: str, future: int, claimable: int = 2000, empty_claims: int = 1000) -> dict[str, Any]:
    schema = await fresh_schema(dsn)
    conn = await asyncpg.connect(dsn)
    q = quote_identifier(schema)
    try:
        async with JobMaster(dsn, schema=schema) as jm:
            await insert_realistic(jm, range(future), per_call=10_000, run_at=timedelta(hours=1))
            await insert_realistic(jm, range(-1, -1 - claimable, -1))
            await conn.execute(f"VACUUM ANALYZE {q}.jobs")
            task_ids = [await conn.fetchval(f"SELECT task_id FROM {q}.tasks WHERE task_key = 'noop_async'")]
            worker = uuid.uuid4()
            await jm._worker.beat()
            claimer = await asyncpg.connect(dsn)
            try:
                await claimer.execute(jm.sql.claim_session_settings)
                statement = await claimer.prepare(jm.sql["claim_jobs_fast"])
                took, found = [], []
                for _ in range(claimable):
                    started = time.perf_counter()
                    row = await statement.fetchrow(worker, task_ids, 1, 10_000)
                    took.append((time.perf_counter() - started) * 1000)
                    if len(row["job_ids"]) != 1:
                        raise AssertionError(f"a claim took {len(row['job_ids'])} jobs")
                for _ in range(empty_claims):
                    started = time.perf_counter()
                    row = await statement.fetchrow(worker, task_ids, 1, 10_000)
                    found.append((time.perf_counter() - started) * 1000)
                    if row["job_ids"]:
                        raise AssertionError("a claim took a job scheduled an hour ahead")
            finally:
                await claimer.close()
    finally:
        await conn.execute(f"DROP SCHEMA {q} CASCADE")
        await conn.close()
    return {"future": future, "taking_one": percentiles(took), "finding_none": percentiles(found)}


async def run_all(dsn: str, jobs: int, spread: float, idle_seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {"delay": await delay(dsn, jobs, spread)}
    d = results["delay"]
    print(
        f"run_at -> start (claimed): p50 {d['claimed']['p50_ms']:.1f} ms, p99 {d['claimed']['p99_ms']:.1f} ms; "
        f"(began): p50 {d['began']['p50_ms']:.1f} ms, p99 {d['began']['p99_ms']:.1f} ms",
        flush=True,
    )
    results["idle"] = [await idle(dsn, n, idle_seconds) for n in (10_000, 0)]
    for r in results["idle"]:
        print(f"idle {r['seconds']:.0f} s with {r['scheduled']} scheduled: {r['statements']} statements", flush=True)
    results["claim"] = [await claim_times(dsn, n) for n in (100_000, 0, 100_000, 0)]
    for r in results["claim"]:
        print(
            f"claim with {r['future']} future jobs: taking one p50 {r['taking_one']['p50_ms']:.3f} ms, "
            f"finding none p50 {r['finding_none']['p50_ms']:.3f} ms",
            flush=True,
        )
    return results


def report(results: dict[str, Any]) -> str:
    d = results["delay"]
    lines = [
        "| measure | p50 | p99 | max |",
        "|---|---|---|---|",
    ]
    for key, label in (("claimed", "claimed (started_at)"), ("began", "task began (its clock)")):
        r = d[key]
        lines.append(
            f"| run_at -> start, {label}, {d['jobs']} jobs over {d['spread_s']:g} s | {r['p50_ms']:.1f} ms | "
            f"{r['p99_ms']:.1f} ms | {r['max_ms']:.1f} ms |"
        )
    for r in results["claim"]:
        for key, label in (("taking_one", "taking 1 of 2,000"), ("finding_none", "finding none")):
            c = r[key]
            lines.append(
                f"| plain claim, {label}, {r['future']:,} future jobs | {c['p50_ms']:.3f} ms | {c['p99_ms']:.3f} ms "
                f"| {c['max_ms']:.3f} ms |"
            )
    lines += ["", "| idle worker | statements |", "|---|---|"]
    for r in results["idle"]:
        lines.append(
            f"| {r['seconds']:g} s, {r['scheduled']:,} jobs scheduled an hour ahead ({r['counted_by']}) "
            f"| {r['statements']} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--spread", type=float, default=10.0, help="seconds the due times spread over")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds the idle worker is watched")


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    conn = await asyncpg.connect(server.dsn)
    try:
        loaded = await conn.fetchval(
            "SELECT 'pg_stat_statements' = ANY (string_to_array(current_setting('shared_preload_libraries'), ', '))"
        )
        if loaded:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()
    return await run_all(server.dsn, args.jobs, args.spread, args.idle)


if __name__ == "__main__":
    alias("scheduled")
