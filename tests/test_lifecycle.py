"""One lifecycle (lifecycle.py): the retry policy decided once, the transitions writing their own
history with explicit reasons, a client's plain SQL recorded by the triggers (once), and rows
written before migration 0017 meaning what they meant."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.lifecycle import MAX_RETRY_DELAY, JobStatus, Reason, max_attempts, retry_delay
from tests.conftest import drop_schema
from tests.test_schema import migrated_to, new_schema, schemas  # noqa: F401 (a fixture)

T = "tasks_for_tests"


def q(jm: JobMaster) -> str:
    return quote_identifier(jm.schema)


def test_the_retry_policy() -> None:
    """Retried while tries <= retries, unless the failure is final; exponential, capped."""
    assert [retry_delay(2, tries, False, 1.5) for tries in (1, 2, 3)] == [1.5, 3.0, None]
    assert retry_delay(2, 1, True, 1.5) is None
    assert retry_delay(0, 1, False, 1.0) is None
    assert retry_delay(50, 40, False, 1.0) == MAX_RETRY_DELAY
    assert retry_delay(3, 0, False, 2.0) == 2.0  # a row migrated with tries 0 or less: the first delay
    # the public max_attempts: inserted (no start yet), running, after a release
    assert [max_attempts(0, 0, 2), max_attempts(1, 1, 2), max_attempts(1, 0, 2)] == [3, 3, 4]


def test_the_statuses_and_reasons_are_the_sql_s() -> None:
    """Every status the jobs table allows and every reason the history is written with."""
    from jobmaster_async.db.sql import Catalogue

    sql = Catalogue("jm")
    for status in JobStatus:
        assert f"'{status}'" in sql.schema_sql
    functions = sql.functions + "\n".join(sql.queries.values())
    for reason in Reason:
        assert f"'{reason}'" in functions, reason


async def events(jm: JobMaster, job_id: uuid.UUID) -> list[tuple[str, str]]:
    return [(e["status"], e["reason"]) for e in await jm.history(job_id)]


async def test_each_transition_writes_one_history_row_with_its_reason(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """claim, release, fail (retried, then failed), requeue, cancel, as the SQL functions do
    them: one row each, the reason given, jobs.reason the same; tries counted as lifecycle.py
    says (a release gives its start back; a requeue starts afresh)."""
    s = q(jm)
    job_id = await jm.insert_job(T, "flaky", 1, {"key": "transitions"})
    worker = uuid.uuid4()
    [task_id] = [await conn.fetchval(f"SELECT task_id FROM {s}.tasks WHERE task_key = 'flaky'")]

    async def claim() -> int:
        row = await conn.fetchrow(f"SELECT attempts, tries FROM {s}.claim_jobs($1, $2, 1, 100)", worker, [task_id])
        assert row is not None
        return int(row["attempts"])

    async def state() -> tuple[str, str | None, int, int]:
        row = await conn.fetchrow(f"SELECT status, reason, attempts, tries FROM {s}.jobs WHERE job_id = $1", job_id)
        return row["status"], row["reason"], row["attempts"], row["tries"]

    async def fail(attempt: int, delay: float | None) -> None:
        await conn.fetchval(
            f"SELECT {s}.fail_jobs($1, $2, $3, '{{E}}', '{{m}}', '{{t}}', $4)", worker, [job_id], [attempt], [delay]
        )

    assert await state() == ("waiting", "inserted", 0, 0)
    attempt = await claim()
    assert await state() == ("running", "claimed", 1, 1)
    assert await conn.fetchval(f"SELECT {s}.release_jobs($1, $2, $3)", worker, [job_id], [attempt]) == 1
    assert await state() == ("waiting", "released", 1, 0)
    assert (await jm.get_job(job_id)).max_attempts == 4  # type: ignore[union-attr]
    await fail(await claim(), 0.0)
    assert await state() == ("waiting", "retried", 2, 1)
    await fail(await claim(), None)
    assert await state() == ("failed", "failed", 3, 2)
    assert await jm.retry(job_id) == job_id
    assert await state() == ("waiting", "requeued", 3, 0)
    assert await jm.cancel(job_id) is True
    assert await state() == ("cancelled", "cancelled", 3, 0)
    assert await events(jm, job_id) == [
        ("waiting", "inserted"),
        ("running", "claimed"),
        ("waiting", "released"),
        ("running", "claimed"),
        ("waiting", "retried"),
        ("running", "claimed"),
        ("failed", "failed"),
        ("waiting", "requeued"),
        ("cancelled", "cancelled"),
    ]


async def test_plain_sql_is_recorded_once_by_the_triggers(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """A client's plain UPDATE of a status (it leaves jobs.reason as it was) gets its history row
    and wakes the workers; the row's reason is then NULL, so that the next transition, even one
    giving the reason the row had, writes its own row and the trigger no other. A plain INSERT
    (reason NULL) is recorded too."""
    s = q(jm)
    job_id = await jm.insert_job(T, "add", 1, {"a": 1, "b": 2})
    job = await jm.pop_job()
    assert job is not None and job.job_id == job_id
    wakes: list[str] = []
    await conn.add_listener(jm.sql.channel, lambda *args: wakes.append(args[3]))
    try:
        await conn.execute(f"UPDATE {s}.jobs SET status = 'waiting', worker_id = NULL WHERE job_id = $1", job_id)
        assert await conn.fetchval(f"SELECT reason FROM {s}.jobs WHERE job_id = $1", job_id) is None
        again = await jm.pop_job()  # claimed again: the claim's row only
        assert again is not None and again.job_id == job_id
        await again.execute()
        assert await events(jm, job_id) == [
            ("waiting", "inserted"),
            ("running", "claimed"),
            ("waiting", "retried"),
            ("running", "claimed"),
            ("complete", "completed"),
        ]
        row = await conn.fetchrow(
            f"INSERT INTO {s}.jobs (task_id, arguments, args_hash, status) "
            f"SELECT task_id, '{{\"a\": 5, \"b\": 6}}', md5('x')::uuid, 'waiting' FROM {s}.tasks "
            "WHERE task_key = 'add' RETURNING job_id"
        )
        assert await events(jm, row["job_id"]) == [("waiting", "inserted")]
        # a NOTIFY is delivered between statements: one more round trip reads it
        await conn.fetchval("SELECT 1")
        assert wakes.count("wake") >= 2  # the plain update's and the plain insert's
    finally:
        await conn.reset()


async def test_rows_written_before_migration_17_mean_the_same(
    dsn: str,
    conn: asyncpg.Connection,
    schemas: list[str],  # noqa: F811
) -> None:
    """Jobs written with max_attempts (a release or rescue raised it by one) keep their public
    max_attempts and their retry decision (attempts < max_attempts before: tries <= retries now)."""
    sql = await migrated_to(conn, new_schema(schemas), 16)
    s = sql.quoted_schema
    task_id = await conn.fetchval(
        f"INSERT INTO {s}.tasks (type_key, task_key, parameters, retries) VALUES ('old', 'flaky', '[]', 2) "
        "RETURNING task_id"
    )
    # (status, attempts, max_attempts): inserted; running its last try; released once, running;
    # released twice, waiting; failed for good; retries lowered since the job was inserted
    old = [
        ("waiting", 0, 3),
        ("running", 3, 3),
        ("running", 2, 4),
        ("waiting", 2, 5),
        ("failed", 3, 3),
        ("waiting", 1, 6),
    ]
    ids = []
    for n, (status, attempts, most) in enumerate(old):
        ids.append(
            await conn.fetchval(
                f"INSERT INTO {s}.jobs (task_id, arguments, args_hash, status, attempts, max_attempts) "
                "VALUES ($1, $2::text::jsonb, md5($2)::uuid, $3, $4, $5) RETURNING job_id",
                task_id,
                json.dumps({"n": n}),
                status,
                attempts,
                most,
            )
        )
    upgraded = JobMaster(dsn, schema=sql.schema)
    try:
        await upgraded.deploy()
        for job_id, (_, attempts, most) in zip(ids, old, strict=True):
            job = await upgraded.get_job(job_id)
            assert job is not None and (job.attempts, job.max_attempts) == (attempts, most)
            tries = await conn.fetchval(f"SELECT tries FROM {s}.jobs WHERE job_id = $1", job_id)
            # a running job's failure: retried before iff attempts < max_attempts
            running_retried = (attempts < most) if job.status == "running" else None
            if running_retried is not None:
                assert (retry_delay(2, tries, False, 1.0) is not None) == running_retried
            # a waiting job's next try: retried before iff attempts + 1 < max_attempts
            if job.status == "waiting":
                assert (retry_delay(2, tries + 1, False, 1.0) is not None) == (attempts + 1 < most)
    finally:
        await upgraded.close()
        await drop_schema(dsn, sql.schema)


@pytest.mark.parametrize("setting", ["on", "off"])
async def test_no_setting_silences_the_claim_s_history(jm: JobMaster, conn: asyncpg.Connection, setting: str) -> None:
    """The setting that once told the triggers a statement wrote its own history means nothing
    now: a client setting it still gets the history of its plain SQL."""
    s = q(jm)
    job_id = await jm.insert_job(T, "add", 1, {"a": 3, "b": 4})
    async with conn.transaction():
        await conn.execute(f"SET LOCAL jobmaster.history_written = '{setting}'")
        await conn.execute(f"UPDATE {s}.jobs SET status = 'cancelled' WHERE job_id = $1", job_id)
    assert await events(jm, job_id) == [("waiting", "inserted"), ("cancelled", "cancelled")]


async def test_a_plain_insert_cannot_skip_its_history(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """An insert is told by its history row, not by jobs.reason: a plain INSERT that writes the
    reason a transition would (as a role allowed to insert jobs could) still gets its row, once,
    and wakes the workers."""
    s = q(jm)
    wakes: list[str] = []
    await conn.add_listener(jm.sql.channel, lambda *args: wakes.append(args[3]))
    try:
        job_id = await conn.fetchval(
            f"INSERT INTO {s}.jobs (task_id, arguments, args_hash, status, reason) "
            f"SELECT task_id, '{{\"a\": 7, \"b\": 8}}', md5('y')::uuid, 'waiting', 'inserted' FROM {s}.tasks "
            "WHERE task_key = 'add' RETURNING job_id"
        )
        assert await events(jm, job_id) == [("waiting", "inserted")]
        await conn.fetchval("SELECT 1")  # a NOTIFY is delivered between statements
        assert "wake" in wakes
    finally:
        await conn.reset()
    fast = await jm.insert_job(T, "add", 1, {"a": 9, "b": 9})  # the plain insert writes its own row
    assert await events(jm, fast) == [("waiting", "inserted")]


async def test_a_plain_insert_that_writes_a_transitions_reason_is_still_recorded_once(
    jm: JobMaster, conn: asyncpg.Connection
) -> None:
    """A plain INSERT that writes the reason the next transition will give ('claimed') has it
    cleared by the trigger: the claim then changes the column, writes its own row, and the trigger
    none (the claim was not taken for plain SQL and recorded twice)."""
    s = q(jm)
    job_id = await conn.fetchval(
        f"INSERT INTO {s}.jobs (task_id, arguments, args_hash, status, reason) "
        f"SELECT task_id, '{{\"a\": 3, \"b\": 4}}', md5('z')::uuid, 'waiting', 'claimed' FROM {s}.tasks "
        "WHERE task_key = 'add' RETURNING job_id"
    )
    assert await conn.fetchval(f"SELECT reason FROM {s}.jobs WHERE job_id = $1", job_id) is None
    job = await jm.pop_job()
    assert job is not None and job.job_id == job_id
    await job.execute()
    assert await events(jm, job_id) == [("waiting", "inserted"), ("running", "claimed"), ("complete", "completed")]
