"""deploy(): idempotent, concurrent, reset, versioned, validating."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import asyncpg
import pytest

from jobmaster_async import Dependency, JobMaster, SchemaVersionError, TaskDefinitionError, task
from jobmaster_async.db.sql import Catalogue, quote_identifier
from jobmaster_async.tasks import registry
from tests.conftest import drop_schema

#: the type key of the tasks a test defines (removed afterwards by the ``forget`` fixture)
SCRATCH = "scratch_deploy"


async def test_deploy_twice_keeps_jobs_and_reset_drops_them(jm: JobMaster) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
    await jm.deploy()
    job = await jm.get_job(job_id)
    assert job is not None and job.status == "waiting"
    await jm.deploy(_reset=True)
    assert await jm.get_job(job_id) is None
    assert await jm.jobs() == []
    await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})  # usable again at once
    assert await jm.run() == 1


async def test_concurrent_deploys(dsn: str, schema_name: str) -> None:
    masters = [JobMaster(dsn, schema=schema_name) for _ in range(5)]
    try:
        await asyncio.gather(*(m.deploy() for m in masters))
        versions = await (await masters[0]._store.pool()).fetch(
            f"SELECT version FROM {quote_identifier(schema_name)}.schema_version"
        )
        migrations = Catalogue(schema_name).migrations
        assert sorted(v["version"] for v in versions) == [m.version for m in migrations]
    finally:
        for m in masters:
            await m.close()
        await drop_schema(dsn, schema_name)


async def test_refuses_a_newer_schema(jm: JobMaster) -> None:
    pool = await jm._store.pool()
    await pool.execute(f"INSERT INTO {quote_identifier(jm.schema)}.schema_version VALUES (9999, 'future')")
    with pytest.raises(SchemaVersionError, match="9999"):
        await jm.deploy()


async def test_upgrade_from_version_1_drops_the_replaced_functions(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """A schema deployed at version 1 had _insert_job with two more (defaulted) parameters; left in
    place, every insert_job call would be ambiguous."""
    schema = quote_identifier(jm.schema)
    await conn.execute(f"""
        DELETE FROM {schema}.schema_version WHERE version > 1;
        DROP TYPE {schema}.plan_step CASCADE;
        CREATE FUNCTION {schema}._insert_job(text, text, int, jsonb, int DEFAULT 0, boolean DEFAULT false)
        RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid';
    """)
    await jm.deploy()
    job_id = await conn.fetchval(
        f"SELECT {schema}.add_job('nice_tasks', 'bar', 1, $1::json)", '{"file_path": "f", "number": 1}'
    )
    assert (await jm.get_job(job_id)).status == "blocked"  # type: ignore[union-attr]


async def test_deploy_upserts_and_never_deletes_other_services_tasks(
    jm: JobMaster, conn: asyncpg.Connection, forget: object
) -> None:
    schema = quote_identifier(jm.schema)
    await conn.execute(
        f"INSERT INTO {schema}.tasks (type_key, task_key, parameters) VALUES ('elsewhere', 'thing', '[]')"
    )

    @task(type_key="scratch_deploy", retries=1)
    def changing(a: int) -> None: ...

    await jm.deploy()
    assert await conn.fetchval(f"SELECT retries FROM {schema}.tasks WHERE task_key = 'changing'") == 1
    registry.remove("scratch_deploy", "changing")

    @task(type_key="scratch_deploy", task_key="changing", retries=4)
    def changing2(a: int) -> None: ...

    await jm.deploy()
    assert await conn.fetchval(f"SELECT retries FROM {schema}.tasks WHERE task_key = 'changing'") == 4
    assert await conn.fetchval(f"SELECT count(*) FROM {schema}.tasks WHERE type_key = 'elsewhere'") == 1
    done = await conn.fetchval(f"SELECT {schema}.add_job('elsewhere', 'thing', 1, '{{}}')")
    await conn.execute(f"UPDATE {schema}.jobs SET status = 'complete' WHERE job_id = $1", done)
    await jm.deploy(prune=True)
    assert await conn.fetchval(f"SELECT count(*) FROM {schema}.tasks WHERE type_key = 'elsewhere'") == 0
    assert await conn.fetchval(f"SELECT count(*) FROM {schema}.jobs WHERE job_id = $1", done) == 0


async def test_deploy_refuses_unknown_dependency_and_cycles(jm: JobMaster, forget: object) -> None:
    @task(type_key="scratch_deploy", dependencies=Dependency("nowhere.nothing"))
    def orphan() -> None: ...

    with pytest.raises(TaskDefinitionError, match=r"scratch_deploy.orphan.*nowhere.nothing"):
        await jm.deploy()
    registry.remove("scratch_deploy", "orphan")

    @task(type_key="scratch_deploy", dependencies=Dependency("scratch_deploy.ping"))
    def pong() -> None: ...

    @task(type_key="scratch_deploy", dependencies=Dependency("scratch_deploy.pong"))
    def ping() -> None: ...

    with pytest.raises(TaskDefinitionError, match="cycle"):
        await jm.deploy()
    registry.remove("scratch_deploy", "ping")
    registry.remove("scratch_deploy", "pong")

    @task(type_key="scratch_deploy", dependencies=Dependency("tasks_for_tests.add", zz=1))
    def wrong_arg() -> None: ...

    with pytest.raises(TaskDefinitionError, match="'zz'"):
        await jm.deploy()


async def test_deploy_warns_about_unknowable_required_arguments(
    dsn: str, schema_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The seed's baz can never create the bar it needs (bar's number is unknown): that is the
    example's point, but the library does not know the examples from a user's task, so each
    deploy warns (tests/test_cli_ux.py: the same from check_definitions)."""
    master = JobMaster(dsn, schema=schema_name)
    try:
        with caplog.at_level(logging.INFO, logger="jobmaster_async"):
            await master.deploy()
            await master.deploy()
        said = [r for r in caplog.records if "nice_tasks.baz" in r.getMessage() and "'number'" in r.getMessage()]
        assert [r.levelno for r in said] == [logging.WARNING, logging.WARNING]
    finally:
        await master.close()
        await drop_schema(dsn, schema_name)


