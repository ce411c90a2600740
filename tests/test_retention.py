"""Retention (DESIGN 9 "Retention"): finished jobs older than their task's retention go with their
history; what dependencies still need stays (the freshness window of a Dependency on the task,
jobs that active jobs depend on, "ALL" children of an active parent); the SQL batch, prune(),
its dry run and the CLI; the background pruning of run_forever, one worker at a time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import timedelta

import asyncpg
import pytest
from click.testing import CliRunner

from jobmaster_async import JobMaster
from jobmaster_async.cli import main
from jobmaster_async.errors import ConfigurationError, TaskDefinitionError
from jobmaster_async.events import JobFinished, Pruned
from jobmaster_async.tasks import task
from tests.conftest import deployed, q, worker
from tests.polling import within

T = "tasks_for_tests"


async def finish(
    jm: JobMaster, conn: asyncpg.Connection, task_key: str, arguments: dict[str, int], ago: timedelta
) -> uuid.UUID:
    """A job of ``task_key`` run to completion, its end moved ``ago`` into the past."""
    job_id = await jm.insert_job(T, task_key, 0, arguments)
    assert await run_one(jm) == job_id
    await age(jm, conn, [job_id], ago)
    return job_id


async def run_one(jm: JobMaster) -> uuid.UUID | None:
    """Pops a job and runs it; its id (None: nothing to run)."""
    popped = await jm.pop_job()
    if popped is None:
        return None
    await popped.execute()
    return popped.job_id


async def run_all(jm: JobMaster) -> None:
    while await run_one(jm) is not None:
        pass


async def age(jm: JobMaster, conn: asyncpg.Connection, ids: Sequence[uuid.UUID], ago: timedelta) -> None:
    await conn.execute(f"UPDATE {q(jm)}.jobs SET finished_at = now() - $2::interval WHERE job_id = ANY ($1)", ids, ago)


async def existing(jm: JobMaster, conn: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.fetch(f"SELECT job_id FROM {q(jm)}.jobs WHERE job_id = ANY ($1)", ids)
    return {row["job_id"] for row in rows}


async def history_of(jm: JobMaster, conn: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> int:
    count: int = await conn.fetchval(f"SELECT count(*) FROM {q(jm)}.job_events WHERE job_id = ANY ($1)", ids)
    return count


async def test_deploy_stores_each_tasks_retention(jm: JobMaster, conn: asyncpg.Connection, dsn: str) -> None:
    rows = await conn.fetch(f"SELECT task_key, retention FROM {q(jm)}.tasks WHERE type_key = $1", T)
    retention = {row["task_key"]: row["retention"] for row in rows}
    assert retention["add"] == timedelta(days=7)
    assert retention["short_lived"] == timedelta(hours=1)
    assert retention["kept_forever"] is None
    # the JobMaster's retention is the default of the tasks that set none; the last deploy wins
    forever = JobMaster(dsn, schema=jm.schema, retention=None)
    await forever.deploy()
    await forever.close()
    rows = await conn.fetch(f"SELECT task_key, retention FROM {q(jm)}.tasks WHERE type_key = $1", T)
    retention = {row["task_key"]: row["retention"] for row in rows}
    assert retention["add"] is None
    assert retention["short_lived"] == timedelta(hours=1)


async def test_old_finished_jobs_go_with_their_history(jm: JobMaster, conn: asyncpg.Connection) -> None:
    old = await finish(jm, conn, "numbered", {"number": 1}, timedelta(days=8))
    recent = await finish(jm, conn, "numbered", {"number": 2}, timedelta(days=6))
    failed = await jm.insert_job(T, "explode", 0, {"reason": "no"})
    assert await run_one(jm) == failed
    await age(jm, conn, [failed], timedelta(days=8))
    waiting = await jm.insert_job(T, "numbered", 0, {"number": 3})
    await conn.execute(f"UPDATE {q(jm)}.jobs SET created_at = now() - interval '30 days' WHERE job_id = $1", waiting)
    assert await history_of(jm, conn, [old, failed]) > 0

    # numbered: a Dependency(numbered) with the default 720 hours protects complete jobs for 30
    # days, so its old job stays; the failed one goes (only a complete job satisfies)
    assert await jm.prune() == 1
    assert await existing(jm, conn, [old, recent, failed, waiting]) == {old, recent, waiting}
    assert await history_of(jm, conn, [failed]) == 0
    # past the freshness window too, it goes
    await age(jm, conn, [old], timedelta(days=31))
    assert await jm.prune() == 1
    assert await existing(jm, conn, [old, recent, waiting]) == {recent, waiting}
    assert await history_of(jm, conn, [old]) == 0


async def test_per_task_retention_and_kept_forever(jm: JobMaster, conn: asyncpg.Connection) -> None:
    short = await finish(jm, conn, "short_lived", {"n": 1}, timedelta(hours=2))
    fresh = await finish(jm, conn, "short_lived", {"n": 2}, timedelta(minutes=30))
    forever = await finish(jm, conn, "kept_forever", {"n": 1}, timedelta(days=400))
    plain = await finish(jm, conn, "add", {"a": 1}, timedelta(days=3))
    assert await jm.prune() == 1
    assert await existing(jm, conn, [short, fresh, forever, plain]) == {fresh, forever, plain}
    # older_than replaces every task's retention, kept-forever ones included
    assert await jm.prune(older_than=timedelta(days=1)) == 2
    assert await existing(jm, conn, [fresh, forever, plain]) == {fresh}


async def test_a_complete_dependency_within_its_freshness_window_stays(jm: JobMaster, conn: asyncpg.Connection) -> None:
    # Dependency(base, 1, ...) on doubled and halved: a complete base job satisfies them for 1 hour
    within = await finish(jm, conn, "base", {"n": 1}, timedelta(minutes=30))
    beyond = await finish(jm, conn, "base", {"n": 2}, timedelta(hours=2))
    failed_within = await jm.insert_job(T, "base", 0, {"n": 3})
    await conn.execute(
        f"UPDATE {q(jm)}.jobs SET status = 'failed', finished_at = now() - interval '30 minutes' WHERE job_id = $1",
        failed_within,
    )
    assert await jm.prune(older_than=timedelta(minutes=1)) == 2
    assert await existing(jm, conn, [within, beyond, failed_within]) == {within}
    # so a dependent inserted now finds it and does not run it again
    dependent = await jm.insert_job(T, "halved", 0, {"n": 2})
    job = await jm.get_job(dependent)
    assert job is not None and job.status == "waiting"
    assert await jm.dependencies(dependent) == []


async def test_a_job_an_active_job_depends_on_stays(jm: JobMaster, conn: asyncpg.Connection) -> None:
    dependent = await jm.insert_job(T, "doubled", 0, {"n": 3})
    [dependency] = [d["job_id"] for d in await jm.dependencies(dependent)]
    assert await run_one(jm) == dependency
    await age(jm, conn, [dependency], timedelta(days=10))
    assert await jm.prune(older_than=timedelta(minutes=1)) == 0
    assert await existing(jm, conn, [dependency]) == {dependency}
    # once the dependent is finished, the dependency may go (and the dependent in its turn)
    assert await jm.cancel(dependent)
    assert await jm.prune(older_than=timedelta(minutes=1)) == 1
    assert await existing(jm, conn, [dependency, dependent]) == {dependent}


async def test_the_children_of_an_active_all_parent_stay(jm: JobMaster, conn: asyncpg.Connection) -> None:
    top = await jm.insert_job(T, "painted_in_every_colour", 0, {"item": "chair"})
    [parent] = [d["job_id"] for d in await jm.dependencies(top)]
    children = [d["job_id"] for d in await jm.dependencies(parent)]
    assert len(children) == 2
    child = await run_one(jm)
    assert child is not None and child in children
    await age(jm, conn, [child], timedelta(days=60))
    assert await jm.prune(older_than=timedelta(minutes=1)) == 0
    assert await existing(jm, conn, children) == set(children)


async def test_prune_jobs_deletes_one_batch(jm: JobMaster, conn: asyncpg.Connection) -> None:
    ids = await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(5)])
    await run_all(jm)
    await age(jm, conn, ids, timedelta(days=8))
    assert await conn.fetchval(f"SELECT {q(jm)}.prune_jobs(NULL, 2)") == 2
    assert await conn.fetchval(f"SELECT {q(jm)}.prune_jobs(NULL)") == 3
    assert await conn.fetchval(f"SELECT {q(jm)}.prune_jobs('1 second')") == 0
    assert await existing(jm, conn, ids) == set()


async def test_dry_run_deletes_nothing(jm: JobMaster, conn: asyncpg.Connection, dsn: str) -> None:
    ids = await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(3)])
    await run_all(jm)
    await age(jm, conn, ids[:2], timedelta(days=8))
    await age(jm, conn, ids[2:], timedelta(minutes=5))
    assert await jm.prune(dry_run=True) == 2
    assert await jm.prune(older_than=timedelta(minutes=1), dry_run=True) == 3
    runner = CliRunner()
    base = ["--dsn", dsn, "--schema", jm.schema]
    result = await asyncio.to_thread(runner.invoke, main, [*base, "prune", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "would prune 2 jobs (dry run: nothing deleted)"
    result = await asyncio.to_thread(runner.invoke, main, [*base, "prune", "--older-than", "1m", "--dry-run"])
    assert "would prune 3 jobs" in result.output
    assert await existing(jm, conn, ids) == set(ids)
    result = await asyncio.to_thread(runner.invoke, main, [*base, "prune", "--older-than", "7d"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "pruned 2 jobs"
    assert await existing(jm, conn, ids) == {ids[2]}
    result = await asyncio.to_thread(runner.invoke, main, [*base, "prune", "--older-than", "soon"])
    assert result.exit_code == 2 and "--older-than" in result.output


async def test_one_worker_prunes_at_a_time(jm: JobMaster, conn: asyncpg.Connection) -> None:
    ids = await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(3)])
    await run_all(jm)
    await age(jm, conn, ids, timedelta(days=8))
    # another worker's batch holds the schema's prune lock: this worker leaves it to that one
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", jm.sql.prune_lock)
        assert await jm._store.prune_jobs_if_free(1000) is None
        assert await jm._worker.pruner.prune() == 0
        assert await existing(jm, conn, ids) == set(ids)
    assert await jm._worker.pruner.prune() == 3
    assert await existing(jm, conn, ids) == set()


async def test_two_workers_pruning_at_once_never_overlap(dsn: str, schema_name: str) -> None:
    """Two workers whose prunings start together: while one holds the lock the other's batch
    returns None; together they delete each job once."""
    async with deployed(dsn, schema_name) as first:
        second = JobMaster(dsn, schema=schema_name)
        try:
            ids = await first.insert_jobs(T, "add", 0, [{"a": i} for i in range(2500)])
            await first._store.pool()
            async with first.connection() as c:
                await c.execute(
                    f"UPDATE {q(first)}.jobs SET status = 'complete', finished_at = now() - interval '8 days'"
                )
            counts = await asyncio.gather(first._worker.pruner.prune(), second._worker.pruner.prune())
            assert sum(counts) == len(ids)
            assert await first.prune() == 0
        finally:
            await second.close()


async def test_run_forever_prunes_in_the_background(dsn: str, schema_name: str) -> None:
    async with deployed(dsn, schema_name, prune_interval=0.2) as master:
        ids = await master.insert_jobs(T, "add", 0, [{"a": i} for i in range(3)])
        async with worker(master):
            await within(master.events.wait_for(JobFinished, 3), "3 jobs to finish")
            async with master.connection() as c:
                await c.execute(f"UPDATE {q(master)}.jobs SET finished_at = now() - interval '8 days'")
            await master.events.wait_for(Pruned, 1, 30)  # one pruning deletes all 3 (one UPDATE made them due)
        async with master.connection() as c:
            assert await c.fetchval(f"SELECT count(*) FROM {q(master)}.jobs WHERE job_id = ANY ($1)", ids) == 0


async def nope() -> None: ...


async def test_bad_retentions_are_refused(dsn: str, jm: JobMaster) -> None:
    with pytest.raises(TaskDefinitionError, match=r"task retention_test\.nope: retention must be a timedelta"):
        task(type_key="retention_test", task_key="nope", retention=7)(nope)  # type: ignore[call-overload]

    with pytest.raises(ConfigurationError, match="retention must be a timedelta > 0"):
        JobMaster(dsn, retention=timedelta(0))
    with pytest.raises(ConfigurationError, match="older_than must be a timedelta > 0"):
        await jm.prune(older_than=timedelta(seconds=-1))


async def test_counts_are_exact_on_a_small_table(jm: JobMaster, conn: asyncpg.Connection) -> None:
    await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(3)])
    assert await run_one(jm) is not None
    assert await jm.counts() == {"waiting": 2, "complete": 1}


async def test_counts_estimate_finished_jobs_in_a_large_table(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """Past 100,000 rows, finished statuses come from the statistics (here a table made to look
    large: its row estimate raised by hand after ANALYZE), active ones are still counted."""
    ids = await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(40)])
    await conn.execute(
        f"UPDATE {q(jm)}.jobs SET status = 'complete', finished_at = now() WHERE job_id = ANY ($1)", ids[:20]
    )
    await conn.execute(
        f"UPDATE {q(jm)}.jobs SET status = 'failed', finished_at = now() WHERE job_id = ANY ($1)", ids[20:30]
    )
    await conn.execute(f"ANALYZE {q(jm)}.jobs")
    await conn.execute(f"UPDATE pg_class SET reltuples = 4000000 WHERE oid = '{q(jm)}.jobs'::regclass")
    counts = await jm.counts()
    assert counts["waiting"] == 10
    assert counts["complete"] == 2_000_000 and counts["failed"] == 1_000_000
    assert "cancelled" not in counts
