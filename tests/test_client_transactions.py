"""Client transactions that link new jobs to existing dependencies (DESIGN §8 "Linking races"
and "Roles"): a worker never waits on a client's open transaction, whatever that
transaction linked; the links are checked when it commits (a dependency that finished meanwhile
settles the dependent then); a rollback leaves nothing behind; and the insert-only web role of
the README can neither switch history and NOTIFY off nor touch anything else.

Each test of a worker's progress would hang (and fail at its deadline) if linking locked the
dependency's row (FOR SHARE) until the client's commit."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobmaster_async import JobMaster, PoppedJob
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.events import JobFinished
from tests.conftest import q, worker
from tests.polling import within
from tests.tasks_for_tests import GATES, Gate

README = (Path(__file__).parent.parent / "README.md").read_text()

#: how long any event of these tests may take before the test fails (generous: a 2-core CI box)
DEADLINE = 60


@contextmanager
def gate(key: str) -> Iterator[Gate]:
    """A Gate for ``tasks_for_tests.gated(key)``: its job runs until the test opens it (opened on
    the way out too, so a failing test does not leave the job running)."""
    GATES[key] = opened = Gate()
    try:
        yield opened
    finally:
        opened.opened.set()
        del GATES[key]


async def is_set(event: asyncio.Event) -> None:
    await event.wait()


@asynccontextmanager
async def client_transaction(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """``BEGIN`` on a client's connection, as a web app would; rolled back on the way out unless the
    test ended it (a failing test must not leave the server waiting on it)."""
    await conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")


@asynccontextmanager
async def executions() -> AsyncIterator[Callable[[PoppedJob], Awaitable[None]]]:
    """``await execute(job)`` runs a popped job and waits for its outcome to be recorded, failing
    after DEADLINE without cancelling it: its recording may wait on a row lock of the client's
    transaction (nested inside this), and so would the release of a cancelled execution. The
    executions are awaited on the way out, once that transaction has ended."""
    started: list[asyncio.Task[None]] = []

    async def execute(job: PoppedJob) -> None:
        started.append(execution := asyncio.create_task(job.execute()))
        done, _ = await asyncio.wait({execution}, timeout=DEADLINE)
        if not done:
            raise AssertionError(f"timed out waiting for the outcome of {job.task_key} to be recorded")
        execution.result()

    try:
        yield execute
    finally:
        await asyncio.gather(*started, return_exceptions=True)


@asynccontextmanager
async def wakes(dsn: str, jm: JobMaster) -> AsyncIterator[asyncio.Event]:
    """An Event set by each NOTIFY on the schema's channel (the workers' wake-up)."""
    listener = await asyncpg.connect(dsn)
    woken = asyncio.Event()

    def on_notify(_conn: object, _pid: int, _channel: str, _payload: str) -> None:
        woken.set()

    await listener.add_listener(jm.sql.channel, on_notify)
    try:
        yield woken
    finally:
        await listener.close()


async def add_job(client: asyncpg.Connection, jm: JobMaster, task_key: str, priority: int, **arguments: Any) -> Any:
    """``SELECT <schema>.add_job(...)`` on the client's connection."""
    query = f"SELECT {q(jm)}.add_job('tasks_for_tests', $1, $2, $3::json)"
    return await client.fetchval(query, task_key, priority, json.dumps(arguments))


