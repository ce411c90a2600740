"""Claiming: order, exactly-once under concurrency, process_limit, process_units, registration."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from tests.conftest import inner_plans
from tests.polling import within
from tests.statements import claim_statements, plain_claims


async def test_priority_then_age(jm: JobMaster) -> None:
    low = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
    high_old = await jm.insert_job("tasks_for_tests", "add", 9, {"a": 2})
    high_new = await jm.insert_job("tasks_for_tests", "add", 9, {"a": 3})
    order = []
    while (job := await jm.pop_job()) is not None:
        order.append(job.job_id)
        await job.execute()
    assert order == [high_old, high_new, low]


async def test_only_registered_tasks_are_claimed(jm: JobMaster, conn: asyncpg.Connection) -> None:
    schema = quote_identifier(jm.schema)
    await conn.execute(f"INSERT INTO {schema}.tasks (type_key, task_key) VALUES ('elsewhere', 'job')")
    await conn.execute(f"SELECT {schema}.add_job('elsewhere', 'job', 100, '{{}}')")
    mine = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
    job = await jm.pop_job()
    assert job is not None and job.job_id == mine
    await job.execute()
    assert await jm.pop_job() is None
    assert [j.status for j in await jm.jobs(type_key="elsewhere")] == ["waiting"]


async def claim_all(dsn: str, schema: str, claimers: int, batch: int) -> list[list[uuid.UUID]]:
    masters = [JobMaster(dsn, schema=schema) for _ in range(claimers)]
    start = asyncio.Event()
    connected = asyncio.Event()
    ready = 0

    async def drain(master: JobMaster) -> list[uuid.UUID]:
        nonlocal ready
        await master._worker.claimable_task_ids()
        ready += 1
        if ready == claimers:
            connected.set()
        await within(start.wait(), "the race to start")
        got: list[uuid.UUID] = []
        while claims := await master._worker.claim(batch, 10_000):
            got.extend(c.job_id for c in claims)
        return got

    try:
        tasks = [asyncio.create_task(drain(m)) for m in masters]
        await within(connected.wait(), "every claimer to connect")  # before the race starts
        start.set()
        return list(await asyncio.gather(*tasks))
    finally:
        for m in masters:
            await m.close()


@pytest.mark.parametrize("batch", [1, 7])
async def test_concurrent_claimers_claim_each_job_exactly_once(jm: JobMaster, dsn: str, batch: int) -> None:
    ids = await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(1000)])
    results = await claim_all(dsn, jm.schema, 8, batch)
    claimed = [job_id for got in results for job_id in got]
    assert len(claimed) == 1000
    assert set(claimed) == set(ids)
    assert sum(1 for got in results if got) > 1  # several claimers really took part


async def test_process_limit_is_never_exceeded(jm: JobMaster, dsn: str, conn: asyncpg.Connection) -> None:
    await jm.insert_jobs("tasks_for_tests", "limited", 1, [{"n": i} for i in range(60)])
    schema = quote_identifier(jm.schema)
    masters = [JobMaster(dsn, schema=jm.schema, retry_backoff=0.0) for _ in range(8)]
    peak = 0
    done = 0

    async def work(master: JobMaster) -> None:
        nonlocal peak, done
        while True:
            claims = await master._worker.claim(3, 10_000)
            if not claims:
                if done >= 60:
                    return
                await asyncio.sleep(0.005)  # polling: the others' claims free the slots (bounded below)
                continue
            running = await conn.fetchval(
                f"SELECT count(*) FROM {schema}.jobs j JOIN {schema}.tasks t USING (task_id) "
                "WHERE t.task_key = 'limited' AND j.status = 'running'"
            )
            peak = max(peak, running)
            assert len(claims) <= 2
            from jobmaster_async.worker.executors import Outcome

            await master._worker.record([(c, Outcome(ok=True, result=None)) for c in claims])
            done += len(claims)

    try:
        await asyncio.wait_for(asyncio.gather(*(work(m) for m in masters)), 60)
    finally:
        for m in masters:
            await m.close()
    assert done == 60
    assert 1 <= peak <= 2
    # and exact even in one claim: never more than the limit at once
    await jm.insert_jobs("tasks_for_tests", "limited", 1, [{"n": 100 + i} for i in range(5)])
    claims = await jm._worker.claim(10, 10_000)
    assert len(claims) == 2
    assert await jm._worker.claim(10, 10_000) == []


async def test_process_units_budget(dsn: str, schema_name: str) -> None:
    master = JobMaster(dsn, schema=schema_name, system_process_units=10)
    try:
        await master.deploy()
        await master.insert_jobs("tasks_for_tests", "heavy", 5, [{"n": i} for i in range(4)])  # 4 units each
        await master.insert_job("tasks_for_tests", "add", 1, {"a": 1})  # 1 unit, lower priority
        first = await master.pop_job()
        second = await master.pop_job()
        assert first is not None and second is not None
        assert {first.task_key, second.task_key} == {"heavy"}
        third = await master.pop_job()  # 8 units in use: a heavy one does not fit, the small one does
        assert third is not None and third.task_key == "add"
        assert await master.pop_job() is None
        for job in (first, second, third):
            await job.execute()
        assert await master.run() == 2
    finally:
        await master.close()
        from tests.conftest import drop_schema

        await drop_schema(dsn, schema_name)


async def test_a_job_larger_than_the_budget_is_never_claimed(dsn: str, schema_name: str) -> None:
    master = JobMaster(dsn, schema=schema_name, system_process_units=3)
    try:
        await master.deploy()
        await master.insert_job("tasks_for_tests", "heavy", 5, {"n": 1})
        assert await master.pop_job() is None
        assert [j.status for j in await master.jobs()] == ["waiting"]
    finally:
        await master.close()
        from tests.conftest import drop_schema

        await drop_schema(dsn, schema_name)


async def lift_limits(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """The tests' registry has process_limit and process_units tasks, which send every claim
    through claim_jobs(); without them (in the database) claims take the plain statement."""
    await conn.execute(f"UPDATE {quote_identifier(jm.schema)}.tasks SET process_limit = NULL, process_units = 1")


async def test_a_limit_deployed_elsewhere_is_respected_by_a_running_worker(
    jm: JobMaster, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This process's definitions say add has no process_limit; another deploy gives it one. The
    plain-statement claim notices and leaves the claim to claim_jobs(), which respects it."""
    await lift_limits(jm, conn)
    await jm.insert_job("tasks_for_tests", "add", 1, {"a": 0})
    statements = claim_statements(jm, monkeypatch)
    assert len(await jm._worker.claim(5, 100)) == 1
    assert plain_claims(statements) == 1
    await conn.execute(f"UPDATE {quote_identifier(jm.schema)}.tasks SET process_limit = 2 WHERE task_key = 'add'")
    await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": 1}, {"a": 2}])
    assert len(await jm._worker.claim(5, 100)) == 1  # one running already: one more
    assert plain_claims(statements) == 1 and statements[-1] == "claim_jobs"  # claim_jobs() did
    assert await jm.counts() == {"running": 2, "waiting": 1}


