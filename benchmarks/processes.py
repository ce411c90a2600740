"""Drain by ``jobmaster-async worker --processes N``: 1, 2 and 4 worker processes under the
supervisor, as a user runs them.

    python -m benchmarks processes [--dsn DSN] [--jobs 20000] [--concurrency 50] [--rounds 3]

Each round inserts N no-op async jobs with realistic arguments, starts the CLI worker with
``--processes P --until-empty`` and reads the rate from the jobs table: N / (last finish - first
start). Every run checks that each job completed exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from typing import Any

import asyncpg

from benchmarks.cli import Server, alias
from benchmarks.common import ROOT, check_exactly_once, fresh_schema, insert_realistic
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier


async def drain(dsn: str, jobs: int, processes: int, concurrency: int) -> float:
    schema = await fresh_schema(dsn)
    conn = await asyncpg.connect(dsn)
    q = quote_identifier(schema)
    try:
        async with JobMaster(dsn, schema=schema) as jm:
            await insert_realistic(jm, range(jobs))
        command = [
            sys.executable, "-m", "jobmaster_async", "--dsn", dsn, "--schema", schema, "worker",
            "--app", "benchmarks.bench_tasks", "-c", str(concurrency), "--processes", str(processes),
            "--until-empty",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        await asyncio.to_thread(
            subprocess.run, command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        seconds = await conn.fetchval(f"SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM {q}.jobs")
        await check_exactly_once(conn, schema, jobs)
        return jobs / float(seconds)
    finally:
        await conn.execute(f"DROP SCHEMA {q} CASCADE")
        await conn.close()


async def run_all(dsn: str, jobs: int, concurrency: int, rounds: int) -> dict[int, list[float]]:
    rates: dict[int, list[float]] = {1: [], 2: [], 4: []}
    for _ in range(rounds):
        for processes in rates:
            rates[processes].append(await drain(dsn, jobs, processes, concurrency))
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50, help="per process")
    parser.add_argument("--rounds", type=int, default=3)


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    rates = await run_all(server.dsn, args.jobs, args.concurrency, args.rounds)
    return {"rounds": args.rounds, "jobs_per_s": {str(p): values for p, values in rates.items()}}


def report(results: dict[str, Any]) -> str:
    lines = [f"| processes | jobs/s, median of {results['rounds']} (min to max) |", "|---|---|"]
    for processes, values in results["jobs_per_s"].items():
        lines.append(f"| {processes} | {statistics.median(values):,.0f} ({min(values):,.0f} to {max(values):,.0f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    alias("processes")
