"""Scheduled jobs (DESIGN 9 "Scheduled jobs"): run_at from Python and SQL, never early and woken
for (the dispatcher sleeps until the due time, re-armed by NOTIFY: the safety poll here is an
hour away, and every wait is bounded far below it), naive datetimes refused, dedupe moving a job
earlier, scheduled dependents, "ALL", retry(), and claims that do not see future jobs."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobmaster_async import InvalidArguments, JobMaster
from jobmaster_async.events import JobFinished
from jobmaster_async.sync import JobMaster as BlockingJobMaster
from tests import tasks_for_tests
from tests.conftest import deployed, inner_plans, q, worker
from tests.polling import until, within
from tests.statements import claim_statements

T = "tasks_for_tests"

#: The safety poll of the workers here (idle_jm's too): whatever they do within a bounded wait
#: (tests/polling.py, a minute), a timer or a NOTIFY made them do. How late after its time a job
#: starts is a speed figure: benchmarks/scheduled.py measures it.
POLL = 3600.0


async def times(conn: asyncpg.Connection, jm: JobMaster, job_id: uuid.UUID) -> asyncpg.Record:
    """The job's times as the database has them."""
    row = await conn.fetchrow(
        f"SELECT status, run_at, run_after, scheduled, created_at, started_at FROM {q(jm)}.jobs WHERE job_id = $1",
        job_id,
    )
    assert row is not None
    return row


async def db_now(conn: asyncpg.Connection) -> datetime:
    now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return now


def assert_started_on_time(row: asyncpg.Record) -> None:
    """Run, and not before its time (that it ran within the test's bounded wait, far below the
    poll, says that its timer or a NOTIFY woke the worker)."""
    assert row["status"] == "complete"
    assert row["started_at"] >= row["run_at"], "started before its run_at"


async def until_due(conn: asyncpg.Connection, jm: JobMaster, job_id: uuid.UUID) -> None:
    """Until the database's clock has passed the job's run_at: any statement from now on sees it due."""

    async def due() -> bool:
        return bool(
            await conn.fetchval(f"SELECT run_at <= clock_timestamp() FROM {q(jm)}.jobs WHERE job_id = $1", job_id)
        )

    await until(due, "the job's time to come")


# -- run_at from Python and SQL ------------------------------------------------------------------


async def test_run_at_from_python_never_early_and_promptly(idle_jm: JobMaster, conn: asyncpg.Connection) -> None:
    now = await db_now(conn)
    aware = now.astimezone(UTC) + timedelta(seconds=1.5)
    ids = [
        await idle_jm.insert_job(T, "add", 1, {"a": 1}, run_at=timedelta(seconds=1)),
        await idle_jm.insert_job(T, "add", 1, {"a": 2}, run_at=aware),
        # another zone, the same instant rules
        await idle_jm.insert_job(
            T, "add", 1, {"a": 3}, run_at=aware.astimezone(datetime.now().astimezone().tzinfo) + timedelta(seconds=0.3)
        ),
        *await idle_jm.insert_jobs(T, "add", 1, [{"a": 4}, {"a": 5}], run_at=timedelta(seconds=1.2)),
        await idle_jm.options(priority=4, run_at=timedelta(seconds=0.8)).enqueue(tasks_for_tests.add, a=6),
    ]
    first = await times(conn, idle_jm, ids[0])
    assert first["status"] == "waiting" and first["scheduled"]
    assert first["run_at"] - first["created_at"] >= timedelta(seconds=1)  # the server's clock
    assert (await idle_jm.get_job(ids[1])).run_at == aware  # type: ignore[union-attr]
    async with worker(idle_jm):
        await within(idle_jm.events.wait_for(JobFinished, len(ids)), "the jobs to finish")
    for job_id in ids:
        assert_started_on_time(await times(conn, idle_jm, job_id))


