"""A worker cut off from the database past half its heartbeat lapse stops its async and process
jobs (and puts them back when it can) before another worker rescues them: with real worker
processes, one of them behind a proxy that black-holes its connections. Each execution that ran
to its end appends a line; each job must have one, the first worker alive throughout."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import asyncpg

import tests.heartbeat_tasks  # noqa: F401  (registers the process task for the deploy)
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from tests.polling import until
from tests.processes import worker_process
from tests.proxy import Proxy

LAPSE = 4.0
#: Longer than the lapse plus a rescue interval: a job the first worker did not stop would end
#: there, while it lives, before the second worker's run of it.
SECONDS = 8.0
OPTIONS = (
    "--app", "tests.tasks_for_tests,tests.heartbeat_tasks", "--concurrency", "4",
    "--heartbeat-lapse", str(LAPSE), "--heartbeat-interval", "0.5", "--poll-interval", "1",
)  # fmt: skip


async def count(conn: asyncpg.Connection, schema: str, status: str) -> int:
    query = f"SELECT count(*) FROM {quote_identifier(schema)}.jobs WHERE status = $1"
    result: int = await conn.fetchval(query, status)
    return result


async def test_a_worker_cut_off_stops_its_jobs_before_another_rescues_them(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    out, first_log, second_log = tmp_path / "out.txt", tmp_path / "first.log", tmp_path / "second.log"
    await jm.insert_job("tasks_for_tests", "record_after", 1, {"path": str(out), "key": 0, "seconds": SECONDS})
    await jm.insert_job(
        "heartbeat_tasks", "record_after_in_process", 1, {"path": str(out), "key": 1, "seconds": SECONDS}
    )
    async with Proxy(dsn) as proxy:
        with first_log.open("wb") as log, worker_process(proxy.dsn, jm.schema, *OPTIONS, log=log) as first:
            await until(lambda: _running(conn, jm.schema, 2), "the first worker to start both jobs")
            proxy.blackhole()
            with second_log.open("wb") as log2, worker_process(dsn, jm.schema, *OPTIONS, log=log2) as second:
                await until(lambda: _complete(conn, jm.schema, 2), "the second worker to rescue and run both jobs")
                assert first.poll() is None, first_log.read_text()
                proxy.resume()
                await until(lambda: _logged(first_log, "heartbeats again"), "the first worker to heartbeat again")
                assert first.poll() is None
                second.terminate()
                await asyncio.to_thread(second.wait, 30)
            first.terminate()
            assert await asyncio.to_thread(first.wait, 30) == 0, first_log.read_text()
    log_text = first_log.read_text()
    assert log_text.count("could not heartbeat for") == 1, log_text
    assert "cancels its 1 async jobs and kills its 1 process jobs" in log_text
    assert Counter(out.read_text().split()) == {"0": 1, "1": 1}, (log_text, second_log.read_text())
    for job in await jm.jobs(limit=10):
        # rescued beside each other, neither the one suspect of the lost worker: not charged
        assert job.status == "complete" and job.rescues == 0, job


async def _running(conn: asyncpg.Connection, schema: str, n: int) -> bool:
    return await count(conn, schema, "running") == n


async def _complete(conn: asyncpg.Connection, schema: str, n: int) -> bool:
    return await count(conn, schema, "complete") == n


async def _logged(path: Path, text: str) -> bool:
    return text in await asyncio.to_thread(path.read_text)
