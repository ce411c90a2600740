"""run_forever against database faults, in-process: terminated backends whose end arrives late,
a black-holed network, a claim whose answer was lost, start-up errors, a bug of ours, and stop()
with thread jobs still running. Network faults go through tests/proxy.py."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.errors import DatabaseUnavailable
from jobmaster_async.events import Claimed, JobFinished, OutageBegan, Recovered
from tests.conftest import deployed, drop_schema, worker
from tests.polling import until, within
from tests.proxy import Proxy

TERMINATE = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1"


@asynccontextmanager
async def through_proxy(dsn: str, schema: str, **options: Any) -> AsyncIterator[tuple[Proxy, JobMaster, str]]:
    """A deployed JobMaster whose connections go through a proxy and carry an application name
    of their own (yielded, to find them in pg_stat_activity); heartbeats every 0.5 s."""
    name = f"proxied_{uuid.uuid4().hex[:8]}"
    async with Proxy(dsn) as proxy:
        master = JobMaster(
            proxy.dsn,
            schema=schema,
            connect_kwargs={"server_settings": {"application_name": name}},
            heartbeat_interval=0.5,
            **options,
        )
        try:
            await master.deploy()
            yield proxy, master, name
        finally:
            proxy.resume()
            await master.close()
            await drop_schema(dsn, schema)


async def add_job(conn: asyncpg.Connection, schema: str, task_key: str, arguments: dict[str, Any]) -> uuid.UUID:
    """A job inserted by another client (the faults below do not reach it)."""
    query = f"SELECT {quote_identifier(schema)}.add_job('tasks_for_tests', $1, 1, $2::json)"
    job_id: uuid.UUID = await conn.fetchval(query, task_key, json.dumps(arguments))
    return job_id


def warnings_saying(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage())


async def test_terminated_backends_whose_end_arrives_late_are_one_outage(
    dsn: str, schema_name: str, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's crash: a terminated backend's FATAL message arrived, the end of its connection
    not yet, so the driver refuses the next statement with InternalClientError. Every connection
    of the worker is in that state here (the proxy holds the ends back)."""
    async with (
        through_proxy(dsn, schema_name, heartbeat_lapse=2, poll_interval=3600) as (proxy, jm, name),
        worker(jm),
    ):
        await jm.insert_job("tasks_for_tests", "add", 1, {"a": 1})
        await within(jm.events.wait_for(JobFinished, 1), "the first job")
        proxy.hold_closes = True
        closed = proxy.closed_by_server.count
        killed = await conn.fetchval(TERMINATE, name)
        assert killed >= 3  # LISTEN, claims, and the pool's
        await within(proxy.closed_by_server.wait_for(closed + killed), "the backends to end")
        proxy.hold_closes = False
        await within(jm.events.wait_for(OutageBegan, 1), "the outage to be noticed")  # LISTEN ping, heartbeat
        job_id = await add_job(conn, jm.schema, "add", {"a": 2})
        await within(jm.events.wait_for(JobFinished, 2), "the job inserted after")
        await within(jm.events.wait_for(Recovered, 1), "the recovery")
        job = await jm.get_job(job_id)
        assert job is not None and job.status == "complete"
    assert jm.events.count(OutageBegan) == 1
    assert warnings_saying(caplog, "database unreachable") == 1
    assert warnings_saying(caplog, "recovered after") == 1


@pytest.mark.parametrize("back", ["resume", "fail_over"])
async def test_a_black_holed_network_is_noticed_and_survived(
    dsn: str, schema_name: str, conn: asyncpg.Connection, tmp_path: Path, back: str
) -> None:
    """The server vanishes without a reset while jobs run: the worker notices (a round trip's
    deadline, connection_timeout = heartbeat_lapse / 2 by default), and once the network is back,
    or a failover left its old connections dead for good, records their outcomes and runs the
    jobs inserted meanwhile, each once."""
    out = tmp_path / "out.txt"
    async with through_proxy(dsn, schema_name, heartbeat_lapse=4, poll_interval=3600) as (proxy, jm, _):
        assert jm.settings.connection_timeout == 2
        arguments = [{"path": str(out), "key": i, "seconds": 0.5} for i in range(8)]
        await jm.insert_jobs("tasks_for_tests", "record_after", 1, arguments)
        async with worker(jm, concurrency=4):
            await within(jm.events.wait_for(Claimed, 4), "four jobs to start")
            proxy.blackhole()
            await within(jm.events.wait_for(OutageBegan, 1), "the outage to be noticed")
            for key in range(8, 12):
                await add_job(conn, jm.schema, "record_after", {"path": str(out), "key": key, "seconds": 0.0})
            getattr(proxy, back)()
            await within(jm.events.wait_for(Recovered, 1), "the recovery")
            await until(lambda: finished(conn, jm.schema, 12), "every job to finish")
    assert Counter(out.read_text().split()) == Counter(str(key) for key in range(12))