async def links(conn: asyncpg.Connection, jm: JobMaster, job_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await conn.fetch(f"SELECT depends_on FROM {q(jm)}.job_dependencies WHERE job_id = $1", job_id)
    return [row["depends_on"] for row in rows]


async def history(conn: asyncpg.Connection, jm: JobMaster, job_id: uuid.UUID) -> list[asyncpg.Record]:
    """The job's history as the client's connection sees it (its own uncommitted rows too)."""
    query = f"SELECT status, at FROM {q(jm)}.job_events WHERE job_id = $1 ORDER BY event_id"
    return list(await conn.fetch(query, job_id))


async def statuses(jm: JobMaster, job_id: uuid.UUID) -> list[str]:
    return [event["status"] for event in await jm.history(job_id)]


async def get(jm: JobMaster, job_id: uuid.UUID) -> Any:
    job = await jm.get_job(job_id)
    assert job is not None, job_id
    return job


async def event_at(jm: JobMaster, job_id: uuid.UUID, status: str) -> Any:
    [at] = [event["at"] for event in await jm.history(job_id) if event["status"] == status]
    return at


async def test_a_worker_runs_on_while_a_client_holds_a_link_to_its_running_job(
    jm: JobMaster, conn: asyncpg.Connection
) -> None:
    """The issue's scenario: a web app links a job to a running dependency inside a transaction it
    keeps open. Meanwhile the worker completes 1,000 unrelated jobs and the dependency itself;
    when the client commits, the dependent runs."""
    async with worker(jm, concurrency=8):
        with gate("held") as held:
            dependency_id = await jm.insert_job("tasks_for_tests", "gated", 0, {"key": "held"})
            await within(is_set(held.entered), "the dependency to start", DEADLINE)
            async with client_transaction(conn):
                dependent_id = await add_job(conn, jm, "after_gate", 5, key="held")
                assert await links(conn, jm, dependent_id) == [dependency_id]  # linked, not created anew
                assert [e["status"] for e in await history(conn, jm, dependent_id)] == ["blocked"]

                unrelated = await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": i} for i in range(1000)])
                held.opened.set()  # the dependency finishes while the link is open, amid the others
                await within(jm.events.wait_for(JobFinished, 1001), "1,000 jobs and the dependency to finish", DEADLINE)

                assert conn.is_in_transaction()
                pool = await jm._store.pool()
                done = await pool.fetchval(
                    f"SELECT count(*) FROM {q(jm)}.jobs WHERE job_id = ANY ($1::uuid[]) AND status = 'complete'",
                    unrelated,
                )
                assert done == 1000
                assert (await get(jm, dependency_id)).status == "complete"
                assert await jm.get_job(dependent_id) is None  # not committed yet
                await conn.execute("COMMIT")

            await within(jm.events.wait_for(JobFinished, 1002), "the dependent to run", DEADLINE)
    dependent, dependency = await get(jm, dependent_id), await get(jm, dependency_id)
    assert dependent.status == "complete" and dependent.result == 0
    assert dependent.started_at >= dependency.finished_at
    assert await statuses(jm, dependent_id) == ["blocked", "waiting", "running", "complete"]


async def test_a_waiting_dependency_linked_by_an_open_transaction_is_claimed_and_run(
    jm: JobMaster, conn: asyncpg.Connection
) -> None:
    dependency_id = await jm.insert_job("tasks_for_tests", "gated", 0, {"key": "waiting"})
    async with client_transaction(conn):
        dependent_id = await add_job(conn, jm, "after_gate", 5, key="waiting")
        assert await links(conn, jm, dependent_id) == [dependency_id]
        # linking touched nothing: the priority is raised at commit (if still waiting then)
        assert (await get(jm, dependency_id)).priority == 0
        async with worker(jm, concurrency=2):
            await within(jm.events.wait_for(JobFinished, 1), "the linked dependency to be claimed and run", DEADLINE)
            assert conn.is_in_transaction()
            dependency = await get(jm, dependency_id)
            assert dependency.status == "complete" and dependency.priority == 0
            assert await statuses(jm, dependency_id) == ["waiting", "running", "complete"]
            await conn.execute("COMMIT")
            await within(jm.events.wait_for(JobFinished, 2), "the dependent to run", DEADLINE)
    dependent = await get(jm, dependent_id)
    assert dependent.status == "complete" and dependent.started_at >= dependency.finished_at


async def test_a_dependency_that_finished_during_the_transaction_settles_the_dependent_at_commit(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection
) -> None:
    """No worker runs the dependent here until the test says so: the commit itself moves it to
    waiting, writes that to its history after the dependency's completion, and wakes workers."""
    dependency_id = await jm.insert_job("tasks_for_tests", "gated", 0, {"key": "finished"})
    job = await jm.pop_job()
    assert job is not None and job.job_id == dependency_id
    async with executions() as execute, client_transaction(conn):
        dependent_id = await add_job(conn, jm, "after_gate", 5, key="finished")
        assert await links(conn, jm, dependent_id) == [dependency_id]
        await execute(job)
        assert (await get(jm, dependency_id)).status == "complete"
        async with wakes(dsn, jm) as woken:
            await conn.execute("COMMIT")
            # the commit settled the dependent
            assert (await get(jm, dependent_id)).status == "waiting"
            assert await statuses(jm, dependent_id) == ["blocked", "waiting"]
            assert await event_at(jm, dependent_id, "waiting") >= await event_at(jm, dependency_id, "complete")
            assert (await get(jm, dependency_id)).priority == 0  # finished: nothing to raise
            await within(is_set(woken), "the commit to wake the workers", DEADLINE)

    assert await jm.run() == 1
    dependent, dependency = await get(jm, dependent_id), await get(jm, dependency_id)
    assert dependent.status == "complete" and dependent.started_at >= dependency.finished_at
    assert await statuses(jm, dependent_id) == ["blocked", "waiting", "running", "complete"]


async def test_a_rollback_leaves_no_dependent_and_the_dependency_as_it_was(
    jm: JobMaster, conn: asyncpg.Connection
) -> None:
    dependency_id = await jm.insert_job("tasks_for_tests", "gated", 0, {"key": "rolled back"})
    async with client_transaction(conn):
        dependent_id = await add_job(conn, jm, "after_gate", 50, key="rolled back")
        assert await links(conn, jm, dependent_id) == [dependency_id]
        async with worker(jm, concurrency=2):
            await within(jm.events.wait_for(JobFinished, 1), "the linked dependency to run", DEADLINE)
            await conn.execute("ROLLBACK")
        assert jm.events.count(JobFinished) == 1

    assert await jm.get_job(dependent_id) is None
    assert await jm.jobs(task_key="after_gate") == []
    assert await conn.fetchval(f"SELECT count(*) FROM {q(jm)}.job_dependencies") == 0
    assert await conn.fetchval(f"SELECT count(*) FROM {q(jm)}.job_events WHERE job_id = $1", dependent_id) == 0
    dependency = await get(jm, dependency_id)
    assert (dependency.status, dependency.priority, dependency.result) == ("complete", 0, "rolled back")
    assert await statuses(jm, dependency_id) == ["waiting", "running", "complete"]

    # a link rolled back before its dependency ran: the dependency is untouched, and runs
    waiting_id = await jm.insert_job("tasks_for_tests", "gated", 0, {"key": "untouched"})
    async with client_transaction(conn):
        await add_job(conn, jm, "after_gate", 50, key="untouched")
    waiting = await get(jm, waiting_id)
    assert (waiting.status, waiting.priority) == ("waiting", 0)
    assert await jm.run() == 1
    assert await jm.jobs(task_key="after_gate") == []


# -- the insert-only web role ------------------------------------------------------------------


def documented_grants(schema: str, role: str) -> str:
    """The README's grants for a web app, verbatim, for this schema and role."""
    lines = re.findall(r"^\s*(GRANT \w+ ON .* TO webapp;)$", README, re.MULTILINE)
    assert len(lines) == 3 and all("jobmaster" in line for line in lines), lines
    return "\n".join(re.sub(r"\bjobmaster\b", quote_identifier(schema), line).replace("webapp", role) for line in lines)


@asynccontextmanager
async def web_role(jm: JobMaster, dsn: str, conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A connection acting as a new role that has exactly the README's grants (dropped after)."""
    role = f"webapp_{uuid.uuid4().hex[:12]}"
    await conn.execute(f"CREATE ROLE {role}")
    try:
        await conn.execute(documented_grants(jm.schema, role))
        web = await asyncpg.connect(dsn)
        try:
            await web.execute(f"SET ROLE {role}")
            assert await web.fetchval("SELECT current_user") == role
            yield web
        finally:
            await web.close()
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.mark.parametrize("setting", ["on", "off", "ON", "true", "1", ""])
async def test_the_web_role_cannot_switch_history_or_notify_off(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection, setting: str
) -> None:
    """jobmaster.history_written once told the library's triggers that a statement wrote its history
    itself (the transitions now mark their rows instead: functions/triggers.sql). Whatever a client
    sets it to, add_job and CALL insert_job write the history of the job and of the dependency
    they create, and notify the workers."""
    async with web_role(jm, dsn, conn) as web, wakes(dsn, jm) as woken:
        await web.execute(f"SET jobmaster.history_written = '{setting}'")
        inserts = {
            "add_job": f"SELECT {q(jm)}.add_job('tasks_for_tests', 'after_gate', 1, $1::json)",
            "CALL insert_job": f"CALL {q(jm)}.insert_job('tasks_for_tests', 'after_gate', 1, $1::json)",
            "SET LOCAL, add_job": f"SELECT {q(jm)}.add_job('tasks_for_tests', 'after_gate', 1, $1::json)",
        }
        for n, (how, statement) in enumerate(inserts.items()):
            woken.clear()
            arguments = json.dumps({"key": f"{how} {n}"})
            if how.startswith("SET LOCAL"):
                async with client_transaction(web):
                    await web.execute(f"SET LOCAL jobmaster.history_written = '{setting}'")
                    dependent_id = await web.fetchval(statement, arguments)
                    await web.execute("COMMIT")
            else:
                dependent_id = await web.fetchval(statement, arguments)
            [dependency_id] = await links(conn, jm, dependent_id)
            assert await statuses(jm, dependent_id) == ["blocked"], how
            assert await statuses(jm, dependency_id) == ["waiting"], how
            await within(is_set(woken), f"a NOTIFY after {how}", DEADLINE)
        assert await web.fetchval("SELECT current_setting('jobmaster.history_written')") == setting


@pytest.mark.parametrize("setting", ["on", "off"])
async def test_the_web_role_links_to_a_dependency_that_finished_meanwhile(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection, setting: str
) -> None:
    """The check at commit runs after add_job returned, in the web role's transaction and with
    its settings: it still settles the dependent, writes its history and wakes the workers."""
    dependency_id = await jm.insert_job("tasks_for_tests", "gated", 0, {"key": "web"})
    job = await jm.pop_job()
    assert job is not None and job.job_id == dependency_id
    async with web_role(jm, dsn, conn) as web:
        await web.execute(f"SET jobmaster.history_written = '{setting}'")
        async with executions() as execute, client_transaction(web):
            dependent_id = await add_job(web, jm, "after_gate", 5, key="web")
            await execute(job)
            async with wakes(dsn, jm) as woken:
                await web.execute("COMMIT")
                assert await links(conn, jm, dependent_id) == [dependency_id]
                assert (await get(jm, dependent_id)).status == "waiting"
                assert await statuses(jm, dependent_id) == ["blocked", "waiting"]
                await within(is_set(woken), "the commit to wake the workers", DEADLINE)
    assert await jm.run() == 1
    assert (await get(jm, dependent_id)).status == "complete"


async def test_the_web_role_links_to_a_waiting_dependency_and_raises_its_priority_at_commit(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection
) -> None:
    dependency_id = await jm.insert_job("tasks_for_tests", "gated", 0, {"key": "web waiting"})
    async with web_role(jm, dsn, conn) as web:
        async with client_transaction(web):
            dependent_id = await add_job(web, jm, "after_gate", 5, key="web waiting")
            assert (await get(jm, dependency_id)).priority == 0
            await web.execute("COMMIT")
    assert await links(conn, jm, dependent_id) == [dependency_id]
    assert (await get(jm, dependency_id)).priority == 6
    assert (await get(jm, dependent_id)).status == "blocked"
    assert await jm.run() == 2
    assert (await get(jm, dependent_id)).status == "complete"


async def test_the_web_role_can_do_nothing_else(jm: JobMaster, dsn: str, conn: asyncpg.Connection) -> None:
    """README: "nothing else in the schema is executable by PUBLIC", and no table is granted."""
    job_id = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 1})
    s, some_uuid = q(jm), f"'{uuid.uuid4()}'::uuid"
    forbidden = (
        f"SELECT * FROM {s}.jobs",
        f"UPDATE {s}.jobs SET status = 'complete'",
        f"DELETE FROM {s}.jobs",
        f"SELECT * FROM {s}.job_events",
        f"INSERT INTO {s}.job_events (job_id, status) VALUES ({some_uuid}, 'complete')",
        f"INSERT INTO {s}.job_dependencies (job_id, depends_on) VALUES ({some_uuid}, {some_uuid})",
        f"SELECT * FROM {s}.job_list",
        f"SELECT * FROM {s}.claim_jobs({some_uuid}, '{{1}}', 1, 1)",
        f"SELECT {s}.complete_jobs({some_uuid}, ARRAY['{job_id}'::uuid], '{{1}}', ARRAY['1'::jsonb])",
        f"SELECT {s}.fail_jobs({some_uuid}, ARRAY['{job_id}'::uuid], '{{1}}', '{{x}}', '{{x}}', '{{x}}', '{{0}}')",
        f"SELECT {s}.release_jobs({some_uuid}, ARRAY['{job_id}'::uuid], '{{1}}')",
        f"SELECT {s}.heartbeat({some_uuid}, 'node', 1, 30)",
        f"SELECT {s}.rescue_jobs()",
        f"SELECT {s}.cancel_job('{job_id}')",
        f"SELECT {s}.retry_job('{job_id}')",
        f"SELECT {s}.insert_jobs('tasks_for_tests', 'add', 0, ARRAY['{{\"a\": 2}}'::jsonb])",
        f"SELECT {s}._insert_job('tasks_for_tests', 'add', 0, '{{\"a\": 3}}')",
        f"SELECT {s}._settle(ARRAY['{job_id}'::uuid])",
    )
    async with web_role(jm, dsn, conn) as web:
        for statement in forbidden:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await web.execute(statement)
        # what it may do
        assert await add_job(web, jm, "add", 0, a=4)
    job = await get(jm, job_id)
    assert (job.status, job.attempts) == ("waiting", 0)
    assert len(await jm.jobs()) == 2
