"""The listener service: typed notifications, and LISTEN surviving a killed connection."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.events import Claimed, Events, HeartbeatRecorded, Listening, OutageBegan, Recovered
from jobmaster_async.worker.listener import (
    CancelJob,
    Listener,
    Notification,
    SchedulesChanged,
    Wake,
    parse_notification,
)
from jobmaster_async.worker.outage import Outage
from tests.conftest import deployed, worker
from tests.polling import within


def test_payloads_are_parsed_into_typed_notifications() -> None:
    job_id = uuid.uuid4()
    assert parse_notification("wake") == Wake()
    assert parse_notification(f"cancel:{job_id}") == CancelJob(job_id)
    assert parse_notification("cancel:not-a-uuid") is None
    assert parse_notification("something newer") is None


async def test_notifications_arrive_and_listening_survives_a_killed_connection(
    jm: JobMaster, conn: asyncpg.Connection
) -> None:
    received: asyncio.Queue[Notification] = asyncio.Queue()
    events = Events()
    events.subscribe(Wake, received.put_nowait)
    events.subscribe(CancelJob, received.put_nowait)
    events.subscribe(SchedulesChanged, received.put_nowait)
    outage = Outage(events)
    listener = Listener(jm._store, outage, events, ping_interval=1.0)
    running = asyncio.create_task(listener.run())
    try:
        await within(events.wait_for(Listening, 1), "LISTEN")
        assert await received.get() == Wake()  # the catch-up wake-up
        job_id = uuid.uuid4()
        await conn.execute("SELECT pg_notify($1, $2)", jm.sql.channel, f"cancel:{job_id}")
        assert await asyncio.wait_for(received.get(), 30) == CancelJob(job_id)

        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND application_name LIKE 'jobmaster_async:%'"
        )
        await within(events.wait_for(Listening, 2), "LISTEN again after the connection was killed")
        await within(events.wait_for(Recovered, 1), "the outage to end")
        assert events.count(OutageBegan) == 1
        while not received.empty():
            received.get_nowait()
        await conn.execute("SELECT pg_notify($1, 'wake')", jm.sql.channel)
        assert await asyncio.wait_for(received.get(), 30) == Wake()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_the_worker_heartbeats_on_the_listen_connection_while_its_pool_is_starved(
    dsn: str, schema_name: str, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """The pool's only connection is held (by a statement of the app, say) for two lapses: the
    worker heartbeats on, is never cut off, and its running job is not rescued."""
    lapse = {"heartbeat_interval": 0.1, "heartbeat_lapse": 3.0, "poll_interval": 3600, "pool_size": 1}
    async with deployed(dsn, schema_name, **lapse) as master, worker(master, concurrency=2):
        job_id = await master.insert_job("tasks_for_tests", "sleepy", 1, {"seconds": 60})
        await within(master.events.wait_for(Claimed, 1), "the job to start")
        async with master._store.acquire():  # the pool is empty now
            beats = master.events.count(HeartbeatRecorded)
            # two lapses' worth of heartbeats (60 intervals), none through the pool
            await within(master.events.wait_for(HeartbeatRecorded, beats + 60), "heartbeats while the pool is starved")
            age = await conn.fetchval(
                f"SELECT extract(epoch FROM now() - heartbeat_at) FROM {quote_identifier(schema_name)}.workers"
                " WHERE worker_id = $1",
                master.worker_id,
            )
            assert age < lapse["heartbeat_lapse"]
        job = await master.get_job(job_id)
        assert job is not None and job.status == "running" and job.rescues == 0
        assert not any("could not heartbeat" in r.getMessage() for r in caplog.records)
        await master.cancel(job_id)
