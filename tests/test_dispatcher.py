"""run_forever in-process: NOTIFY wake-up, concurrency, executors, timeouts, retries, cancel,
graceful shutdown, and surviving dropped connections."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import asyncpg
import pytest

from jobmaster_async import JobMaster, cancel_requested, task
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.events import Claimed, JobFinished
from tests.conftest import orders_table, worker
from tests.pg import PgServer
from tests.polling import until, within


@pytest.fixture
def retry_backoff() -> float:
    """idle_jm's (conftest): a retry falls due later, and the dispatcher must wake for it."""
    return 0.2


async def status_of(master: JobMaster, job_id: uuid.UUID) -> str:
    job = await master.get_job(job_id)
    assert job is not None
    return job.status


async def test_drains_and_wakes_on_notify(idle_jm: JobMaster) -> None:
    await idle_jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(50)])
    async with worker(idle_jm, concurrency=8):
        await within(idle_jm.events.wait_for(JobFinished, 50), "50 jobs to finish")
        # idle now; a new insert wakes it (the poll is an hour away)
        job_id = await idle_jm.insert_job("tasks_for_tests", "add", 1, {"a": 1000})
        await within(idle_jm.events.wait_for(JobFinished, 51), "51 jobs to finish")
    assert await status_of(idle_jm, job_id) == "complete"
    assert len(await idle_jm.jobs(status="complete", limit=100)) == 51


async def test_a_trigger_in_another_schema_wakes_an_idle_worker(idle_jm: JobMaster, conn: asyncpg.Connection) -> None:
    async with orders_table(conn, idle_jm.schema, "add", "json_build_object('a', NEW.id)") as orders:
        async with worker(idle_jm):
            await conn.execute(f"INSERT INTO {orders} VALUES (7, '')")
            await within(idle_jm.events.wait_for(JobFinished, 1), "1 job to finish")
        [job] = await idle_jm.jobs()
        assert job.status == "complete" and job.result == 8


async def test_never_more_than_concurrency(idle_jm: JobMaster) -> None:
    running = 0
    peak = 0
    original = idle_jm._worker.claim

    async def counting_claim(limit: int, units: int) -> list:  # type: ignore[type-arg]
        nonlocal running, peak
        claims = await original(limit, units)
        running += len(claims)
        peak = max(peak, running)
        return claims

    idle_jm._worker.claim = counting_claim  # type: ignore[method-assign]
    original_record = idle_jm._worker.record

    async def counting_record(outcomes: list) -> set:  # type: ignore[type-arg]
        nonlocal running
        running -= len(outcomes)
        return await original_record(outcomes)

    idle_jm._worker.record = counting_record  # type: ignore[method-assign,assignment]
    await idle_jm.insert_jobs(
        "tasks_for_tests", "sleepy", 1, [{"seconds": (i % 5) / 100 + i / 100_000} for i in range(40)]
    )
    async with worker(idle_jm, concurrency=3):
        await within(idle_jm.events.wait_for(JobFinished, 40), "40 jobs to finish")
    assert peak == 3  # the hard bound (DESIGN 8), reached; a slot frees when its outcome is recorded
    assert len(await idle_jm.jobs(status="complete", limit=100)) == 40


async def test_the_database_never_sees_more_running_jobs_than_concurrency(
    idle_jm: JobMaster, conn: asyncpg.Connection
) -> None:
    """Sampled from another connection during a drain of short jobs: finished jobs whose outcomes
    wait for their batch still count against concurrency."""
    concurrency, jobs = 4, 3000
    await idle_jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(jobs)])
    query = f"SELECT count(*) FROM {quote_identifier(idle_jm.schema)}.jobs WHERE worker_id = $1 AND status = 'running'"
    samples: list[int] = []
    async with worker(idle_jm, concurrency=concurrency):
        while idle_jm.events.count(JobFinished) < jobs:
            samples.append(await conn.fetchval(query, idle_jm.worker_id))
    assert 0 < max(samples) <= concurrency
    assert len(await idle_jm.jobs(status="complete", limit=jobs)) == jobs


