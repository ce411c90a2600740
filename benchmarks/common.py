"""What the scenarios share: the embedded server's settings, a fresh schema, worker processes of
``benchmarks.worker``, waiting for them, the realistic jobs (``bench_tasks.realistic_arguments``)
and the exactly-once check."""

from __future__ import annotations

import asyncio
import os
import signal
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


async def wait_workers(conn: asyncpg.Connection, schema: str, count: int) -> None:
    for _ in range(600):
        if await conn.fetchval(f"SELECT count(*) FROM {quote_identifier(schema)}.workers") >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("workers did not start")


async def wait_done(conn: asyncpg.Connection, schema: str, total: int, limit: float = 600) -> None:
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


async def insert_realistic(
    jm: JobMaster, ids: range, task_key: str = "noop_async", per_call: int = 5000, **options: Any
) -> None:
    """Jobs of ``bench_tasks.task_key`` with realistic arguments for ``ids``, ``per_call`` jobs
    per ``insert_jobs`` call (one transaction each); ``options`` go to every call (``run_at``)."""
    for start in range(0, len(ids), per_call):
        arguments = [realistic_arguments(i) for i in ids[start : start + per_call]]
        await jm.insert_jobs("bench_tasks", task_key, 0, arguments, **options)


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
        await wait_done(conn, schema, total)
    q = quote_identifier(schema)
    seconds = await conn.fetchval(f"SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM {q}.jobs")
    await check_exactly_once(conn, schema, total)
    return float(seconds)
