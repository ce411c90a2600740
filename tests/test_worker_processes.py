"""Worker processes (``python -m jobmaster_async worker``) against the test server: exactly-once
execution across processes, process_limit across processes, kill -9 recovery, SIGTERM, and a
database restart under an idle worker.

These wait for what other processes do by polling the database (no event crosses processes),
always with a deadline."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from tests.conftest import orders_table
from tests.pg import PgServer
from tests.polling import until
from tests.processes import worker_process


async def finished(jm: JobMaster, count: int) -> bool:
    counts = await jm.counts()
    return counts.get("complete", 0) + counts.get("failed", 0) >= count


async def test_three_workers_execute_each_job_exactly_once(jm: JobMaster, dsn: str, tmp_path: Path) -> None:
    out, limited = tmp_path / "out.txt", tmp_path / "limited.txt"
    await jm.insert_jobs("tasks_for_tests", "record", 1, [{"path": str(out), "key": i} for i in range(3000)])
    await jm.insert_jobs("tasks_for_tests", "record_limited", 1, [{"path": str(limited), "key": i} for i in range(60)])
    with (
        worker_process(dsn, jm.schema, "--concurrency", "8"),
        worker_process(dsn, jm.schema, "--concurrency", "8"),
        worker_process(dsn, jm.schema, "--concurrency", "8"),
    ):
        await until(lambda: finished(jm, 3060), "3,060 jobs to finish")
    assert (await jm.counts()) == {"complete": 3060}
    lines = out.read_text().split()
    assert Counter(lines) == Counter(str(i) for i in range(3000))  # each exactly once
    # process_limit=2 across the three workers: never more than two running at once
    events = []
    for line in limited.read_text().splitlines():
        kind, _key, at = line.split()
        events.append((float(at), 1 if kind == "start" else -1))
    running = peak = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        running += change
        peak = max(peak, running)
    assert len(events) == 120 and peak <= 2


async def test_kill_9_mid_job_another_worker_completes_it_once(jm: JobMaster, dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    job_id = await jm.insert_job("tasks_for_tests", "record_after", 1, {"path": str(out), "key": 1, "seconds": 2})
    lapse = ("--heartbeat-interval", "0.5", "--heartbeat-lapse", "2")
    with worker_process(dsn, jm.schema, *lapse) as doomed:
        await until(lambda: _status_is(jm, job_id, "running"), "the job to start")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "running"  # held by a dead worker
    with worker_process(dsn, jm.schema, *lapse):
        await until(lambda: _status_is(jm, job_id, "complete"), "the rescued job to complete")
    job = await jm.get_job(job_id)
    assert job is not None and job.attempts == 2
    assert out.read_text().split() == ["1"]
    history = [h["status"] for h in await jm.history(job_id)]
    assert history == ["waiting", "running", "waiting", "running", "complete"]


async def _status_is(jm: JobMaster, job_id: uuid.UUID, status: str) -> bool:
    job = await jm.get_job(job_id)
    return job is not None and job.status == status


async def test_sigterm_is_graceful(jm: JobMaster, dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    ids = await jm.insert_jobs(
        "tasks_for_tests", "record_after", 1, [{"path": str(out), "key": i, "seconds": 0.5} for i in range(4)]
    )
    await jm.insert_jobs(
        "tasks_for_tests", "record_after", 0, [{"path": str(out), "key": 100 + i, "seconds": 0.5} for i in range(20)]
    )
    with worker_process(dsn, jm.schema, "--concurrency", "4") as process:
        await until(lambda: _all_running(jm, ids), "the first four jobs to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    counts = await jm.counts()
    assert counts.get("running", 0) == 0
    assert counts.get("complete", 0) >= 4 and sum(counts.values()) == 24
    assert sorted(int(k) for k in out.read_text().split())[:4] == [0, 1, 2, 3]


async def test_sigterm_puts_thread_jobs_back_just_before_exit(jm: JobMaster, dsn: str, tmp_path: Path) -> None:
    """Threads end with their process: thread jobs still running after SIGTERM's grace period
    are put back just before the process exits (not rescued: the start does not count), and the
    next worker runs each once."""
    out, gate = tmp_path / "out.txt", tmp_path / "gate"
    arguments = [{"path": str(out), "key": i, "gate": str(gate)} for i in range(4)]
    ids = await jm.insert_jobs("tasks_for_tests", "record_when_gate_opens", 1, arguments)
    with worker_process(dsn, jm.schema, "--concurrency", "4", "--grace-period", "0.2") as process:
        await until(lambda: _all_running(jm, ids), "the four jobs to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    for job_id in ids:
        job = await jm.get_job(job_id)
        assert job is not None and job.status == "waiting" and job.rescues == 0
        assert job.max_attempts - job.attempts == 1  # the start is given back: no retry used up
        assert (await jm.history(job_id))[-1]["reason"] == "released"
    gate.touch()
    with worker_process(dsn, jm.schema, "--concurrency", "4"):
        await until(lambda: finished(jm, 4), "the jobs put back to run")
    assert Counter(out.read_text().split()) == Counter(str(i) for i in range(4))


async def _all_running(jm: JobMaster, ids: list[uuid.UUID]) -> bool:
    jobs = [await jm.get_job(i) for i in ids]
    return all(j is not None and j.status == "running" for j in jobs)


async def test_database_restart_under_an_idle_worker(pg: PgServer, jm: JobMaster, dsn: str, tmp_path: Path) -> None:
    if pg.handle is None:
        pytest.skip("needs the embedded server (JOBMASTER_TEST_DSN is set)")
    out = tmp_path / "out.txt"
    with worker_process(dsn, jm.schema, "--poll-interval", "1"):
        await jm.insert_job("tasks_for_tests", "record", 1, {"path": str(out), "key": 1})
        await until(lambda: finished(jm, 1), "the first job")
        await jm.close()  # our own pool would only see dead connections after the restart
        await asyncio.to_thread(pg.restart)
        await jm.insert_job("tasks_for_tests", "record", 1, {"path": str(out), "key": 2})
        await until(lambda: finished(jm, 2), "the job inserted after the restart")
    assert out.read_text().split() == ["1", "2"]


async def test_trigger_in_another_schema_wakes_an_idle_worker_process(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    arguments = "json_build_object('path', NEW.path, 'key', NEW.id)"
    async with orders_table(conn, jm.schema, "record", arguments) as orders:
        # the safety poll is an hour away: only NOTIFY can wake this worker in time
        with worker_process(dsn, jm.schema, "--poll-interval", "3600"):
            await until(lambda: _worker_registered(conn, jm), "the worker to start")
            await conn.execute(f"INSERT INTO {orders} VALUES (7, $1)", str(out))
            await until(lambda: finished(jm, 1), "the job queued by the trigger")
    assert out.read_text().split() == ["7"]


async def _worker_registered(conn: asyncpg.Connection, jm: JobMaster) -> bool:
    return bool(await conn.fetchval(f"SELECT count(*) FROM {quote_identifier(jm.schema)}.workers"))