async def test_engines_and_dsn_forms(dsn: str, schema_name: str) -> None:
    import sqlalchemy
    from sqlalchemy.ext.asyncio import create_async_engine

    from tests.test_execute import pg8000_url

    url = sqlalchemy.engine.make_url(dsn)
    sync_engine = sqlalchemy.create_engine(pg8000_url(dsn))
    async_engine = create_async_engine(url.set(drivername="postgresql+asyncpg"))
    try:
        for target in (sync_engine, async_engine, dsn):
            master = JobMaster(target, schema=schema_name)
            try:
                await master.deploy()
                await master.insert_job("tasks_for_tests", "add", 1, {"a": 1})
            finally:
                await master.close()
        with sync_engine.connect() as c:  # the sync engine itself works: the URL we reused is real
            assert (
                c.execute(sqlalchemy.text(f"SELECT count(*) FROM {quote_identifier(schema_name)}.jobs")).scalar() == 1
            )
    finally:
        sync_engine.dispose()
        await async_engine.dispose()
        await drop_schema(dsn, schema_name)


def test_a_plain_dsn_does_not_import_sqlalchemy() -> None:
    """Worker processes given a plain DSN stay lean (SQLAlchemy is ~12 MB of RSS)."""
    script = (
        "import sys; from jobmaster_async import JobMaster; "
        "JobMaster('postgresql://user:secret@db.example:5432/app', schema='s'); "
        "JobMaster('postgresql://postgres:@/postgres?host=/run/pg', schema='s'); "
        "assert 'sqlalchemy' not in sys.modules, 'imported'; "
        "JobMaster('postgresql+asyncpg://user@db.example/app?application_name=x', schema='s'); "
        "JobMaster('postgresql://u@h1,h2:5433/app?target_session_attrs=read-write&connect_timeout=3', schema='s'); "
        "assert 'sqlalchemy' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


async def test_upgrade_from_version_5_indexes_running_jobs_by_task(jm: JobMaster, conn: asyncpg.Connection) -> None:
    schema = quote_identifier(jm.schema)
    await conn.execute(f"""
        DELETE FROM {schema}.schema_version WHERE version > 5;
        DROP INDEX {schema}.jobs_running_idx;
        CREATE INDEX jobs_running_idx ON {schema}.jobs (worker_id, task_id) WHERE status = 'running';
    """)
    await jm.deploy()
    definition = await conn.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = 'jobs_running_idx'", jm.schema
    )
    assert "(task_id) WHERE (status = 'running'::text)" in definition
    assert await conn.fetchval(f"SELECT max(version) FROM {schema}.schema_version") == jm.sql.latest_version


# -- the tasks' rows: one dataclass, columns by name; a registry of one's own -------------------