async def test_run_at_from_sql_never_early_and_promptly(idle_jm: JobMaster, conn: asyncpg.Connection) -> None:
    s = q(idle_jm)
    ids = [
        await conn.fetchval(f"""SELECT {s}.add_job('{T}', 'add', 1, '{{"a": 1}}', now() + interval '1 second')"""),
        await conn.fetchval(
            f"""SELECT {s}.add_job('{T}', 'add', 1, '{{"a": 2}}', run_at => now() + interval '1.2 seconds')"""
        ),
        (
            await conn.fetchrow(
                f"""CALL {s}.insert_job('{T}', 'add', 1, '{{"a": 3}}'::json, run_at => now() + interval '1 second')"""
            )
        )["job_id"],
        (
            await conn.fetchrow(
                f"""CALL {s}.insert_job('{T}', 'add', 1, '{{"a": 4}}'::json, NULL, now() + interval '0.5 seconds')"""
            )
        )["job_id"],
        # the seed's 4-argument call and PL/pgSQL's 5-argument one keep working
        (await conn.fetchrow(f"""CALL {s}.insert_job('{T}', 'add', 1, '{{"a": 5}}'::json)"""))["job_id"],
    ]
    await conn.execute(f"""
        DO $$
        DECLARE
            v_id uuid;
        BEGIN
            CALL {s}.insert_job('{T}', 'add', 1, '{{"a": 6}}'::json, v_id);
        END $$""")
    # a trigger's add_job in the past runs at once
    ids.append(await conn.fetchval(f"""SELECT {s}.add_job('{T}', 'add', 1, '{{"a": 7}}', now() - interval '1 day')"""))
    assert (await times(conn, idle_jm, ids[-1]))["scheduled"] is False
    async with worker(idle_jm):
        await within(idle_jm.events.wait_for(JobFinished, 7), "7 jobs to finish")
    for job_id in ids[:4]:
        assert_started_on_time(await times(conn, idle_jm, job_id))
    assert {j.status for j in await idle_jm.jobs()} == {"complete"}


async def test_an_earlier_job_inserted_while_the_worker_sleeps_rearms_it(
    idle_jm: JobMaster, conn: asyncpg.Connection
) -> None:
    later = await idle_jm.insert_job(T, "add", 1, {"a": 1}, run_at=timedelta(hours=1))
    await idle_jm.insert_job(T, "add", 1, {"a": 0})
    async with worker(idle_jm):
        # it claimed (and saw the hour's job) and ran the job due now; then it sleeps until the
        # hour's job (or the poll)
        await within(idle_jm.events.wait_for(JobFinished, 1), "the job due now to finish")
        sooner = await idle_jm.insert_job(T, "add", 1, {"a": 2}, run_at=timedelta(seconds=0.5))
        await within(idle_jm.events.wait_for(JobFinished, 2), "the sooner job to finish")
    assert_started_on_time(await times(conn, idle_jm, sooner))
    assert (await times(conn, idle_jm, later))["status"] == "waiting"


async def test_a_naive_datetime_is_refused(jm: JobMaster, dsn: str, schema_name: str) -> None:
    naive = datetime.now() + timedelta(minutes=5)
    for call in (
        lambda: jm.insert_job(T, "add", 1, {"a": 1}, run_at=naive),
        lambda: jm.insert_jobs(T, "add", 1, [{"a": 1}], run_at=naive),
        lambda: jm.options(run_at=naive).enqueue(tasks_for_tests.add, a=1),
    ):
        with pytest.raises(InvalidArguments, match="naive datetime"):
            await call()
    with pytest.raises(InvalidArguments, match="aware datetime or a timedelta"):
        await jm.insert_job(T, "add", 1, {"a": 1}, run_at="tomorrow")  # type: ignore[arg-type]
    assert await jm.jobs() == []
    with BlockingJobMaster(dsn, schema=schema_name) as blocking:
        with pytest.raises(InvalidArguments, match="naive datetime"):
            blocking.insert_job(T, "add", 1, {"a": 1}, run_at=naive)
        job_id = blocking.options(run_at=timedelta(hours=1)).enqueue(tasks_for_tests.add, a=1)
        job = blocking.get_job(job_id)
        assert job is not None and job.run_at is not None and job.status == "waiting"


