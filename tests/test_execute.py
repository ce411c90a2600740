"""Executing jobs and managing them: outcomes, retries, cancel, retry, fencing, the sync facade."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy

from jobmaster_async import JobMaster, JobNotFound, NotRetryable
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.events import JobFinished
from tests.conftest import drop_schema


async def test_sync_and_async_results(jm: JobMaster) -> None:
    a = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 40, "b": 2})
    m = await jm.insert_job("tasks_for_tests", "multiply", 1, {"x": 1.5, "y": 4})
    e = await jm.insert_job("tasks_for_tests", "echo", 1, {"value": {"k": [1, 2]}, "items": [3]})
    assert await jm.run() == 3
    results = {}
    for job_id in (a, m, e):
        job = await jm.get_job(job_id)
        assert job is not None and job.status == "complete" and job.finished_at and job.started_at
        results[job_id] = job.result
    assert results == {a: 42, m: 6.0, e: {"value": {"k": [1, 2]}, "flag": False, "items": [3]}}


async def test_failure_is_stored_with_type_message_traceback(jm: JobMaster) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "explode", 1, {"reason": "why"})
    job = await jm.pop_job()
    assert job is not None
    await job.execute()
    assert job.status == "failed"
    stored = await jm.get_job(job_id)
    assert stored is not None and stored.status == "failed"
    assert stored.error_type == "ValueError" and stored.message == "exploded: why"
    assert stored.traceback is not None and "raise ValueError" in stored.traceback


async def test_retries_count_every_start(jm: JobMaster) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "flaky", 1, {"key": "k"})  # retries=2
    assert await jm.run() == 3  # backoff 0 in tests: retried at once
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "failed" and job.attempts == 3
    statuses = [h["status"] for h in await jm.history(job_id)]
    assert statuses == ["waiting", "running", "waiting", "running", "waiting", "running", "failed"]


async def test_retry_waits_for_its_backoff(dsn: str, schema_name: str) -> None:
    master = JobMaster(dsn, schema=schema_name, retry_backoff=3600)
    try:
        await master.deploy()
        job_id = await master.insert_job("tasks_for_tests", "flaky", 1, {"key": "slow"})
        assert await master.run() == 1  # run() returns: the retry is due only in an hour
        job = await master.get_job(job_id)
        assert job is not None and job.status == "waiting" and job.attempts == 1
        assert job.run_after is not None and job.created_at is not None
        assert (job.run_after - job.created_at).total_seconds() > 3000
    finally:
        await master.close()
        await drop_schema(dsn, schema_name)


async def test_result_that_is_not_json_fails_the_job(jm: JobMaster) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "untyped", 1, {"thing": 1})
    await jm.run()
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "complete" and job.result == [1, None]


async def test_cancel_and_retry(jm: JobMaster) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
    assert await jm.cancel(str(job_id)) is True
    assert await jm.cancel(job_id) is False
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "cancelled"
    assert await jm.pop_job() is None
    assert await jm.retry(job_id) == job_id
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "waiting" and job.attempts == 0
    with pytest.raises(NotRetryable, match="waiting"):
        await jm.retry(job_id)
    assert await jm.run() == 1
    with pytest.raises(JobNotFound):
        await jm.cancel(uuid.uuid4())
    with pytest.raises(JobNotFound):
        await jm.retry(uuid.uuid4())
    with pytest.raises(ValueError, match="not a job id"):
        await jm.get_job("not-a-uuid")


async def test_retry_returns_the_active_twin(jm: JobMaster) -> None:
    failed = await jm.insert_job("tasks_for_tests", "explode", 1, {"reason": "x"})
    await jm.run()
    twin = await jm.insert_job("tasks_for_tests", "explode", 1, {"reason": "x"})
    assert twin != failed
    assert await jm.retry(failed) == twin
    job = await jm.get_job(failed)
    assert job is not None and job.status == "failed"


async def test_jobs_listing(jm: JobMaster) -> None:
    await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(5)])
    await jm.insert_job("tasks_for_tests", "explode", 1, {"reason": "r"})
    job = await jm.pop_job()
    assert job is not None
    assert len(await jm.jobs()) == 6
    assert len(await jm.jobs(status="waiting")) == 5
    assert len(await jm.jobs(status="running")) == 1
    assert len(await jm.jobs(task_key="add", limit=2)) == 2
    assert await jm.jobs(type_key="nothing") == []
    with pytest.raises(ValueError, match="unknown status"):
        await jm.jobs(status="done")
    await job.execute()


async def test_fencing_drops_a_rescued_jobs_late_result(jm: JobMaster, dsn: str, conn: asyncpg.Connection) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "steady", 1, {"a": 1})  # retries=3
    job = await jm.pop_job()
    assert job is not None
    schema = quote_identifier(jm.schema)
    # the worker is partitioned: its heartbeat lapses and another worker rescues the job
    await conn.execute(f"UPDATE {schema}.workers SET heartbeat_at = now() - interval '1 hour'")
    assert await conn.fetchval(f"SELECT {schema}.rescue_jobs()") == 1
    other = JobMaster(dsn, schema=jm.schema)
    try:
        rescued = await other.pop_job()
        assert rescued is not None and rescued.job_id == job_id and rescued.attempts == 2
        await job.execute()  # the late result of attempt 1: dropped
        stored = await jm.get_job(job_id)
        assert stored is not None and stored.status == "running" and stored.worker_id == other.worker_id
        await rescued.execute()
        stored = await jm.get_job(job_id)
        assert stored is not None and stored.status == "complete" and stored.attempts == 2
    finally:
        await other.close()


async def test_rescue_puts_back_without_using_retries_until_rescues_run_out(
    jm: JobMaster, conn: asyncpg.Connection
) -> None:
    """retries=0, rescues=3 (the default): three lost workers put the job back, the fourth fails
    it; a late outcome of a rescued attempt is fenced out; attempts never decrease."""
    job_id = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
    schema = quote_identifier(jm.schema)
    late = None
    for loss in range(1, 5):
        job = await jm.pop_job()
        assert job is not None and job.job_id == job_id and job.attempts == loss
        late = late or job
        await conn.execute(f"UPDATE {schema}.workers SET heartbeat_at = now() - interval '1 hour'")
        assert await conn.fetchval(f"SELECT {schema}.rescue_jobs()") == 1
        stored = await jm.get_job(job_id)
        assert stored is not None and stored.rescues == loss and stored.attempts == loss
        assert stored.status == ("waiting" if loss <= 3 else "failed"), stored.message
        assert ("put back" if loss <= 3 else "lost 4 times") in (stored.message or "")
    await late.execute()  # type: ignore[union-attr]  # fenced out
    stored = await jm.get_job(job_id)
    assert stored is not None and stored.status == "failed"


async def test_pop_job_heartbeats_until_execute_ends(dsn: str, schema_name: str, conn: asyncpg.Connection) -> None:
    master = JobMaster(dsn, schema=schema_name, heartbeat_interval=0.05)
    schema = quote_identifier(schema_name)
    try:
        await master.deploy()
        await master.insert_job("tasks_for_tests", "add", 1, {"a": 1})
        job = await master.pop_job()
        assert job is not None
        first = await conn.fetchval(f"SELECT heartbeat_at FROM {schema}.workers")
        for _ in range(200):
            later = await conn.fetchval(f"SELECT heartbeat_at FROM {schema}.workers")
            if later > first:
                break
            await conn.execute("SELECT pg_sleep(0.02)")
        assert later > first
        await job.execute()
    finally:
        await master.close()
        await drop_schema(dsn, schema_name)


def pg8000_url(dsn: str) -> str:
    url = sqlalchemy.engine.make_url(dsn)
    host = url.query.get("host")
    if host:
        url = url.set(query={"unix_sock": f"{host}/.s.PGSQL.{url.port or 5432}"})
    return url.set(drivername="postgresql+pg8000").render_as_string(hide_password=False)


def test_seed_script_runs_verbatim_with_the_sync_facade(dsn: str, schema_name: str, tmp_path: Path) -> None:
    """The seed's task1 example: inserted through SQL, popped and executed by a blocking script."""
    out = tmp_path / "sum.txt"
    call = (
        f"call {quote_identifier(schema_name)}.insert_job('my_tasks', 'task1', 10, "
        f"""'{{"file_path": "{out}", "a": 1, "b": 2}}'::json)"""
    )
    deploy = textwrap.dedent(f"""
        import sqlalchemy
        from jobmaster_async.sync import JobMaster
        my_database_engine = sqlalchemy.create_engine({pg8000_url(dsn)!r})
        jobmaster = JobMaster(db_engine=my_database_engine, schema={schema_name!r},
                              task_modules=["jobmaster_async.examples.my_tasks"])
        jobmaster.deploy()
        with my_database_engine.begin() as c:
            c.execute(sqlalchemy.text({call!r}))
    """)
    run = textwrap.dedent(f"""
        import sqlalchemy
        from jobmaster_async.sync import JobMaster
        import jobmaster_async.examples.my_tasks

        # Create a SQLAlchemy engine for your PostgreSQL database
        my_database_engine = sqlalchemy.create_engine({pg8000_url(dsn)!r})

        # Create a JobMaster instance
        jobmaster = JobMaster(db_engine=my_database_engine, schema={schema_name!r})

        # Run the next job in the queue
        job = jobmaster.pop_job()
        if job:
            job.execute()
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    try:
        for script in (deploy, run):
            subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
        assert out.read_text() == "3"
    finally:
        import asyncio

        asyncio.run(drop_schema(dsn, schema_name))


def test_sync_facade_run_forever_and_stop(dsn: str, schema_name: str) -> None:
    import threading

    from jobmaster_async.sync import JobMaster as SyncJobMaster

    master = SyncJobMaster(dsn, schema=schema_name, poll_interval=3600)
    try:
        master.deploy()
        job_id = master.insert_job("tasks_for_tests", "add", 1, {"a": 5})
        runner = threading.Thread(target=master.run_forever, kwargs={"concurrency": 2})
        runner.start()
        import asyncio

        # the async counter of recorded outcomes, awaited on the facade's loop
        asyncio.run_coroutine_threadsafe(master.aio.events.wait_for(JobFinished, 1), master._runner.loop).result(30)
        master.stop()
        runner.join(30)
        assert not runner.is_alive()
        job = master.get_job(job_id)
        assert job is not None and job.status == "complete" and job.result == 6
        assert master.counts() == {"complete": 1}
        assert master.active_counts() == {"waiting": 0, "blocked": 0, "running": 0}
        assert master.dependencies(job_id) == []
    finally:
        master.close()
        import asyncio

        asyncio.run(drop_schema(dsn, schema_name))


async def _reasons(jm: JobMaster, job_id: uuid.UUID) -> list[tuple[str, str]]:
    return [(event["status"], event["reason"]) for event in await jm.history(job_id)]


async def test_history_says_why_each_status_changed(jm: JobMaster) -> None:
    flaky = await jm.insert_job("tasks_for_tests", "flaky", 1, {"key": "why"})
    dependent = await jm.insert_job("tasks_for_tests", "doubled", 1, {"n": 4})
    cancelled = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 2})
    assert await jm.cancel(cancelled)
    await jm.run()
    assert await _reasons(jm, flaky) == [
        ("waiting", "inserted"),
        *[("running", "claimed"), ("waiting", "retried")] * 2,
        ("running", "claimed"),
        ("failed", "failed"),
    ]
    assert await _reasons(jm, dependent) == [
        ("blocked", "inserted"),
        ("waiting", "unblocked"),
        ("running", "claimed"),
        ("complete", "completed"),
    ]
    await jm.retry(cancelled)
    assert await _reasons(jm, cancelled) == [
        ("waiting", "inserted"),
        ("cancelled", "cancelled"),
        ("waiting", "requeued"),
    ]


async def test_pop_job_rescues_jobs_of_lost_workers(jm: JobMaster, dsn: str, conn: asyncpg.Connection) -> None:
    """A deployment that only pops (a cron script running run()) recovers a lost worker's jobs."""
    job_id = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 5})
    lost = await jm.pop_job()
    assert lost is not None
    await conn.execute(f"UPDATE {quote_identifier(jm.schema)}.workers SET heartbeat_at = now() - interval '1 hour'")
    other = JobMaster(dsn, schema=jm.schema)
    try:
        assert await other.run() == 1
    finally:
        await other.close()
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "complete" and (job.attempts, job.rescues) == (2, 1)
    assert [reason for _, reason in await _reasons(jm, job_id)] == [
        "inserted",
        "claimed",
        "rescued",
        "claimed",
        "completed",
    ]


def test_a_sync_job_is_a_job_brought_up_to_date_by_execute(dsn: str, schema_name: str) -> None:
    """The blocking facade's pop_job: a Job (typed, the same fields) whose execute() blocks and
    then shows the outcome, as PoppedJob's does."""
    import asyncio

    from jobmaster_async import Job
    from jobmaster_async.sync import JobMaster as SyncJobMaster
    from jobmaster_async.sync import SyncJob

    try:
        with SyncJobMaster(dsn, schema=schema_name) as blocking:
            blocking.deploy()
            job_id = blocking.insert_job("tasks_for_tests", "add", 0, {"a": 2})
            job = blocking.pop_job()
            assert isinstance(job, SyncJob) and isinstance(job, Job)
            assert (job.job_id, job.status, job.attempts, job.arguments) == (job_id, "running", 1, {"a": 2, "b": 1})
            job.execute()
            assert (job.status, job.result) == ("complete", 3)
            stored = blocking.get_job(job_id)
            assert stored is not None and (stored.status, stored.result) == ("complete", 3)
            with pytest.raises(RuntimeError, match="already executed"):
                job.execute()
    finally:
        asyncio.run(drop_schema(dsn, schema_name))
