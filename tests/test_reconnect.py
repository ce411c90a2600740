"""Reconnecting (DESIGN 10 "Failover"): the backoff bounds the retries of a server that keeps
failing, not the finding of one that is back. Backoffs here are an hour long: only the probe can
end them within a test."""

from __future__ import annotations

import asyncio
import functools
import socket

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.events import Count, Events, OutageBegan, Recovered
from jobmaster_async.worker import outage as outage_module
from jobmaster_async.worker.outage import Outage, ReconnectDelay, Retrier
from tests.conftest import worker
from tests.polling import until, within
from tests.proxy import Proxy

HOUR = 3600.0


class Server:
    """A fake server for the probe: down (refused) or up."""

    def __init__(self) -> None:
        self.up = False
        self.probed = Count()  # failed probes
        self.answered = Count()

    async def probe(self) -> None:
        if not self.up:
            self.probed.add()
            raise ConnectionRefusedError(111, "Connection refused")
        self.answered.add()


async def test_a_server_back_ends_the_backoff_at_once() -> None:
    server = Server()
    outage = Outage(Events(), probe=server.probe)
    service = Retrier(outage, "claiming jobs")
    service.delays = ReconnectDelay(first=HOUR, cap=HOUR)
    tries = 0

    async def operation() -> str:
        nonlocal tries
        tries += 1
        if not server.up:
            raise ConnectionRefusedError(111, "Connection refused")
        return "done"

    running = asyncio.create_task(service.run(operation))
    await within(server.probed.wait_for(1), "a failed probe")
    assert not running.done() and tries == 1
    server.up = True
    assert await asyncio.wait_for(running, 60) == "done"  # not an hour
    assert tries == 2
    assert outage.answers == 1 and not outage.active


async def test_a_server_that_answers_but_fails_statements_keeps_the_backoff() -> None:
    """The probe connects, the statements fail: only the backoff says when to try again."""
    server = Server()
    server.up = True
    outage = Outage(Events(), probe=server.probe)
    service = Retrier(outage, "recording outcomes")
    service.delays = ReconnectDelay(first=HOUR, cap=HOUR)

    async def operation() -> None:
        raise asyncpg.TooManyConnectionsError("sorry, too many clients already")

    running = asyncio.create_task(service.run(operation))
    await within(server.answered.wait_for(2), "two probes answered")
    assert not running.done() and outage.answers == 0
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_worker_back_from_an_outage_does_not_wait_out_its_backoff(
    jm: JobMaster, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server goes away (connections refused) long enough for every service to back off for
    an hour, then comes back: the worker runs a job inserted meanwhile."""
    monkeypatch.setattr(outage_module, "ReconnectDelay", functools.partial(ReconnectDelay, first=HOUR, cap=HOUR))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy = Proxy(dsn, port)
    await proxy.__aenter__()
    master = JobMaster(proxy.dsn, schema=jm.schema, heartbeat_interval=0.5, heartbeat_lapse=30)
    refused = Count()
    probe = master._store.probe

    async def counted_probe() -> None:
        try:
            await probe()
        except OSError:
            refused.add()
            raise

    master._store.probe = counted_probe  # type: ignore[method-assign]
    try:
        async with worker(master, concurrency=2):
            first = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 1, "b": 1})
            await until(lambda: _complete(jm, first), "a job before the outage")
            await proxy.close()  # the server is gone: connections cut, new ones refused
            await within(master.events.wait_for(OutageBegan, 1), "the outage")
            await within(refused.wait_for(1), "a refused probe")
            second = await jm.insert_job("tasks_for_tests", "add", 0, {"a": 2, "b": 2})
            proxy = Proxy(dsn, port)
            await proxy.__aenter__()  # back, at the same address
            await until(lambda: _complete(jm, second), "the job inserted during the outage")
            assert master.events.count(Recovered) >= 1
    finally:
        await master.close()
        await proxy.close()


async def _complete(jm: JobMaster, job_id: object) -> bool:
    job = await jm.get_job(job_id)  # type: ignore[arg-type]
    return job is not None and job.status == "complete"