def test_upsert_task_writes_every_column_field_of_the_definition() -> None:
    """A @task option is a TaskDefinition field marked as a column: the SQL writes the fields by
    name, so its column lists must be exactly those fields (a forgotten one would be dropped)."""
    import re

    from jobmaster_async.definitions.task import column_names

    statement = Catalogue("jobmaster")["upsert_task"]
    lists = re.findall(r"\(\s*(type_key, task_key,[^()]*)\)", statement)
    assert len(lists) == 2, statement  # the INSERT's and the ON CONFLICT's
    for listed in lists:
        assert [name.strip() for name in listed.split(",")] == list(column_names())
    excluded = re.search(r"ROW\(([^()]*)\)", statement)
    assert excluded is not None
    assert [name.strip() for name in excluded.group(1).split(",")] == [f"excluded.{n}" for n in column_names()]


async def test_deploy_writes_each_option_into_its_column(dsn: str, schema_name: str, forget: object) -> None:
    """Every stored option of a definition round-trips through the JSON row into its column."""
    from datetime import timedelta
    from typing import Literal

    from jobmaster_async import Registry

    tasks = Registry()

    @tasks.task(
        type_key="scratch_deploy",
        process_units=2,
        process_limit=3,
        write_all="mode",
        retries=4,
        rescues=5,
        timeout=1.5,
        executor="process",
        retention=timedelta(days=2, seconds=3, microseconds=4),
    )
    def every_option(mode: Literal["a", "b"], n: int = 1) -> None:
        """Uses every option.

        :param n: a number"""

    @tasks.task(type_key="scratch_deploy", dependencies=Dependency(every_option, 2, mode="a", n=1))
    async def inherits() -> None: ...

    master = JobMaster(dsn, schema=schema_name, registry=tasks, retention=timedelta(hours=5))
    try:
        await master.deploy()
        pool = await master._store.pool()
        rows = {
            r["task_key"]: r
            for r in await pool.fetch(f"SELECT t.* FROM {quote_identifier(schema_name)}.tasks AS t ORDER BY task_key")
        }
        assert set(rows) == {"every_option", "inherits"}  # only its registry's, not the process's
        row = rows["every_option"]
        assert (row["process_units"], row["process_limit"], row["retries"], row["rescues"]) == (2, 3, 4, 5)
        assert (row["timeout"], row["executor"], row["write_all"]) == (1.5, "process", ["mode"])
        assert row["retention"] == timedelta(days=2, seconds=3, microseconds=4)
        assert row["description"] == "Uses every option."
        assert row["parameters"] == [
            {"name": "mode", "type": "string", "required": True, "nullable": False, "options": ["a", "b"]},
            {"name": "n", "type": "integer", "required": False, "nullable": False, "default": 1, "help": "a number"},
        ]
        assert rows["inherits"]["executor"] == "async" and rows["inherits"]["retention"] == timedelta(hours=5)
        assert rows["inherits"]["dependencies"] == [
            {
                "type_key": "scratch_deploy",
                "task_key": "every_option",
                "hours": 2.0,
                "arguments": {"mode": {"value": "a"}, "n": {"value": 1}},
            }
        ]
        assert rows["every_option"]["is_dependency"] and not rows["inherits"]["is_dependency"]
    finally:
        await master.close()
        await drop_schema(dsn, schema_name)


async def test_a_registry_of_ones_own_deploys_and_runs_only_its_tasks(dsn: str, schema_name: str) -> None:
    """JobMaster(registry=...): deploy stores its tasks only; the worker claims only them."""
    from jobmaster_async import Registry
    from tests import tasks_for_tests

    everything = JobMaster(dsn, schema=schema_name)  # the global registry: every imported task
    own = JobMaster(dsn, schema=schema_name, registry=Registry(tasks_for_tests.add))
    try:
        await own.deploy()
        pool = await own._store.pool()
        keys = await pool.fetch(f"SELECT type_key, task_key FROM {quote_identifier(schema_name)}.tasks")
        assert [tuple(k) for k in keys] == [("tasks_for_tests", "add")]
        await everything.deploy()
        await own.insert_job("tasks_for_tests", "explode", 0, {"reason": "not mine"})
        added = await own.insert_job("tasks_for_tests", "add", 0, {"a": 1})
        assert await own.run() == 1
        done = await own.get_job(added)
        assert done is not None and done.status == "complete"
        assert [job.task_key for job in await own.jobs(status="waiting")] == ["explode"]
    finally:
        await own.close()
        await everything.close()
        await drop_schema(dsn, schema_name)
