"""The listener: LISTEN on the schema's channel, on a connection of its own.

The database says three things on that channel (sql/ triggers and functions, deploy): ``wake``
(jobs became runnable, or a process_limit slot freed), ``cancel:<job id>`` (a running job was
cancelled) and ``schedules`` (a deploy changed the periodic tasks' schedules).
Payloads are parsed into typed notifications by db.notifications (events, emitted on the
worker's hub); nothing else looks at their text.

A lost connection is reopened with backoff (an outage of the worker, reported once). An idle one
is pinged, so that a connection cut without a TCP reset is noticed within the deadline; after an
outage the dispatcher is woken, to catch up on what was notified while nobody listened.

The worker's heartbeat goes on this connection too (``beat``, every ``beat_interval``, and first
of all on each new connection), never through the pool: a pool starved of connections (by the
worker's own statements, or ``max_connections`` filled by others) must not make a live worker
look lost. The loop below is the connection's only user, so the heartbeat and the pings never
overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import asyncpg

from ..db.notifications import CancelJob, Notification, SchedulesChanged, Wake, parse_notification
from ..db.ports import ListeningStore
from ..events import Events, Listening
from .outage import Outage, ReconnectDelay, Retrier

__all__ = ("CancelJob", "Listener", "Notification", "SchedulesChanged", "Wake", "parse_notification")

logger = logging.getLogger(__name__)


#: Sends the worker's heartbeat on the given connection.
Beat = Callable[[asyncpg.Connection], Awaitable[None]]


class Listener:
    """A service (worker.services) that emits each notification on ``events`` (and, each time it
    starts listening, ``Listening`` and a ``Wake``). With ``beat``, it heartbeats on its
    connection: on connecting, then every ``beat_interval``."""

    def __init__(
        self,
        store: ListeningStore,
        outage: Outage,
        events: Events,
        ping_interval: float,
        beat: Beat | None = None,
        beat_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.outage = outage
        self.events = events
        self.ping_interval = ping_interval
        self.beat = beat
        self.beat_interval = beat_interval
        self._check = asyncio.Event()

    def check_now(self) -> None:
        """Pings the connection at once (an outage began: it is suspect)."""
        self._check.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        retrier = Retrier(self.outage, "LISTEN connection")
        if self.beat is not None:  # the heartbeat waits for the connection: retried at its pace
            retrier.delays = ReconnectDelay(cap=max(retrier.delays.first, self.beat_interval))
        task_status.started()
        await retrier.run(lambda: self._listen(retrier))

    async def _listen(self, retrier: Retrier) -> None:
        """LISTENs until the connection fails (it never returns)."""
        deadline = self.ping_interval
        conn = await self.store.open_connection()
        lost = self._check
        conn.add_termination_listener(lambda _c: lost.set())
        try:
            if self.beat is not None:
                await self.beat(conn)  # first of all: the worker claims only once it heartbeats
            next_beat = time.monotonic() + self.beat_interval
            async with asyncio.timeout(deadline):  # add_listener takes no timeout
                await self.store.listen(conn, self._on_notify)
            retrier.ok()
            self.events.emit(Listening())
            self.events.emit(Wake())  # catch up on anything notified while we were not listening
            while True:
                lost.clear()
                wait = deadline
                if self.beat is not None:
                    wait = max(0.0, min(wait, next_beat - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), wait)
                # either raises once the connection is lost; a heartbeat is a ping too
                if self.beat is not None and time.monotonic() >= next_beat:
                    await self.beat(conn)
                    next_beat = time.monotonic() + self.beat_interval
                else:
                    await self.store.ping(conn, deadline)
        finally:
            conn.terminate()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        notification = parse_notification(payload)
        if notification is not None:
            self.events.emit(notification)
