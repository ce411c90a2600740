"""The listener service: typed notifications, and LISTEN surviving a killed connection."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from jobmaster_async import JobMaster
from jobmaster_async.worker.listener import CancelJob, Listener, Notification, Wake, parse_notification
from jobmaster_async.worker.outage import Outage
from jobmaster_async.worker.signals import Signal
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
    outage = Outage(Signal(), Signal())
    listener = Listener(jm.store, outage, received.put_nowait, ping_interval=1.0)
    running = asyncio.create_task(listener.run())
    try:
        await within(listener.listening.wait_for(1), "LISTEN")
        assert await received.get() == Wake()  # the catch-up wake-up
        job_id = uuid.uuid4()
        await conn.execute("SELECT pg_notify($1, $2)", jm.sql.channel, f"cancel:{job_id}")
        assert await asyncio.wait_for(received.get(), 30) == CancelJob(job_id)

        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND application_name LIKE 'jobmaster_async:%'"
        )
        await within(listener.listening.wait_for(2), "LISTEN again after the connection was killed")
        await within(outage.ended.wait_for(1), "the outage to end")
        assert outage.began.count == 1
        while not received.empty():
            received.get_nowait()
        await conn.execute("SELECT pg_notify($1, 'wake')", jm.sql.channel)
        assert await asyncio.wait_for(received.get(), 30) == Wake()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
