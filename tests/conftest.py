"""Fixtures: one real PostgreSQL per test session; each test gets its own schema."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from click.testing import CliRunner

import jobmaster_async.examples.my_tasks
import jobmaster_async.examples.nice_tasks  # noqa: F401
from jobmaster_async import JobMaster
from jobmaster_async.cli import main
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.tasks import registry
from tests import tasks_for_tests  # noqa: F401
from tests.pg import PgServer, pg_server

if TYPE_CHECKING:
    from jobmaster_async.web import Dashboard

#: The dashboard's secret in the tests (the ``dash`` fixture's)
SECRET = "a secret for the tests"


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    with pg_server() as server:
        yield server


@pytest.fixture(scope="session")
def dsn(pg: PgServer) -> str:
    return pg.dsn


@pytest.fixture
def schema_name() -> str:
    return f"jm_test_{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def deployed(dsn: str, schema: str, **options: Any) -> AsyncIterator[JobMaster]:
    """A JobMaster deployed in ``schema``; closed, and the schema dropped, afterwards."""
    master = JobMaster(dsn, schema=schema, **options)
    await master.deploy()
    try:
        yield master
    finally:
        await master.close()
        await drop_schema(dsn, schema)


@asynccontextmanager
async def worker(master: JobMaster, concurrency: int = 4, **options: float) -> AsyncIterator[asyncio.Task[None]]:
    """run_forever in a task; stopped gracefully on exit."""
    task = asyncio.create_task(master.run_forever(concurrency, **options))  # type: ignore[arg-type]
    try:
        yield task
    finally:
        await master.stop()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def jm(dsn: str, schema_name: str) -> AsyncIterator[JobMaster]:
    """A deployed JobMaster in a fresh schema (retries without backoff), dropped afterwards."""
    async with deployed(dsn, schema_name, retry_backoff=0.0) as master:
        yield master


@pytest.fixture
def retry_backoff() -> float:
    """``idle_jm``'s retry backoff; a test module that needs retries to wait overrides it."""
    return 0.0


@pytest.fixture
async def idle_jm(dsn: str, schema_name: str, retry_backoff: float) -> AsyncIterator[JobMaster]:
    """A JobMaster whose safety poll is an hour: anything it does promptly, NOTIFY (or a timer) woke it for."""
    async with deployed(dsn, schema_name, poll_interval=3600, retry_backoff=retry_backoff) as master:
        yield master


def q(jm: JobMaster) -> str:
    """The JobMaster's schema, quoted for SQL."""
    return quote_identifier(jm.schema)


@pytest.fixture
def forget(request: pytest.FixtureRequest) -> Iterator[None]:
    """Removes the tasks a test registers under its module's ``SCRATCH`` type key: left
    registered, every later deploy in the session would store them (and their schedules)."""
    yield
    type_key = request.module.SCRATCH
    for definition in list(registry):
        if definition.type_key == type_key:
            registry.remove(definition.type_key, definition.task_key)


@pytest.fixture
def cli(dsn: str) -> Iterator[tuple[CliRunner, list[str]]]:
    """Click's test runner and the ``--dsn``/``--schema`` options of a schema deployed with
    tests.tasks_for_tests, reset afterwards."""
    runner = CliRunner()
    base = ["--dsn", dsn, "--schema", f"cli_{uuid.uuid4().hex[:8]}"]
    result = runner.invoke(main, [*base, "deploy", "--app", "tests.tasks_for_tests"])
    assert result.exit_code == 0, result.output
    yield runner, base
    runner.invoke(main, [*base, "deploy", "--reset"], input="y\n")


@pytest.fixture
async def dash(jm: JobMaster) -> AsyncIterator[Dashboard]:
    """The dashboard app of ``jm`` (secret ``SECRET``), closed afterwards."""
    from jobmaster_async.web import create_app  # the web extra: only the tests that use it need it

    app = create_app(jm, secret=SECRET)
    try:
        yield app
    finally:
        await app.aclose()


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection, as another client (psql, a web app) would have."""
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def orders_table(conn: asyncpg.Connection, schema: str, task_key: str, arguments_sql: str) -> AsyncIterator[str]:
    """A table ``orders (id int, path text)`` in another schema whose AFTER INSERT trigger queues a
    job of ``tasks_for_tests.<task_key>`` through ``add_job``, as an application would; yields its
    qualified name. ``arguments_sql`` builds the json from ``NEW``."""
    other = f"shop_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"""
        CREATE SCHEMA {other};
        CREATE TABLE {other}.orders (id int PRIMARY KEY, path text);
        CREATE FUNCTION {other}.order_added() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM {quote_identifier(schema)}.add_job('tasks_for_tests', '{task_key}', 1, {arguments_sql});
            RETURN NEW;
        END $$;
        CREATE TRIGGER order_added AFTER INSERT ON {other}.orders
            FOR EACH ROW EXECUTE FUNCTION {other}.order_added();
    """)
    try:
        yield f"{other}.orders"
    finally:
        await conn.execute(f"DROP SCHEMA {other} CASCADE")


async def drop_schema(dsn: str, schema: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(schema)} CASCADE")
    finally:
        await connection.close()


@asynccontextmanager
async def inner_plans(conn: asyncpg.Connection) -> AsyncIterator[list[str]]:
    """The plans of the statements ``conn`` runs, those inside functions too (auto_explain).
    Skips the test where the server does not allow that."""
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("LOAD 'auto_explain' needs a superuser")
    plans: list[str] = []
    conn.add_log_listener(lambda _conn, message: plans.append(message.message))
    try:
        await conn.execute("LOAD 'auto_explain'")
    except asyncpg.UndefinedFileError:
        pytest.skip("this server has no auto_explain module")
    await conn.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        " SET auto_explain.log_level = notice"
    )
    try:
        yield plans
    finally:
        await conn.execute("SET auto_explain.log_min_duration = -1")