async def test_a_claim_tells_when_the_next_job_falls_due(jm: JobMaster, conn: asyncpg.Connection) -> None:
    await lift_limits(jm, conn)
    job_id = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1}, run_at=timedelta(hours=1))
    assert await jm._worker.claim(5, 100) == []
    assert jm._store.claimer.due_in_known
    assert jm._store.claimer.due_in is not None and 3000 < jm._store.claimer.due_in <= 3600
    # the jobs a claim takes are not waiting any more: nothing else is due
    await conn.execute(
        f"UPDATE {quote_identifier(jm.schema)}.jobs SET run_after = now(), scheduled = false WHERE job_id = $1",
        job_id,
    )
    assert len(await jm._worker.claim(5, 100)) == 1
    assert jm._store.claimer.due_in_known and jm._store.claimer.due_in is None


async def test_concurrent_pops_in_one_process_take_different_jobs(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """One pop runs the plain statement on the claim connection, the other claim_jobs() through
    the pool."""
    await lift_limits(jm, conn)
    await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(2)])
    first, second = await asyncio.gather(jm.pop_job(), jm.pop_job())
    assert first is not None and second is not None and first.job_id != second.job_id
    await asyncio.gather(first.execute(), second.execute())


async def test_claims_and_completions_write_their_own_history(
    jm: JobMaster, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain claim and complete_jobs write their history rows themselves (the trigger skips
    them); the trigger still logs what follows in the same transaction (the dependent that
    complete_jobs unblocks)."""
    await lift_limits(jm, conn)
    bar = await jm.insert_job("nice_tasks", "bar", 1, {"file_path": "/dev/null", "number": 1})
    [foo] = await jm.dependencies(bar)
    statements = claim_statements(jm, monkeypatch)
    job = await jm.pop_job()
    assert job is not None and job.job_id == foo["job_id"] and plain_claims(statements) == 1
    await job.execute()
    foo_history = await jm.history(foo["job_id"])
    assert [h["status"] for h in foo_history] == ["waiting", "running", "complete"]
    for event in foo_history[1:]:
        assert event["worker_id"] == jm.worker_id and event["pid"] and event["node"]
    assert [h["status"] for h in await jm.history(bar)] == ["blocked", "waiting"]


async def test_outcomes_are_recorded_through_the_primary_key(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """complete_jobs finds the batch's jobs by primary key, whatever the statistics say. Taken
    while nothing ran (a queue's usual state), they once made the planner walk all of the
    worker's running jobs and test each against the batch (quadratic). auto_explain shows the
    plan of the statement inside the function."""
    schema = quote_identifier(jm.schema)
    await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": i} for i in range(3000)])
    await conn.execute(f"ANALYZE {schema}.jobs")
    worker = uuid.uuid4()
    task_ids = await jm._worker.claimable_task_ids()
    claim = f"SELECT job_id, attempts FROM {schema}.claim_jobs($1, $2, 300, 10000)"
    claimed = await conn.fetch(claim, worker, task_ids)
    assert len(claimed) == 300
    batch = claimed[:50]
    async with inner_plans(conn) as plans:
        done = await conn.fetchval(
            f"SELECT {schema}.complete_jobs($1, $2, $3, $4::text[]::jsonb[])",
            worker,
            [r["job_id"] for r in batch],
            [r["attempts"] for r in batch],
            ["7"] * len(batch),
        )
    assert sorted(done) == sorted(r["job_id"] for r in batch)
    [update] = [p for p in plans if "Update on jobs" in p]
    assert "jobs_pkey" in update and "jobs_running_idx" not in update


async def test_limited_claims_count_running_jobs_without_bitmap_scans(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """Until vacuum, finished jobs leave dead entries in jobs_running_idx; a bitmap scan visits the
    table for each of them on every claim of a process_limit task (13 ms with 100,000 of them).
    The count reads the index by task, with scans that mark dead entries once."""
    schema = quote_identifier(jm.schema)
    await conn.execute(f"ALTER TABLE {schema}.jobs SET (autovacuum_enabled = off)")
    await jm.insert_jobs("tasks_for_tests", "limited", 1, [{"n": i} for i in range(2000)])
    await conn.execute(f"UPDATE {schema}.jobs SET status = 'running' WHERE status = 'waiting'")
    await conn.execute(f"UPDATE {schema}.jobs SET status = 'complete' WHERE status = 'running'")
    await jm.insert_jobs("tasks_for_tests", "limited", 1, [{"n": -1}, {"n": -2}, {"n": -3}])
    await conn.execute(f"ANALYZE {schema}.jobs")
    limited = await conn.fetchval(f"SELECT task_id FROM {schema}.tasks WHERE task_key = 'limited'")
    claim = f"SELECT job_id FROM {schema}.claim_jobs($1, $2, 10, 10000)"

    async with inner_plans(conn) as plans:
        claimed = await conn.fetch(claim, uuid.uuid4(), [limited])

    assert len(claimed) == 2  # process_limit=2
    [count] = [p for p in plans if "running" in p and "count(*)" in p and "Aggregate" in p]
    assert "jobs_running_idx" in count and "Bitmap" not in count