async def test_executors_and_timeouts(idle_jm: JobMaster) -> None:
    ids = {
        "process": await idle_jm.insert_job("tasks_for_tests", "in_process", 1, {"n": 21}),
        "async_slow": await idle_jm.insert_job("tasks_for_tests", "async_too_slow", 1, {"seconds": 30}),
        "thread_slow": await idle_jm.insert_job("tasks_for_tests", "thread_too_slow", 1, {"seconds": 0.6}),
        "process_slow": await idle_jm.insert_job("tasks_for_tests", "process_too_slow", 1, {"seconds": 30}),
    }
    async with worker(idle_jm, concurrency=4):
        # each slow one: 2 attempts (retries=1), each recorded; the process one once
        await within(idle_jm.events.wait_for(JobFinished, 7), "7 jobs to finish")
    jobs = {k: await idle_jm.get_job(v) for k, v in ids.items()}
    assert jobs["process"] is not None and jobs["process"].result == 42
    for key in ("async_slow", "thread_slow", "process_slow"):
        job = jobs[key]
        assert job is not None and job.status == "failed" and job.attempts == 2, key
        assert job.error_type == "TimeoutError" and "timed out" in (job.message or "")
        events = [e["status"] for e in await idle_jm.history(job.job_id)]
        assert events == ["waiting", "running", "waiting", "running", "failed"], key


#: the type key of the tasks a test defines (removed afterwards by the ``forget`` fixture)
SCRATCH = "scratch_dispatcher"


class ThreadGate:
    """A blocked_too_long job's: ``timed_out`` is set once its thread noticed its timeout; it
    returns once ``opened`` is set."""

    def __init__(self) -> None:
        self.timed_out = threading.Event()
        self.opened = threading.Event()


async def test_thread_timeout_keeps_its_slot_until_the_thread_returns(
    idle_jm: JobMaster, conn: asyncpg.Connection, forget: None
) -> None:
    """The timed-out attempt keeps its single slot until its thread returns, which is when the
    test lets it: the quick job, which needed that slot, starts only after that (an ordering of
    the database's clock readings, not a duration)."""
    gate = ThreadGate()

    @task(type_key=SCRATCH, timeout=0.2, retries=1)
    def blocked_too_long() -> None:
        while not cancel_requested():  # the timeout sets it
            time.sleep(0.01)
        gate.timed_out.set()
        gate.opened.wait(60)

    await idle_jm.deploy()

    async def timed_out() -> bool:
        return gate.timed_out.is_set()

    try:
        slow = await idle_jm.insert_job(SCRATCH, "blocked_too_long", 1, {})
        async with worker(idle_jm, concurrency=1):
            await within(idle_jm.events.wait_for(Claimed, 1), "the slow job to be claimed")
            quick = await idle_jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
            await until(timed_out, "the slow attempt to time out")
            opened_at = await conn.fetchval("SELECT clock_timestamp()")
            gate.opened.set()  # its thread returns now, and only now
            await within(idle_jm.events.wait_for(JobFinished, 3), "the slow job's two attempts and the quick job")
    finally:
        gate.opened.set()
    quick_job = await idle_jm.get_job(quick)
    assert quick_job is not None and quick_job.status == "complete" and quick_job.started_at is not None
    assert quick_job.started_at >= opened_at
    slow_job = await idle_jm.get_job(slow)
    assert slow_job is not None and slow_job.status == "failed" and slow_job.attempts == 2
    assert slow_job.error_type == "TimeoutError"


async def test_retry_due_wakes_the_dispatcher(idle_jm: JobMaster) -> None:
    job_id = await idle_jm.insert_job("tasks_for_tests", "flaky", 1, {"key": "x"})  # retries=2, backoff 0.2s
    async with worker(idle_jm):
        await within(idle_jm.events.wait_for(JobFinished, 3), "3 jobs to finish")
    job = await idle_jm.get_job(job_id)
    assert job is not None and job.status == "failed" and job.attempts == 3


async def test_cancel_a_running_async_job(idle_jm: JobMaster) -> None:
    job_id = await idle_jm.insert_job("tasks_for_tests", "sleepy", 1, {"seconds": 60})
    async with worker(idle_jm):
        await within(idle_jm.events.wait_for(Claimed, 1), "1 job to be claimed")
        assert await idle_jm.cancel(job_id) is True
        await within(idle_jm.events.wait_for(JobFinished, 1), "1 job to finish")
        assert await status_of(idle_jm, job_id) == "cancelled"
        # the slot is free again
        other = await idle_jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
        await within(idle_jm.events.wait_for(JobFinished, 2), "2 jobs to finish")
        assert await status_of(idle_jm, other) == "complete"


async def test_cancel_a_running_thread_job_is_cooperative(idle_jm: JobMaster, conn: asyncpg.Connection) -> None:
    job_id = await idle_jm.insert_job("tasks_for_tests", "thread_until_cancelled", 1, {"limit": 30})
    async with worker(idle_jm):
        await within(idle_jm.events.wait_for(Claimed, 1), "1 job to be claimed")
        assert await idle_jm.cancel(job_id) is True
        await within(idle_jm.events.wait_for(JobFinished, 1), "1 job to finish")
        assert await status_of(idle_jm, job_id) == "cancelled"
        # the thread noticed cancel_requested() and returned: its slot and abandoned mark go
        await until(
            lambda: _not_abandoned(conn, idle_jm, job_id), "the abandoned mark to clear once the thread returned"
        )


