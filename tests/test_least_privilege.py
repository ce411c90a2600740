"""The README's least-privilege setup: a schema owner that is no superuser deploys, runs the
workers (real processes) and manages jobs; an insert-only role inserts. The superuser hides
privilege bugs (PostgreSQL 15+ refuses CREATE FUNCTION ... SET of a custom setting to a role
without a privilege on that parameter)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from tests.conftest import drop_schema
from tests.polling import until
from tests.processes import ROOT, worker_process


def as_role(dsn: str, role: str) -> str:
    return make_url(dsn).set(username=role, password=None).render_as_string(hide_password=False)


@pytest.fixture
async def owner(dsn: str, conn: asyncpg.Connection) -> AsyncIterator[str]:
    """A login role that may create schemas in the database and nothing more; dropped after."""
    role = f"owner_{uuid.uuid4().hex[:8]}"
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    await conn.execute(f"GRANT CREATE ON DATABASE {quote_identifier(database)} TO {role}")
    try:
        yield role
    finally:
        await conn.execute(f"REVOKE CREATE ON DATABASE {quote_identifier(database)} FROM {role}")
        await conn.execute(f"DROP OWNED BY {role} CASCADE; DROP ROLE {role}")


async def test_a_schema_owner_that_is_no_superuser_deploys_works_and_manages(
    dsn: str, conn: asyncpg.Connection, owner: str, schema_name: str
) -> None:
    owner_dsn = as_role(dsn, owner)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "jobmaster_async", "--dsn", owner_dsn, "--schema", schema_name, "deploy"]
    deploy = await asyncio.to_thread(
        subprocess.run,
        [*command, "--app", "tests.tasks_for_tests"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deploy.returncode == 0, deploy.stderr
    owned_by = await conn.fetchval("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", schema_name)
    assert owned_by == owner

    jm = JobMaster(owner_dsn, schema=schema_name, retry_backoff=0.0)
    web = f"web_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {web} LOGIN")
    try:
        await jm.deploy()  # again, as the owner, from Python
        # the README's grants for the insert-only role, given by the owner
        s = quote_identifier(schema_name)
        owner_conn = await asyncpg.connect(owner_dsn)
        try:
            await owner_conn.execute(f"""
                GRANT USAGE ON SCHEMA {s} TO {web};
                GRANT EXECUTE ON PROCEDURE {s}.insert_job(text, text, int, json, uuid, timestamptz) TO {web};
                GRANT EXECUTE ON FUNCTION {s}.add_job(text, text, int, json, timestamptz) TO {web};
            """)
        finally:
            await owner_conn.close()
        web_conn = await asyncpg.connect(as_role(dsn, web))
        try:
            inserted = [
                await web_conn.fetchval(f"SELECT {s}.add_job('tasks_for_tests', 'add', 0, $1::json)", f'{{"a": {i}}}')
                for i in range(20)
            ]
            await web_conn.execute(f"CALL {s}.insert_job('tasks_for_tests', 'add', 0, '{{\"a\": 100}}'::json)")
        finally:
            await web_conn.close()
        failing = await jm.insert_job("tasks_for_tests", "explode", 0, {"reason": "on purpose"})
        to_cancel = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 1000}, run_at=timedelta(hours=1))
        assert await jm.cancel(to_cancel)

        # a real worker process, as the owner, drains the queue
        with worker_process(owner_dsn, schema_name, "--until-empty") as process:
            await until(lambda: _finished(jm, 23), "the owner's worker to finish 23 jobs")
            assert process.wait(60) == 0
        for job_id in inserted:
            job = await jm.get_job(job_id)
            assert job is not None and job.status == "complete"
        failed = await jm.get_job(failing)
        assert failed is not None and failed.status == "failed"
        assert await jm.retry(failing) == failing
        assert await jm.run() == 1
        assert [h["reason"] for h in await jm.history(failing)][-3:] == ["requeued", "claimed", "failed"]
        # retention, as the owner
        assert await jm.prune(older_than=timedelta(milliseconds=1)) == 23
        assert await jm.counts() == {}
    finally:
        await jm.close()
        await conn.execute(f"DROP OWNED BY {web}; DROP ROLE {web}")
        await drop_schema(dsn, schema_name)


async def _finished(jm: JobMaster, count: int) -> bool:
    counts = await jm.counts()
    return counts.get("complete", 0) + counts.get("failed", 0) + counts.get("cancelled", 0) >= count
