"""Failover (DESIGN 10): a worker started while no read-write server exists waits for one
(--wait-for-database), and then names every host and why it failed; a read-only server is waited
out like a refused one.

A read-only server is made without a standby: a role whose sessions default to read-only
(PostgreSQL reports default_transaction_read_only at connection, as a standby reports
in_hot_standby); the role's setting reset, new sessions are read-write, as after a promotion."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.errors import DatabaseUnavailable
from tests.polling import until
from tests.processes import worker_process
from tests.proxy import Proxy


def free_port() -> int:
    """A port nobody listens on, for now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_hosts(dsn: str, hosts: str, user: str | None = None, query: str = "") -> str:
    """``dsn`` with its host list replaced by ``hosts`` (and its user, and more query)."""
    parts = urlsplit(dsn)
    credentials = parts.netloc.rpartition("@")[0]
    if user is not None:
        credentials = user
    more = "&".join(filter(None, (parts.query, query)))
    return urlunsplit(parts._replace(netloc=f"{credentials}@{hosts}" if credentials else hosts, query=more))


@asynccontextmanager
async def read_only_role(conn: asyncpg.Connection) -> AsyncIterator[str]:
    """A login role whose sessions are read-only (until ``ALTER ROLE … RESET``)."""
    role = f"jm_standby_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    await conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
    try:
        yield role
    finally:
        await conn.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("attrs", ["target_session_attrs=read-write", ""])
async def test_start_up_waits_out_a_read_only_server(
    dsn: str, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture, attrs: str
) -> None:
    """With target_session_attrs (asyncpg refuses the server) or without (the worker finds out)."""
    async with Proxy(dsn) as proxy, read_only_role(conn) as role:
        master = JobMaster(with_hosts(proxy.dsn, f"127.0.0.1:{proxy.port}", user=role, query=attrs))
        async with master:
            with pytest.raises(DatabaseUnavailable, match=r"\(not waited for\): server is read-only \(a standby\?\)"):
                await master.connect(wait=0)
            with caplog.at_level(logging.WARNING, "jobmaster_async"):
                connecting = asyncio.create_task(master.connect(wait=60))
                await until(lambda: _logged(caplog, "server is read-only (a standby?)"), "the read-only server")
                assert not connecting.done()
                await conn.execute(f"ALTER ROLE {role} RESET default_transaction_read_only")  # promoted
                await asyncio.wait_for(connecting, 30)
            assert master.connected
            waits = [r.getMessage() for r in caplog.records if "no read-write database server yet" in r.getMessage()]
            assert len(waits) == 1  # one line, not one per try
            assert any("a read-write database server answered after" in r.getMessage() for r in caplog.records)


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


async def test_a_worker_started_before_any_server_starts_working_once_one_answers(
    jm: JobMaster, dsn: str, tmp_path: Path
) -> None:
    """The worker's only hosts refuse connections (nothing listens there yet), then one answers."""
    port = free_port()
    proxy = Proxy(dsn, port)
    several = with_hosts(proxy.dsn, f"127.0.0.1:1,127.0.0.1:{port}", query="target_session_attrs=read-write")
    job_id = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 2, "b": 3})
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log, worker_process(several, jm.schema, "--wait-for-database", "60", log=log) as worker:

        async def waiting() -> bool:
            return "no read-write database server yet" in log_path.read_text()

        await until(waiting, "the worker to wait for a server")
        assert worker.poll() is None
        async with proxy:

            async def done() -> bool:
                job = await jm.get_job(job_id)
                return job is not None and job.status == "complete"

            await until(done, "the job to run")
        worker.terminate()
        worker.wait(30)
    text = log_path.read_text()
    assert text.count("no read-write database server yet") == 1, text
    assert "a read-write database server answered after" in text


async def test_a_worker_that_waited_long_enough_names_every_host(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """One host refuses connections, the other is read-only: exit 1, one line naming both."""
    log_path = tmp_path / "worker.log"
    async with Proxy(dsn) as proxy, read_only_role(conn) as role:
        several = with_hosts(proxy.dsn, f"127.0.0.1:1,127.0.0.1:{proxy.port}", user=role)
        with (
            log_path.open("wb") as log,
            worker_process(several, "jobmaster", "--wait-for-database", "1", log=log) as worker,
        ):
            await asyncio.to_thread(worker.wait, 60)
    assert worker.returncode == 1
    lines = log_path.read_text().strip().splitlines()
    assert lines[-1] == (
        "Error: cannot reach a read-write database (waited 1s): 127.0.0.1:1: [Errno 111] Connection refused; "
        f"127.0.0.1:{proxy.port}: server is read-only (a standby?)"
    )
    assert len(lines) == 2 and "no read-write database server yet" in lines[0], lines