async def _not_abandoned(conn: asyncpg.Connection, master: JobMaster, job_id: uuid.UUID) -> bool:
    return not await conn.fetchval(
        f"SELECT abandoned FROM {quote_identifier(master.schema)}.jobs WHERE job_id = $1", job_id
    )


async def test_graceful_stop_lets_running_jobs_finish(idle_jm: JobMaster) -> None:
    ids = await idle_jm.insert_jobs("tasks_for_tests", "sleepy", 1, [{"seconds": 0.3 + i / 100} for i in range(4)])
    async with worker(idle_jm, concurrency=4, grace_period=30):
        await within(idle_jm.events.wait_for(Claimed, 4), "4 jobs to be claimed")
    for job_id in ids:
        assert await status_of(idle_jm, job_id) == "complete"
    assert await idle_jm.jobs(status="running") == []


async def test_grace_period_over_puts_jobs_back(idle_jm: JobMaster, conn: asyncpg.Connection) -> None:
    job_id = await idle_jm.insert_job("tasks_for_tests", "sleepy", 1, {"seconds": 60})
    async with worker(idle_jm, concurrency=2, grace_period=0.1):
        await within(idle_jm.events.wait_for(Claimed, 1), "1 job to be claimed")
    job = await idle_jm.get_job(job_id)
    # the start stays counted (fencing) and is given back: no retry used up
    assert job is not None and job.status == "waiting" and (job.attempts, job.max_attempts) == (1, 2)
    assert [event["reason"] for event in await idle_jm.history(job_id)] == ["inserted", "claimed", "released"]
    assert await conn.fetchval(f"SELECT count(*) FROM {quote_identifier(idle_jm.schema)}.workers") == 0


async def test_cancelling_run_forever_is_a_graceful_stop(idle_jm: JobMaster) -> None:
    quick = await idle_jm.insert_job("tasks_for_tests", "sleepy", 1, {"seconds": 0.2})
    task = asyncio.create_task(idle_jm.run_forever(2, grace_period=10))
    await within(idle_jm.events.wait_for(Claimed, 1), "1 job to be claimed")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await status_of(idle_jm, quick) == "complete"
    assert await idle_jm.jobs(status="running") == []


async def test_a_failing_task_never_disturbs_the_dispatcher(idle_jm: JobMaster) -> None:
    await idle_jm.insert_jobs("tasks_for_tests", "explode", 1, [{"reason": str(i)} for i in range(10)])
    await idle_jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(10)])
    async with worker(idle_jm):
        await within(idle_jm.events.wait_for(JobFinished, 20), "20 jobs to finish")
    assert len(await idle_jm.jobs(status="failed")) == 10
    assert len(await idle_jm.jobs(status="complete")) == 10


async def test_survives_killed_connections(idle_jm: JobMaster, conn: asyncpg.Connection) -> None:
    async with worker(idle_jm):
        await idle_jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
        await within(idle_jm.events.wait_for(JobFinished, 1), "1 job to finish")
        # kill every connection of this worker: the LISTEN one and the pool's
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE 'jobmaster_async%' OR query LIKE 'LISTEN%'"
        )
        assert killed >= 2
        await until(lambda: _listening(conn), "the listener to reconnect")
        job_id = await conn.fetchval(
            f"SELECT {quote_identifier(idle_jm.schema)}.add_job('tasks_for_tests', 'add', 1, $1::json)",
            json.dumps({"a": 2}),
        )
        await within(idle_jm.events.wait_for(JobFinished, 2), "2 jobs to finish")
        assert await status_of(idle_jm, job_id) == "complete"


async def _listening(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"))


async def test_survives_a_database_restart(pg: PgServer, idle_jm: JobMaster, dsn: str) -> None:
    if pg.handle is None:
        pytest.skip("needs the embedded server (JOBMASTER_TEST_DSN is set)")
    async with worker(idle_jm):
        await idle_jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
        await within(idle_jm.events.wait_for(JobFinished, 1), "1 job to finish")
        await asyncio.to_thread(pg.restart)
        probe = await asyncpg.connect(dsn)
        try:
            await until(lambda: _listening(probe), "the listener to reconnect after the restart")
        finally:
            await probe.close()
        job_id = await idle_jm.insert_job("tasks_for_tests", "add", 1, {"a": 2})
        await within(idle_jm.events.wait_for(JobFinished, 2), "2 jobs to finish")
        assert await status_of(idle_jm, job_id) == "complete"