async def finished(conn: asyncpg.Connection, schema: str, count: int) -> bool:
    done = await conn.fetchval(f"SELECT count(*) FROM {quote_identifier(schema)}.jobs WHERE status = 'complete'")
    return bool(done >= count)


async def test_a_claim_whose_answer_was_lost_is_put_back_after_the_outage(
    dsn: str, schema_name: str, conn: asyncpg.Connection
) -> None:
    """A claim that committed while its answer was lost leaves a job running, held by a worker
    that does not know it and keeps heartbeating: nobody would ever rescue it. The worker
    reconciles after an outage. (The lost claim is made here in the worker's name, while the
    worker is cut off.)"""
    async with through_proxy(dsn, schema_name, heartbeat_lapse=4, poll_interval=3600) as (proxy, jm, _):
        async with worker(jm):
            task_ids = await jm._worker.claimable_task_ids()
            proxy.blackhole()
            await within(jm.events.wait_for(OutageBegan, 1), "the outage to be noticed")
            job_id = await add_job(conn, jm.schema, "add", {"a": 1})
            claim = f"SELECT job_id FROM {quote_identifier(jm.schema)}.claim_jobs($1, $2, 1, 100)"
            claimed = await conn.fetch(claim, jm.worker_id, task_ids)
            assert [row["job_id"] for row in claimed] == [job_id]
            proxy.resume()
            await until(lambda: finished(conn, jm.schema, 1), "the job to be put back and run")
        job = await jm.get_job(job_id)
        assert job is not None and job.status == "complete" and job.result == 2
        assert (job.attempts, job.max_attempts, job.rescues) == (2, 2, 0)  # released: no retry used up


async def test_a_bug_of_ours_ends_run_forever_with_its_traceback(
    jm: JobMaster, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(limit: int, units: int) -> list[Any]:
        raise ZeroDivisionError("a bug")

    jm._worker.claim = broken  # type: ignore[method-assign]
    with pytest.raises(ZeroDivisionError):
        await asyncio.wait_for(jm.run_forever(2), 30)
    [record] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert record.exc_info is not None and "not a database fault" in record.getMessage()


async def test_start_up_errors_are_fatal_at_once(dsn: str) -> None:
    """Before the first connection, an error that waiting will not fix ends the worker."""
    parts = urlsplit(dsn)
    async with JobMaster(urlunsplit(parts._replace(path="/no_such_database"))) as master:
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await asyncio.wait_for(master.run_forever(2), 30)


async def test_start_up_waits_for_a_server_that_refuses_connections(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:  # a port nobody listens on, for now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy = Proxy(dsn, port)
    async with JobMaster(proxy.dsn) as master:
        with pytest.raises(DatabaseUnavailable, match=f"at 127.0.0.1:{port} \\(waited 0.3s\\): .*refused") as refused:
            await master.connect(wait=0.3)
        assert isinstance(refused.value.__cause__, ConnectionRefusedError) and not master.connected
        connecting = asyncio.create_task(master.connect())
        await until(lambda: _logged(caplog, "no read-write database server yet"), "a refused connection")
        async with proxy:
            await asyncio.wait_for(connecting, 30)
        assert master.connected


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


async def test_tcp_connections_have_keepalives(dsn: str) -> None:
    async with Proxy(dsn) as proxy, JobMaster(proxy.dsn, connection_timeout=6) as master:
        conn = await master.open_connection()
        try:
            sock = conn._transport.get_extra_info("socket")  # asyncpg keeps its transport private
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 2
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 6000
        finally:
            await conn.close()


async def test_stop_keeps_thread_jobs_held_until_their_threads_return(
    dsn: str, schema_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Threads cannot be stopped: an in-process stop() keeps their jobs held (running, the
    worker heartbeating) past the grace period until they return, then records their outcomes,
    while another worker runs; each job runs once."""
    out, gate = tmp_path / "out.txt", tmp_path / "gate"
    lapse: dict[str, Any] = {"heartbeat_interval": 0.5, "heartbeat_lapse": 2.0, "poll_interval": 3600}
    async with deployed(dsn, schema_name, **lapse) as first, JobMaster(dsn, schema=schema_name, **lapse) as second:
        arguments = [{"path": str(out), "key": i, "gate": str(gate)} for i in range(4)]
        ids = await first.insert_jobs("tasks_for_tests", "record_when_gate_opens", 1, arguments)
        running = asyncio.create_task(first.run_forever(4, grace_period=0.1))
        await within(first.events.wait_for(Claimed, 4), "four jobs to start")
        async with worker(second):
            await first.stop()
            await until(lambda: _logged(caplog, "they stay held"), "the grace period to pass")
            gate.touch()
            await within(running, "the first worker to stop")
        for job_id in ids:
            assert [event["status"] for event in await first.history(job_id)] == ["waiting", "running", "complete"]
    assert Counter(out.read_text().split()) == Counter(str(i) for i in range(4))
