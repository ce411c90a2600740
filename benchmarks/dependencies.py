"""Dependency resolution and execution, against the same number of independent jobs.

    python -m benchmarks dependencies [--dsn DSN] [--json out.json]

- chain: one insert of link_19, whose dependencies link_18 ... link_0 are created by SQL in the
  same statement; then one worker process runs the 20 jobs in order.
- fan-in: 1,000 dependents inserted in one insert_jobs call, sharing one dependency that the
  first creates and the other 999 link to; then the worker runs 1,001 jobs.
- baseline: the same numbers of independent no-op jobs.
Insert time is the round trip of the insert; run time is first start to last finish.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import asyncpg

from benchmarks.bench_tasks import CHAIN_DEPTH
from benchmarks.cli import Server, alias
from benchmarks.common import fresh_schema, run_to_completion
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier


async def measure(dsn: str, insert: Any, total: int) -> dict[str, float]:
    schema = await fresh_schema(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        async with JobMaster(dsn, schema=schema) as jm:
            started = time.perf_counter()
            await insert(jm)
            insert_ms = (time.perf_counter() - started) * 1000
        run_s = await run_to_completion(conn, dsn, schema, total, processes=1, concurrency=100)
    finally:
        await conn.execute(f"DROP SCHEMA {quote_identifier(schema)} CASCADE")
        await conn.close()
    return {"jobs": total, "insert_ms": insert_ms, "run_ms": run_s * 1000}


async def run_all(dsn: str) -> dict[str, Any]:
    async def chain(jm: JobMaster) -> None:
        await jm.insert_job("bench_tasks", f"link_{CHAIN_DEPTH - 1}", 0, {"run": 1})

    async def chain_baseline(jm: JobMaster) -> None:
        await jm.insert_jobs("bench_tasks", "noop_async", 0, [{"i": i} for i in range(CHAIN_DEPTH)])

    async def fan_in(jm: JobMaster) -> None:
        await jm.insert_jobs("bench_tasks", "fan", 0, [{"run": 1, "i": i} for i in range(1000)])

    async def fan_in_baseline(jm: JobMaster) -> None:
        await jm.insert_jobs("bench_tasks", "noop_async", 0, [{"i": i} for i in range(1001)])

    return {
        "chain_20": await measure(dsn, chain, CHAIN_DEPTH),
        "independent_20": await measure(dsn, chain_baseline, CHAIN_DEPTH),
        "fan_in_1000": await measure(dsn, fan_in, 1001),
        "independent_1001": await measure(dsn, fan_in_baseline, 1001),
    }


def report(results: dict[str, Any]) -> str:
    lines = ["| workload | jobs | insert (ms) | run (ms) |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['jobs']} | {r['insert_ms']:.1f} | {r['run_ms']:.1f} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own."""


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    return await run_all(server.dsn)


if __name__ == "__main__":
    alias("dependencies")
