"""The SQL interface, used as another client would: CALL insert_job, add_job, refusals, dedupe,
"ALL" fan-out, NOTIFY, the view, the history, roles and quoting."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import channel_name, quote_identifier
from tests.conftest import drop_schema, orders_table, q


async def count_jobs(conn: asyncpg.Connection, jm: JobMaster) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {q(jm)}.jobs"))


async def test_call_insert_job_hands_back_the_id(jm: JobMaster, conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        f"CALL {q(jm)}.insert_job('my_tasks', 'task1', 10, "
        """'{"file_path": "/tmp/sum.txt", "a": 1, "b": 2}'::json)"""
    )
    assert row is not None
    job = await jm.get_job(row["job_id"])
    assert job is not None
    assert (job.type_key, job.task_key, job.priority, job.status) == ("my_tasks", "task1", 10, "waiting")
    assert job.arguments == {"file_path": "/tmp/sum.txt", "a": 1, "b": 2}


async def test_add_job_from_a_trigger_in_another_schema(jm: JobMaster, conn: asyncpg.Connection) -> None:
    async with orders_table(conn, jm.schema, "add", "json_build_object('a', NEW.id)") as orders:
        await conn.execute(f"INSERT INTO {orders} VALUES (41, '')")
        jobs = await jm.jobs(task_key="add")
        assert [j.arguments for j in jobs] == [{"a": 41, "b": 1}]
        assert await jm.run() == 1
        done = await jm.get_job(jobs[0].job_id)
        assert done is not None and done.result == 42


@pytest.mark.parametrize(
    ("type_key", "task_key", "arguments", "kind", "words"),
    [
        ("nope", "task1", '{"a": 1}', "unknown_task", ["nope.task1"]),
        ("my_tasks", "task1", '{"a": 1, "b": 2}', "missing_argument", ["my_tasks.task1", '"file_path"']),
        ("my_tasks", "task1", '{"file_path": "f", "a": 1, "b": 2, "c": 3}', "unknown_argument", ['"c"']),
        ("my_tasks", "task1", '{"file_path": "f", "a": "one", "b": 2}', "invalid_argument", ['"a"', "integer"]),
        ("my_tasks", "task1", '{"file_path": "f", "a": 1.5, "b": 2}', "invalid_argument", ['"a"', "integer"]),
        ("my_tasks", "task1", '{"file_path": 3, "a": 1, "b": 2}', "invalid_argument", ['"file_path"', "string"]),
        ("my_tasks", "task1", '{"file_path": null, "a": 1, "b": 2}', "invalid_argument", ['"file_path"', "null"]),
        (
            "nice_tasks",
            "bar",
            '{"file_path": "f", "number": 1, "letter": "D"}',
            "invalid_argument",
            ['"letter"', "one of"],
        ),
        ("my_tasks", "task1", "[1, 2]", "invalid_arguments", ["my_tasks.task1", "object"]),
        ("my_tasks", "task1", '"text"', "invalid_arguments", ["object"]),
    ],
)
async def test_bad_input_is_refused_and_nothing_inserted(
    jm: JobMaster, conn: asyncpg.Connection, type_key: str, task_key: str, arguments: str, kind: str, words: list[str]
) -> None:
    for statement in (
        f"CALL {q(jm)}.insert_job($1, $2, 1, $3::json)",
        f"SELECT {q(jm)}.add_job($1, $2, 1, $3::json)",
    ):
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.execute(statement, type_key, task_key, arguments)
        assert info.value.sqlstate == "JM400"
        assert info.value.detail == kind
        for word in words:
            assert word in info.value.message
    assert await count_jobs(conn, jm) == 0


async def test_python_insert_refusals_are_typed(jm: JobMaster) -> None:
    from jobmaster_async import InvalidArguments, TaskNotFound

    with pytest.raises(TaskNotFound, match=r"nope\.task1"):
        await jm.insert_job("nope", "task1", 1, {})
    with pytest.raises(InvalidArguments, match='"b"'):
        await jm.insert_job("my_tasks", "task1", 1, {"file_path": "x", "a": 1})
    with pytest.raises(InvalidArguments, match="not JSON"):
        await jm.insert_job("my_tasks", "task1", 1, {"file_path": object()})
    assert await jm.jobs() == []


async def test_identical_active_job_is_not_inserted_twice(jm: JobMaster, conn: asyncpg.Connection) -> None:
    first = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
    # the same job spelled differently: the default written out, 1.0 for 1
    again = await conn.fetchval(f"""SELECT {q(jm)}.add_job('tasks_for_tests', 'add', 5, '{{"b": 1, "a": 1.0}}')""")
    assert again == first
    other = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 2})
    assert other != first
    assert await count_jobs(conn, jm) == 2
    # once it has finished, the same arguments make a new job
    await jm.run()
    assert await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1}) != first


async def test_dedupe_is_race_free(jm: JobMaster, dsn: str) -> None:
    connections = [await asyncpg.connect(dsn) for _ in range(8)]
    try:
        big = {"a": 7, "b": 10**30 // 10**29}  # large enough arguments still dedupe by hash
        ids = await asyncio.gather(
            *(
                c.fetchval(f"SELECT {q(jm)}.add_job('tasks_for_tests', 'add', 1, $1::json)", json.dumps(big))
                for c in connections
            )
        )
    finally:
        for c in connections:
            await c.close()
    assert len(set(ids)) == 1
    assert len(await jm.jobs()) == 1


async def test_large_arguments_dedupe(jm: JobMaster) -> None:
    value = {"blob": "x" * 200_000}
    first = await jm.insert_job("tasks_for_tests", "echo", 1, {"value": value})
    assert await jm.insert_job("tasks_for_tests", "echo", 1, {"value": value}) == first


async def test_insert_jobs_bulk(jm: JobMaster) -> None:
    arguments = [{"a": i} for i in range(2000)] + [{"a": 5}]
    ids = await jm.insert_jobs("tasks_for_tests", "add", 3, arguments)
    assert len(ids) == 2001 and len(set(ids)) == 2000
    assert ids[-1] == ids[5]  # a duplicate inside the batch gets the same id
    with pytest.raises(Exception, match='"a"'):
        await jm.insert_jobs("tasks_for_tests", "add", 3, [{"a": 1000000}, {"a": "x"}])
    assert len(await jm.jobs(limit=5000)) == 2000  # the refused batch wrote nothing


GOOD_ARGUMENTS = [
    {"n": 1},
    {"n": 2.0},
    {"n": -0},
    {"n": 3, "x": 2},
    {"n": 4, "mode": 3},
    {"n": 5, "mode": 3.0},
    {"n": 6, "maybe": None},
    {"n": 7, "anything": [1, {"k": 2}]},
    {"n": 8, "anything": None, "obj": {"a": [1]}, "s": 'quote " and \\ and é'},
    {"n": 1e2},
]
BAD_ARGUMENTS = [
    {},
    {"n": 1.5},
    {"n": "1"},
    {"n": None},
    {"n": [1]},
    {"n": 1, "unknown": 1},
    {"n": 1, "mode": "c"},
    {"n": 1, "mode": ["a"]},
    {"n": 1, "flag": "true"},
    {"n": 1, "s": None},
    {"n": 1, "obj": [1]},
    [1, 2],
    "text",
]


@pytest.mark.parametrize("arguments", GOOD_ARGUMENTS + BAD_ARGUMENTS)
async def test_bulk_and_single_inserts_agree(jm: JobMaster, conn: asyncpg.Connection, arguments: object) -> None:
    """insert_jobs checks a batch with a jsonpath built from the parameters, insert_job/add_job
    argument by argument: they accept and refuse the same arguments, with the same messages, and
    store the same canonical form (the same active job, so the same id)."""
    text = json.dumps(arguments)
    outcomes = []
    for query in (
        f"SELECT ({q(jm)}.insert_jobs('tasks_for_tests', 'every_kind', 1, ARRAY[$1::jsonb]))[1]",
        f"SELECT {q(jm)}.add_job('tasks_for_tests', 'every_kind', 1, $1::json)",
    ):
        try:
            outcomes.append(await conn.fetchval(query, text))
        except asyncpg.PostgresError as exc:
            assert exc.sqlstate == "JM400"
            outcomes.append(str(exc))
    bulk, single = outcomes
    assert bulk == single
    assert isinstance(bulk, uuid.UUID) == (arguments in GOOD_ARGUMENTS)


async def test_all_fans_out_to_one_child_per_combination(jm: JobMaster, conn: asyncpg.Connection) -> None:
    parent = await conn.fetchval(
        f"SELECT {q(jm)}.add_job('tasks_for_tests', 'paint', 1, $1::json)",
        json.dumps({"item": "box", "colour": "ALL", "size": "ALL"}),
    )
    children = await jm.dependencies(parent)
    assert len(children) == 6
    args = sorted((j.arguments["colour"], j.arguments["size"]) for j in await jm.jobs(status="waiting"))
    assert args == [("green", 1), ("green", 2), ("green", 3), ("red", 1), ("red", 2), ("red", 3)]
    job = await jm.get_job(parent)
    assert job is not None and job.status == "blocked" and job.is_parent
    # the same "ALL" insert again hands back the same parent
    again = await jm.insert_job("tasks_for_tests", "paint", 1, {"item": "box", "colour": "ALL", "size": "ALL"})
    assert again == parent
    assert await jm.run() == 6  # the parent itself is never claimed
    job = await jm.get_job(parent)
    assert job is not None and job.status == "complete"


async def test_all_parent_fails_when_a_child_fails(jm: JobMaster) -> None:
    parent = await jm.insert_job("tasks_for_tests", "paint", 1, {"item": "x", "colour": "ALL"})
    children = await jm.dependencies(parent)
    assert len(children) == 2
    await jm.cancel(children[0]["job_id"])
    job = await jm.get_job(parent)
    assert job is not None and job.status == "failed"
    assert job.message is not None and str(children[0]["job_id"]) in job.message


async def test_notify_once_per_insert_statement(jm: JobMaster, dsn: str, conn: asyncpg.Connection) -> None:
    listener = await asyncpg.connect(dsn)
    received: list[str] = []
    got = asyncio.Event()

    def on_notify(_c: object, _pid: int, _channel: str, payload: str) -> None:
        received.append(payload)
        got.set()

    await listener.add_listener(channel_name(jm.schema), on_notify)
    try:
        await conn.execute(
            f"INSERT INTO {q(jm)}.jobs (task_id, arguments, args_hash, status) "
            f"SELECT t.task_id, jsonb_build_object('a', i), md5(i::text)::uuid, 'waiting' "
            f"FROM {q(jm)}.tasks t, generate_series(1, 50) i WHERE t.task_key = 'add'"
        )
        await asyncio.wait_for(got.wait(), 10)
        # a round trip on the listener delivers anything still queued before we count
        await listener.execute("SELECT 1")
        assert received == ["wake"]
        got.clear()
        await jm.insert_jobs("tasks_for_tests", "add", 1, [{"a": 100 + i} for i in range(20)])
        await asyncio.wait_for(got.wait(), 10)
        await listener.execute("SELECT 1")
        assert received == ["wake", "wake"]
        # insert_job's plain statement notifies and writes history itself (the trigger skips it)
        got.clear()
        job_id = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1000})
        await asyncio.wait_for(got.wait(), 10)
        await listener.execute("SELECT 1")
        assert received == ["wake", "wake", "wake"]
        [event] = await jm.history(job_id)
        assert event["status"] == "waiting" and event["pid"] and event["node"]
        # an identical job: no new job, no NOTIFY, no history row
        assert await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1000, "b": 1}) == job_id
        await listener.execute("SELECT 1")
        assert received == ["wake", "wake", "wake"] and len(await jm.history(job_id)) == 1
    finally:
        await listener.close()


async def test_view_and_history(jm: JobMaster, conn: asyncpg.Connection) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "explode", 1, {"reason": "boom"})
    await jm.run()
    row = await conn.fetchrow(f"SELECT * FROM {q(jm)}.job_list WHERE job_id = $1", job_id)
    assert row is not None
    assert (row["type_key"], row["task_key"], row["status"]) == ("tasks_for_tests", "explode", "failed")
    history = await jm.history(job_id)
    assert [h["status"] for h in history] == ["waiting", "running", "failed"]
    assert history[1]["worker_id"] == jm.worker_id and history[1]["pid"] and history[1]["node"]
    assert "exploded: boom" in history[2]["message"]


async def test_two_schemas_are_independent(jm: JobMaster, dsn: str, schema_name: str) -> None:
    other = JobMaster(dsn, schema=schema_name + "_b")
    await other.deploy()
    try:
        await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
        assert await other.pop_job() is None
        await other.insert_job("tasks_for_tests", "add", 1, {"a": 1})
        assert len(await other.jobs()) == 1 and len(await jm.jobs()) == 1
        assert channel_name(jm.schema) != channel_name(other.schema)
        assert await other.run() == 1
        assert [j.status for j in await jm.jobs()] == ["waiting"]
    finally:
        await other.close()
        await drop_schema(dsn, other.schema)


async def test_schema_name_needing_quotes_and_injection(dsn: str, conn: asyncpg.Connection) -> None:
    for schema in ("Job Mistress", 'x"; DROP TABLE pg_class; --'):
        master = JobMaster(dsn, schema=schema, retry_backoff=0.0)
        try:
            await master.deploy()
            job_id = await master.insert_job("tasks_for_tests", "add", 1, {"a": 1})
            row = await conn.fetchrow(
                f"CALL {quote_identifier(schema)}.insert_job('tasks_for_tests', 'add', 1, "
                """'{"a": 2}'::json)"""
            )
            assert row is not None
            assert await master.run() == 2
            job = await master.get_job(job_id)
            assert job is not None and job.result == 2
        finally:
            await master.close()
            await drop_schema(dsn, schema)
    assert await conn.fetchval("SELECT count(*) FROM pg_class") > 0


async def test_injection_attempt_as_argument_is_just_data(jm: JobMaster, conn: asyncpg.Connection) -> None:
    evil = "'); DROP TABLE jobs; --"
    job_id = await conn.fetchval(
        f"SELECT {q(jm)}.add_job('my_tasks', 'task1', 1, $1::json)",
        json.dumps({"file_path": evil, "a": 1, "b": 2}),
    )
    job = await jm.get_job(job_id)
    assert job is not None and job.arguments["file_path"] == evil
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.execute(f"SELECT {q(jm)}.add_job($1, 'x', 1, '{{}}')", evil)
    assert info.value.sqlstate == "JM400"
    assert await count_jobs(conn, jm) == 1


async def test_role_with_only_the_documented_grants(jm: JobMaster, conn: asyncpg.Connection, dsn: str) -> None:
    role = f"webapp_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {role} LOGIN")
    await conn.execute(f"GRANT USAGE ON SCHEMA {q(jm)} TO {role}")
    await conn.execute(
        f"GRANT EXECUTE ON PROCEDURE {q(jm)}.insert_job(text, text, int, json, uuid, timestamptz) TO {role}; "
        f"GRANT EXECUTE ON FUNCTION {q(jm)}.add_job(text, text, int, json, timestamptz) TO {role}"
    )
    web = await asyncpg.connect(dsn, user=role)
    try:
        row = await web.fetchrow(f"""CALL {q(jm)}.insert_job('tasks_for_tests', 'add', 1, '{{"a": 1}}'::json)""")
        assert row is not None and row["job_id"]
        assert await web.fetchval(f"""SELECT {q(jm)}.add_job('tasks_for_tests', 'add', 1, '{{"a": 2}}')""")
        for forbidden in (
            f"SELECT * FROM {q(jm)}.jobs",
            f"UPDATE {q(jm)}.jobs SET status = 'complete'",
            f"SELECT * FROM {q(jm)}.claim_jobs(gen_random_uuid(), '{{1}}', 1, 1)",
            f"SELECT {q(jm)}.cancel_job(gen_random_uuid())",
            f"SELECT {q(jm)}._insert_job('tasks_for_tests', 'add', 1, '{{\"a\": 3}}')",
            f"SELECT * FROM {q(jm)}.job_list",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await web.execute(forbidden)
    finally:
        await web.close()
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert len(await jm.jobs()) == 2


async def test_job_ids_are_time_ordered_uuids(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """Version 7 layout: the first 48 bits are the insert's Unix milliseconds (index locality)."""
    before = await conn.fetchval("SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint")
    first = await jm.insert_job("my_tasks", "task1", 1, {"file_path": "/tmp/a", "a": 1, "b": 2})
    bulk = await jm.insert_jobs("my_tasks", "task1", 1, [{"file_path": "/tmp/b", "a": i, "b": 2} for i in range(3)])
    arguments = '{"file_path": "/tmp/c", "a": 9, "b": 2}'
    called = await conn.fetchval(f"SELECT {q(jm)}.add_job('my_tasks', 'task1', 1, $1::json)", arguments)
    after = await conn.fetchval("SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint")
    ids = [first, *bulk, called]
    assert len(set(ids)) == 5
    for job_id in ids:
        assert (job_id.version, job_id.variant) == (7, uuid.RFC_4122)
        assert before <= job_id.int >> 80 <= after
    assert [i.int >> 80 for i in ids] == sorted(i.int >> 80 for i in ids)


