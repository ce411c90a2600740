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
from jobmaster_async.db.faults import database_fault, read_only_server
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.errors import DatabaseUnavailable
from jobmaster_async.events import Events
from jobmaster_async.worker.outage import Outage, log_outages
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
    await conn.execute(f"CREATE ROLE {role} LOGIN")
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


# -- claims and synchronous replication -----------------------------------------------------------


async def test_without_synchronous_standbys_a_claim_does_not_wait_for_its_flush(
    jm: JobMaster, conn: asyncpg.Connection
) -> None:
    fragment = jm.sql.render("{fragment:claim_commit}")
    await conn.execute("SET synchronous_commit = on")
    async with conn.transaction():
        await conn.execute(f"SELECT {fragment}")
        assert await conn.fetchval("SHOW synchronous_commit") == "off"
    assert await conn.fetchval("SHOW synchronous_commit") == "on"  # for the claim's transaction only


@asynccontextmanager
async def synchronous_standby_names(conn: asyncpg.Connection, names: str) -> AsyncIterator[None]:
    """The server's synchronous_standby_names (a reload: sessions see it at their next statement)."""
    await conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
    await conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        await conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await conn.execute("SELECT pg_reload_conf()")


async def test_with_synchronous_standbys_a_claim_waits_for_them(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection
) -> None:
    """A standby named but absent: the claim's commit waits for it (SyncRep), so no job starts
    on a claim that a failover would lose; once the standby is no longer required, it goes on."""
    first, job_id = await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": 1, "b": 2}, {"a": 2, "b": 2}])
    durable = JobMaster(dsn, schema=jm.schema, connect_kwargs={"server_settings": {"synchronous_commit": "on"}})
    fragment = jm.sql.render("{fragment:claim_commit}")
    async with durable:
        popped = await durable.pop_job()  # registered, and rescued, before the standby is required
        assert popped is not None and popped.job_id == first
        await popped.execute()
        async with synchronous_standby_names(conn, "jm_absent_standby"):

            async def reloaded() -> bool:
                return bool(await conn.fetchval("SELECT current_setting('synchronous_standby_names') <> ''"))

            await until(reloaded, "the reload")
            async with durable.connection() as own, own.transaction():
                await own.execute(f"SELECT {fragment}")
                assert await own.fetchval("SHOW synchronous_commit") == "remote_write"
            claiming = asyncio.create_task(durable.pop_job())

            async def waiting_for_the_standby() -> bool:
                query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND query LIKE '%claim%'"
                return bool(await conn.fetchval(query))

            await until(waiting_for_the_standby, "the claim to wait for the standby")
            assert not claiming.done()
        popped = await asyncio.wait_for(claiming, 30)
        assert popped is not None and popped.job_id == job_id
        await popped.execute()


# -- messages -------------------------------------------------------------------------------------


def test_a_read_only_server_is_named_as_such(caplog: pytest.LogCaptureFixture) -> None:
    refused = asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute UPDATE in a read-only transaction")
    not_matched = asyncpg.exceptions.TargetServerAttributeNotMatched("None of the hosts match")
    assert read_only_server(refused) and read_only_server(not_matched)
    assert database_fault(refused) and database_fault(not_matched)
    assert not read_only_server(ConnectionRefusedError(111, "Connection refused"))
    events = Events()
    log_outages(events)
    outage = Outage(events)
    with caplog.at_level(logging.WARNING, "jobmaster_async"):
        outage.failed("claiming jobs", refused)
    [record] = caplog.records
    assert record.getMessage().startswith("server is read-only (a standby?) (claiming jobs: ")


async def test_no_delete_is_tried_on_a_read_only_server(
    jm: JobMaster, dsn: str, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker stopping against a standby leaves its row to lapse, and says so."""
    await conn.execute(
        f"INSERT INTO {quote_identifier(jm.schema)}.workers (worker_id, node, pid) VALUES ($1, 'here', 1)", jm.worker_id
    )
    async with read_only_role(conn) as role:
        same_hosts = urlsplit(dsn).netloc.rpartition("@")[2]  # a TCP server's or none (a socket's)
        async with JobMaster(with_hosts(dsn, same_hosts, user=role), schema=jm.schema) as master:
            with caplog.at_level(logging.DEBUG):
                await master._store.remove_worker(jm.worker_id)
    assert "server is read-only (a standby?): this worker's row is not removed; it lapses" in caplog.text
    assert "cannot execute DELETE" not in caplog.text
    workers = f"SELECT count(*) FROM {quote_identifier(jm.schema)}.workers WHERE worker_id = $1"
    assert await conn.fetchval(workers, jm.worker_id) == 1
    await jm._store.remove_worker(jm.worker_id)  # a read-write server: removed
    assert await conn.fetchval(workers, jm.worker_id) == 0