async def test_pop_job_and_run_do_not_wait_for_future_jobs(
    jm: JobMaster, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = claim_statements(jm, monkeypatch)
    future = await jm.insert_job(T, "add", 1, {"a": 1}, run_at=timedelta(hours=1))
    now = await jm.insert_job(T, "add", 0, {"a": 2})
    assert await jm.run() == 1
    assert (await times(conn, jm, future))["status"] == "waiting"
    assert (await times(conn, jm, now))["status"] == "complete"
    assert await jm.pop_job() is None
    # once due, pop_job promotes and takes it (a cron script that only pops runs scheduled jobs)
    soon = await jm.insert_job(T, "add", 1, {"a": 3}, run_at=timedelta(seconds=0.3))
    assert await jm.pop_job() is None
    assert "promote_due_jobs" not in statements  # no round trip for the future jobs while none is due
    await until_due(conn, jm, soon)
    popped = await jm.pop_job()
    assert popped is not None and popped.job_id == soon
    assert statements.count("promote_due_jobs") == 1
    assert (await times(conn, jm, future))["scheduled"]  # soon alone was promoted
    await popped.execute()
    assert_started_on_time(await times(conn, jm, soon))


async def test_a_due_job_is_claimed_before_a_backlog_by_its_priority(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """Every plain claim says when the earliest scheduled job falls due, also one that took as
    many jobs as it asked for: a due job does not wait for the backlog to drain."""
    urgent = await jm.insert_job(T, "add", 9, {"a": -1}, run_at=timedelta(seconds=0.2))
    await jm.insert_jobs(T, "add", 0, [{"a": i} for i in range(10)])
    first = await jm.pop_job()  # one asked for, one taken
    assert first is not None and first.job_id != urgent
    await until_due(conn, jm, urgent)
    second = await jm.pop_job()
    assert second is not None and second.job_id == urgent
    await first.execute()
    await second.execute()


# -- dedupe and time -----------------------------------------------------------------------------


async def test_a_duplicate_moves_its_twin_earlier_never_later(jm: JobMaster, conn: asyncpg.Connection) -> None:
    job_id = await jm.insert_job(T, "add", 3, {"a": 1}, run_at=timedelta(hours=2))
    planned = (await times(conn, jm, job_id))["run_at"]
    assert await jm.insert_job(T, "add", 7, {"a": 1}, run_at=timedelta(hours=3)) == job_id
    row = await times(conn, jm, job_id)
    assert row["run_at"] == planned and row["scheduled"]
    assert (await jm.get_job(job_id)).priority == 3  # type: ignore[union-attr]  # never changed
    assert await jm.insert_jobs(T, "add", 0, [{"a": 1}], run_at=timedelta(hours=1)) == [job_id]
    moved = await times(conn, jm, job_id)
    assert timedelta(minutes=55) < planned - moved["run_at"] < timedelta(minutes=65)
    assert moved["run_after"] == moved["run_at"] and moved["scheduled"]
    # from SQL too
    earlier = await conn.fetchval(
        f"""SELECT {q(jm)}.add_job('{T}', 'add', 1, '{{"a": 1}}', now() + interval '10 minutes')"""
    )
    assert earlier == job_id
    assert moved["run_at"] - (await times(conn, jm, job_id))["run_at"] > timedelta(minutes=40)
    assert await jm.pop_job() is None
    # without run_at: now, so the twin runs now
    assert await jm.insert_job(T, "add", 1, {"a": 1}) == job_id
    now = await times(conn, jm, job_id)
    assert now["run_at"] is None and not now["scheduled"]
    popped = await jm.pop_job()
    assert popped is not None and popped.job_id == job_id and popped.priority == 3
    # a running twin is not moved
    await jm.insert_job(T, "add", 1, {"a": 1}, run_at=timedelta(days=-1))
    assert (await times(conn, jm, job_id))["run_at"] is None
    await popped.execute()


async def test_a_blocked_twin_is_moved_earlier(jm: JobMaster, conn: asyncpg.Connection, tmp_path: Path) -> None:
    arguments = {"file_path": str(tmp_path / "f"), "number": 1}
    bar = await jm.insert_job("nice_tasks", "bar", 1, arguments, run_at=timedelta(hours=1))
    assert (await times(conn, jm, bar))["status"] == "blocked"
    before = await db_now(conn)
    again = await jm.insert_job("nice_tasks", "bar", 1, arguments, run_at=timedelta(seconds=0.3))
    after = await db_now(conn)
    assert again == bar
    row = await times(conn, jm, bar)
    assert row["status"] == "blocked"
    assert before + timedelta(seconds=0.3) <= row["run_at"] <= after + timedelta(seconds=0.3)  # the second insert's
    await until_due(conn, jm, bar)
    assert await jm.run() == 2  # its dependency, then it: its time has come


# -- dependencies ----------------------------------------------------------------------------------


async def test_a_scheduled_dependent_waits_for_its_dependencies_and_its_time(
    idle_jm: JobMaster, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    jm = idle_jm
    arguments = {"file_path": str(tmp_path / "a"), "number": 1}
    bar = await jm.insert_job("nice_tasks", "bar", 1, arguments, run_at=timedelta(hours=1))
    [foo] = await jm.dependencies(bar)
    foo_row = await times(conn, jm, foo["job_id"])
    assert foo_row["status"] == "waiting" and foo_row["run_at"] is None  # created dependencies run at once
    assert await jm.run() == 1  # foo; bar's time has not come
    row = await times(conn, jm, bar)
    assert row["status"] == "waiting" and row["scheduled"] and row["run_after"] == row["run_at"]
    history = await jm.history(bar)
    assert [(h["status"], h["reason"]) for h in history] == [("blocked", "inserted"), ("waiting", "unblocked")]

    # the other way round: its time comes first, then its dependency completes: it runs at once
    other = {"file_path": str(tmp_path / "b"), "number": 2}
    soon = await jm.insert_job("nice_tasks", "bar", 1, other, run_at=timedelta(seconds=0.2))
    await until_due(conn, jm, soon)
    assert (await times(conn, jm, soon))["status"] == "blocked"
    async with worker(jm):
        await within(jm.events.wait_for(JobFinished, 2), "2 jobs to finish")  # its dependency, then it
    assert (await times(conn, jm, soon))["status"] == "complete"

    # and a dependent whose dependency is satisfied at insert (fresh now) waits for its time alone
    assert await jm.run() == 0
    await jm.insert_job(T, "base", 1, {"n": 6})
    assert await jm.run() == 1
    fresh = await jm.insert_job(T, "doubled", 1, {"n": 3}, run_at=timedelta(seconds=1))
    row = await times(conn, jm, fresh)
    assert row["status"] == "waiting" and row["scheduled"]
    async with worker(jm):
        await within(jm.events.wait_for(JobFinished, 3), "3 jobs to finish")  # counted since the JobMaster was made
    assert_started_on_time(await times(conn, jm, fresh))


async def test_all_children_inherit_run_at(jm: JobMaster, conn: asyncpg.Connection) -> None:
    parent = await jm.insert_job(T, "paint", 1, {"item": "car", "colour": "ALL"}, run_at=timedelta(hours=1))
    parent_row = await times(conn, jm, parent)
    children = [await times(conn, jm, d["job_id"]) for d in await jm.dependencies(parent)]
    assert len(children) == 2
    for child in children:
        assert child["status"] == "waiting" and child["scheduled"] and child["run_at"] == parent_row["run_at"]
    assert await jm.run() == 0
    # an earlier "ALL" again moves the parent and its children
    assert await jm.insert_job(T, "paint", 1, {"item": "car", "colour": "ALL"}) == parent
    assert await jm.run() == 2
    assert (await jm.get_job(parent)).status == "complete"  # type: ignore[union-attr]


# -- retry, cancel, retries ------------------------------------------------------------------------


async def test_retry_runs_a_scheduled_job_now(jm: JobMaster, conn: asyncpg.Connection) -> None:
    job_id = await jm.insert_job(T, "add", 1, {"a": 1}, run_at=timedelta(hours=1))
    assert await jm.cancel(job_id) is True
    row = await times(conn, jm, job_id)
    assert row["status"] == "cancelled" and not row["scheduled"]
    assert await jm.retry(job_id) == job_id
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "waiting" and job.run_at is None
    assert await jm.run() == 1


async def test_a_retry_with_backoff_is_scheduled_and_runs_when_due(dsn: str, schema_name: str) -> None:
    async with deployed(dsn, schema_name, poll_interval=POLL, retry_backoff=0.3) as jm:
        job_id = await jm.insert_job(T, "flaky", 1, {"key": "k"})  # retries=2
        async with worker(jm):
            await within(jm.events.wait_for(JobFinished, 3), "3 jobs to finish")
        history = await jm.history(job_id)
        assert [h["reason"] for h in history] == [
            "inserted", "claimed", "retried", "claimed", "retried", "claimed", "failed"
        ]  # fmt: skip
        # each retry started after its backoff
        for retried, claimed in ((history[2], history[3]), (history[4], history[5])):
            assert claimed["at"] - retried["at"] >= timedelta(seconds=0.3)


# -- the claim does not see future jobs ----------------------------------------------------------


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first."""
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += plan_nodes(child)
    return nodes


async def claim_plan(conn: asyncpg.Connection, jm: JobMaster, task_ids: list[int]) -> list[dict[str, Any]]:
    """The plan of the plain claim as it ran (EXPLAIN ANALYZE, rolled back), with the claimer's
    session settings."""
    tr = conn.transaction()
    await tr.start()
    try:
        for statement in jm.sql.claim_session_settings.split("; "):
            await conn.execute(statement.replace("SET ", "SET LOCAL ", 1))
        raw = await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + jm.sql["claim_jobs_fast"], uuid.uuid4(), task_ids, 10, 10_000
        )
    finally:
        await tr.rollback()
    [top] = json.loads(raw) if isinstance(raw, str) else raw
    return plan_nodes(top["Plan"])


def scans_of_jobs(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in nodes if n.get("Relation Name") == "jobs"]


async def test_a_claim_does_not_visit_100k_future_jobs(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """The claim indexes hold claimable jobs only: with 100,000 jobs scheduled an hour ahead, the
    plain claim reads the claim index rows it returns and nothing else (no row read and thrown
    away, the same few index pages as without them), and finds the earliest scheduled job as the
    first entry of jobs_scheduled_idx."""
    s = q(jm)
    task_ids = [await conn.fetchval(f"SELECT task_id FROM {s}.tasks WHERE task_key = 'add'")]
    await jm.insert_jobs(T, "add", 1, [{"a": i} for i in range(5)])
    await conn.execute(f"ANALYZE {s}.jobs")
    without = await claim_plan(conn, jm, task_ids)
    await jm.insert_jobs(T, "add", 1, [{"a": i} for i in range(100, 100_100)], run_at=timedelta(hours=1))
    await conn.execute(f"ANALYZE {s}.jobs")
    with_future = await claim_plan(conn, jm, task_ids)

    def claim_scans(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [n for n in scans_of_jobs(nodes) if n.get("Index Name") in ("jobs_claim_idx", "jobs_task_claim_idx")]

    for nodes in (without, with_future):
        scans = claim_scans(nodes)
        assert scans
        for scan in scans:
            assert scan.get("Rows Removed by Filter", 0) == 0  # no future job read and thrown away
            assert scan["Actual Rows"] * scan["Actual Loops"] <= 5
    pages = [
        sum(n["Shared Hit Blocks"] + n["Shared Read Blocks"] for n in claim_scans(p)) for p in (without, with_future)
    ]
    assert pages[1] <= pages[0] + 2, pages
    assert all(n["Node Type"] != "Seq Scan" for n in scans_of_jobs(with_future))
    [earliest] = [n for n in scans_of_jobs(with_future) if n.get("Index Name") == "jobs_scheduled_idx"]
    assert earliest["Actual Rows"] == 1 and earliest.get("Rows Removed by Filter", 0) == 0
    # the predicate that leaves them out
    predicate = await conn.fetchval(
        "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index AS i WHERE i.indexrelid = $1::regclass",
        f"{s}.jobs_claim_idx",
    )
    assert "NOT scheduled" in predicate
    claimed = await conn.fetchrow(jm.sql["claim_jobs_fast"], uuid.uuid4(), task_ids, 10, 10_000)
    assert len(claimed["job_ids"]) == 5  # and it says when the next one falls due
    assert 3500 < claimed["due_in"] <= 3600


async def test_the_limited_claim_does_not_visit_future_jobs(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """claim_jobs() (process_limit tasks) reads the per-task claim index, which holds no
    scheduled job, after promoting the due ones (an index probe when none is)."""
    s = q(jm)
    await jm.insert_jobs(T, "limited", 1, [{"n": i} for i in range(2000)], run_at=timedelta(hours=1))
    await jm.insert_jobs(T, "limited", 1, [{"n": -1}, {"n": -2}])
    await conn.execute(f"ANALYZE {s}.jobs")
    limited = await conn.fetchval(f"SELECT task_id FROM {s}.tasks WHERE task_key = 'limited'")
    async with inner_plans(conn) as plans:
        claimed = await conn.fetch(f"SELECT job_id FROM {s}.claim_jobs($1, $2, 10, 10000)", uuid.uuid4(), [limited])
    assert len(claimed) == 2
    [candidates] = [p for p in plans if "LockRows" in p and "process_units" in p]
    assert "jobs_task_claim_idx" in candidates and "Seq Scan on jobs" not in candidates
    [due] = [p for p in plans if "jobs_scheduled_idx" in p and "LockRows" in p]
    assert "Seq Scan on jobs" not in due