@pytest.mark.parametrize(
    "arguments",
    [
        '{"file_path": "/tmp/f", "number": 1, "letter": "Z"}',  # the README's example
        '{"file_path": "/tmp/f"}',
        '{"file_path": "/tmp/f", "number": 1, "colour": 2}',
        '{"file_path": "a\\u0000b", "number": 1}',
        '{"file_path": "f", "number": 1e99999999}',
        "[1]",
    ],
)
async def test_a_refusal_shows_at_most_two_context_lines(
    jm: JobMaster, conn: asyncpg.Connection, arguments: str
) -> None:
    """What psql prints under the ERROR and DETAIL: the call, not the library's internals."""
    schema = quote_identifier(jm.schema)
    for call in (
        f"CALL {schema}.insert_job('nice_tasks', 'bar', 1, $1::json)",
        f"SELECT {schema}.add_job('nice_tasks', 'bar', 1, $1::json)",
    ):
        with pytest.raises(asyncpg.PostgresError) as refused:
            await conn.execute(call, arguments)
        assert refused.value.sqlstate == "JM400"
        assert len((refused.value.context or "").splitlines()) <= 2, refused.value.context
    with pytest.raises(asyncpg.PostgresError) as unknown:
        await conn.execute(f"SELECT {schema}.add_job('nice_tasks', 'nope', 1, '{{}}')")
    assert unknown.value.sqlstate == "JM400" and len((unknown.value.context or "").splitlines()) <= 2
