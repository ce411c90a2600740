"""Job data as untrusted input: arguments bounded at insert (SQL and Python), outcomes PostgreSQL
cannot store failing their job alone, rows Python cannot read failing their job alone, and
BaseException from a task failing its job while the worker goes on."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.errors import ConfigurationError, InvalidArguments
from jobmaster_async.events import JobFinished
from tests.conftest import q, worker
from tests.polling import within


async def add_job(conn: asyncpg.Connection, jm: JobMaster, task_key: str, arguments_json: str) -> uuid.UUID:
    job_id: uuid.UUID = await conn.fetchval(
        f"SELECT {q(jm)}.add_job('tasks_for_tests', $1, 0, $2::json)", task_key, arguments_json
    )
    return job_id


def nested(depth: int) -> str:
    """A JSON value nested ``depth`` arrays deep."""
    return "[" * depth + "]" * depth


# -- arguments, at insert ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ('{"anything": 1e5000}', "more than 4300 digits"),
        ('{"anything": -1e4300}', "more than 4300 digits"),
        (f'{{"anything": {nested(100)}}}', "nested deeper than 100"),
        ('{"anything": "a\\u0000b"}', "cannot be stored"),
        ('{"anything": "\\ud800"}', "cannot be stored"),
        ('{"anything": 1e1000000}', "cannot be stored"),
    ],
)
async def test_sql_refuses_arguments_no_client_could_read(
    jm: JobMaster, conn: asyncpg.Connection, arguments: str, says: str
) -> None:
    with pytest.raises(asyncpg.PostgresError) as refused:
        await add_job(conn, jm, "every_kind", arguments.replace("{", '{"n": 1, ', 1))
    assert refused.value.sqlstate == "JM400"
    assert "tasks_for_tests.every_kind" in refused.value.message and says in refused.value.message
    assert await jm.counts() == {}


async def test_sql_takes_arguments_at_the_bounds(jm: JobMaster, conn: asyncpg.Connection) -> None:
    deepest = f'{{"n": 1, "anything": {nested(99)}}}'  # 100 levels with the arguments object
    longest = '{"n": 1, "anything": ' + "9" * 4300 + "}"
    ids = [await add_job(conn, jm, "every_kind", deepest), await add_job(conn, jm, "every_kind", longest)]
    jobs = [await jm.get_job(i) for i in ids]
    assert jobs[0] is not None and json.dumps(jobs[0].arguments["anything"]) == json.dumps(json.loads(nested(99)))
    assert jobs[1] is not None and jobs[1].arguments["anything"] == int("9" * 4300)


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (
            lambda jm: jm.insert_job("tasks_for_tests", "echo", 0, {"value": {"x": float("nan")}}),
            "arguments.value.x is nan",
        ),
        (
            lambda jm: jm.insert_job("tasks_for_tests", "echo", 0, {"value": {"x": "a\x00b"}}),
            "arguments.value.x holds a NUL",
        ),
        (lambda jm: jm.insert_job("tasks_for_tests", "echo", 0, {"value": {"k": ["\udc00"]}}), "arguments.value.k[0]"),
        (lambda jm: jm.insert_job("tasks_for_tests", "echo", 0, {"value": {"n": 10**5000}}), "more than 4300 digits"),
        (
            lambda jm: jm.insert_job("tasks_for_tests", "echo", 0, _deep_dict(10_000)),
            "nested",  # Python says "too deeply", or SQL "deeper than 100" (under a raised recursion limit)
        ),
        (lambda jm: jm.insert_job("tasks_for_tests", "echo", 0, {"value": {1j: 1}}), "key of type complex"),
        (lambda jm: jm.insert_job("tasks_for_tests", "echo", 2**31, {"value": {}}), "priority must be an int"),
        (lambda jm: jm.insert_job("tasks_for_tests", "echo", 1.5, {"value": {}}), "got 1.5"),
        (lambda jm: jm.insert_job("tasks_for_tests", "echo", True, {"value": {}}), "got True"),
        (lambda jm: jm.insert_job("tasks_for_tests", "echo", {"value": {}}), "priority must be an int"),
        (lambda jm: jm.insert_job("tasks_for_tests", "ec\x00ho", 0, {"value": {}}), "without NUL"),
        (lambda jm: jm.insert_job("tasks_for_tests", "echo", 0, [1, 2]), "must be a mapping"),
        (
            lambda jm: jm.insert_jobs("tasks_for_tests", "echo", 0, [{"value": {}}, {"value": float("inf")}]),
            "element 1",
        ),
        (lambda jm: jm.insert_jobs("tasks_for_tests", "echo", 0, {"value": {}}), "list of argument mappings"),
        (lambda jm: jm.insert_job("tasks_for_tests", "echo", 0, {"value": json.loads(nested(150))}), "nested deeper"),
    ],
)
async def test_python_refuses_bad_input_with_the_librarys_error(jm: JobMaster, call: object, says: str) -> None:
    with pytest.raises(InvalidArguments) as refused:
        await call(jm)  # type: ignore[operator]
    assert says in str(refused.value)
    assert await jm.counts() == {}


def _deep_dict(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"v": value}
    return {"value": value}


async def test_a_created_dependencys_priority_saturates(jm: JobMaster) -> None:
    top = 2**31 - 1
    job_id = await jm.insert_job("nice_tasks", "bar", top, {"file_path": "/p", "number": 1})
    [dependency] = await jm.dependencies(job_id)
    created = await jm.get_job(dependency["job_id"])
    assert created is not None and created.priority == top


@pytest.mark.parametrize("schema", ["x" * 64, "é" * 32, ""])
def test_schema_names_postgresql_would_cut_are_refused(dsn: str, schema: str) -> None:
    with pytest.raises(ConfigurationError, match="schema name"):
        JobMaster(dsn, schema=schema)


@pytest.mark.parametrize("schema", ['we$$ird "schema" {channel}', "x{schema}y $jm$", "a" * 63, "é" * 31 + "x"])
async def test_any_schema_name_of_at_most_63_bytes_works(dsn: str, schema: str, conn: asyncpg.Connection) -> None:
    schema = f"{uuid.uuid4().hex[:6]} {schema}"[:63] if len(schema.encode()) < 56 else schema
    master = JobMaster(dsn, schema=schema, retry_backoff=0.0)
    try:
        await master.deploy()
        job_id = await conn.fetchval(
            f"SELECT {quote_identifier(schema)}.add_job('tasks_for_tests', 'add', 0, '{{\"a\": 2}}')"
        )
        assert await master.run() == 1
        job = await master.get_job(job_id)
        assert job is not None and job.result == 3
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 1
    finally:
        await master.close()
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(schema)} CASCADE")


# -- outcomes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task_key", ["returns", "returns_in_thread"])
async def test_unstorable_results_fail_their_job_alone_and_for_good(jm: JobMaster, task_key: str) -> None:
    kinds = {"nan": "$.points[1] is nan", "inf": "$ is inf", "nul": "$.text holds a NUL", "surrogate": "$[0]",
             "object": "$.when is a object", "huge": "more than 4300 digits"}  # fmt: skip
    bad = {kind: await jm.insert_job("tasks_for_tests", task_key, 0, {"kind": kind}) for kind in kinds}
    good = await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": i} for i in range(10)])
    async with worker(jm, concurrency=16):
        await within(jm.events.wait_for(JobFinished, len(bad) + len(good)), "the jobs to finish")
    for kind, job_id in bad.items():
        job = await jm.get_job(job_id)
        assert job is not None and job.status == "failed" and job.attempts == 1
        assert job.error_type == "UnstorableResult" and kinds[kind] in (job.message or ""), job.message
    assert [(await jm.get_job(i)).status for i in good] == ["complete"] * 10  # type: ignore[union-attr]


async def test_dirty_messages_are_stored_sanitized_and_retried(jm: JobMaster) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "raises_dirty", 0, {"text": "x"})
    assert await jm.run() == 3  # retries=2: three attempts, each recorded
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "failed" and job.attempts == 3
    assert job.message == "bad\\x00x\\ud800" and "\\x00" in (job.traceback or "")


async def test_pop_job_counts_an_unstorable_result_and_moves_on(jm: JobMaster) -> None:
    nan = await jm.insert_job("tasks_for_tests", "returns", 5, {"kind": "nan"})
    fine = await jm.insert_job("tasks_for_tests", "returns", 0, {"kind": "fine"})
    assert await jm.run() == 2
    first, second = await jm.get_job(nan), await jm.get_job(fine)
    assert first is not None and first.status == "failed" and first.attempts == 1
    assert second is not None and second.status == "complete" and second.result == {"ok": [1, "two", 3.5]}


async def test_a_value_postgresql_refuses_anyway_fails_only_its_job(jm: JobMaster) -> None:
    """A result the checks let through but PostgreSQL refuses (here: a number beyond numeric's
    range): the statement is split, the other jobs of the batch are recorded."""
    from jobmaster_async.worker.executors import Outcome
    from jobmaster_async.worker.outcomes import record_outcomes

    await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": i} for i in range(5)])
    claims = await jm._worker.claim(5, 100)
    outcomes = [(c, Outcome(ok=True, result=1, result_json="1")) for c in claims]
    outcomes[2] = (claims[2], Outcome(ok=True, result=None, result_json="1e1000000"))
    assert await record_outcomes(jm._store, jm.worker_id, outcomes, 0.0) == {c.job_id for c in claims}
    statuses = [(await jm.get_job(c.job_id)).status for c in claims]  # type: ignore[union-attr]
    assert statuses == ["complete", "complete", "failed", "complete", "complete"]
    refused = await jm.get_job(claims[2].job_id)
    assert refused is not None and refused.error_type == "UnstorableOutcome"


# -- rows Python cannot read -------------------------------------------------------------------


async def test_arguments_python_cannot_read_fail_their_job_alone(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """Written past the library (or before its bounds): the claim and the worker survive them."""
    good = await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": i} for i in range(7)])
    poison = await jm.insert_job("tasks_for_tests", "add", 9, {"a": 1000})
    await conn.execute(f"UPDATE {q(jm)}.jobs SET arguments = jsonb_build_object('a', 1e5000) WHERE job_id = $1", poison)
    listed = {job.job_id: job for job in await jm.jobs()}
    assert "undecodable JSON" in repr(listed[poison].arguments)
    async with worker(jm, concurrency=8):
        await within(jm.events.wait_for(JobFinished, 8), "8 jobs to finish")
    job = await jm.get_job(poison)
    assert job is not None and job.status == "failed" and job.error_type == "UnreadableArguments"
    assert "4300" in (job.message or "")
    assert [(await jm.get_job(i)).status for i in good] == ["complete"] * 7  # type: ignore[union-attr]


# -- BaseException from a task -----------------------------------------------------------------


@pytest.mark.parametrize("task_key", ["raises_base", "raises_base_in_thread"])
async def test_base_exceptions_from_a_task_fail_its_job_and_the_worker_goes_on(jm: JobMaster, task_key: str) -> None:
    kinds = ["SystemExit", "KeyboardInterrupt", "CancelledError", "GeneratorExit"]
    ids = {kind: await jm.insert_job("tasks_for_tests", task_key, 1, {"kind": kind}) for kind in kinds}
    after = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 1})
    async with worker(jm, concurrency=1) as running:  # one slot: a wedged job would stop everything
        await within(jm.events.wait_for(JobFinished, len(kinds) + 1), "the jobs to finish")
        assert not running.done()
    for kind, job_id in ids.items():
        job = await jm.get_job(job_id)
        assert job is not None and job.status == "failed" and job.error_type == kind, (kind, job)
    done = await jm.get_job(after)
    assert done is not None and done.status == "complete"


async def test_base_exceptions_through_pop_job(jm: JobMaster) -> None:
    await jm.insert_job("tasks_for_tests", "raises_base", 1, {"kind": "SystemExit"})
    await jm.insert_job("tasks_for_tests", "raises_base_in_thread", 1, {"kind": "KeyboardInterrupt"})
    assert await jm.run() == 2
    assert await jm.counts() == {"failed": 2}
