"""Surviving the database: the reconnect delays every retry loop of the worker uses (``Retrier``),
and the reporting of an outage once for the whole worker (not once per connection or service).

An outage begins when a service of the worker (claiming, recording, LISTEN, heartbeat, ...) meets
a database fault (db.faults) and ends when every service that met one has succeeded since: one
warning at the start, one line at the end: the events ``OutageBegan`` and ``Recovered``
(events.py), which the log (``log_outages``) and the dispatcher consume. Errors that are not
database faults are not retried: they are bugs, and end the worker with their traceback.

The backoff bounds the retries of a server that keeps failing; it does not delay finding a server
that is back (a restart, a promoted standby). While services wait out their backoff, the outage
probes the database every PROBE_INTERVAL (a connection opened and closed, that must reach a
read-write server); when a probe succeeds after one failed, every pause ends at once and the
backoffs start again from their first delay.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from ..db.faults import database_fault, fault_name
from ..db.waiting import ReconnectDelay
from ..events import Events, OutageBegan, Recovered, ServerAnswered

__all__ = ("PROBE_INTERVAL", "Outage", "ReconnectDelay", "Retrier", "log_outages")

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two probes of the database while services wait out their backoff.
PROBE_INTERVAL = 0.5

#: Opens a connection to a read-write server and closes it, or raises (db.store.Store.probe).
Probe = Callable[[], Awaitable[None]]


async def _cancel_when_set(event: asyncio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def log_outages(events: Events) -> Callable[[], None]:
    """Logs the outages said on ``events``: one warning when one begins, one when it ends (the
    worker's backend subscribes it first, so it logs before anyone reacts). Returns the function
    that unsubscribes it."""

    def began(event: OutageBegan) -> None:
        logger.warning("%s (%s: %s); the worker retries with backoff", event.kind, event.service, event.error)

    def recovered(event: Recovered) -> None:
        ended = {
            "database unreachable": "database reachable again",
            "server is read-only (a standby?)": "a read-write server answers again",
        }.get(event.kind, f"{event.kind} ended")
        logger.warning("%s: the worker recovered after %.1fs", ended, event.seconds)

    subscriptions = (events.subscribe(OutageBegan, began), events.subscribe(Recovered, recovered))

    def unsubscribe() -> None:
        for each in subscriptions:
            each()

    return unsubscribe


class Outage:
    """The database faults of one worker, said on ``events``: ``OutageBegan`` when one begins
    (every connection of the worker is suspect then: a restart or a cut network took them all,
    and finding the others out at once keeps the outage one outage), ``Recovered`` when it ends.
    With a ``probe``, pauses end as soon as the server answers again (``pause``)."""

    def __init__(self, events: Events, probe: Probe | None = None) -> None:
        self.events = events
        self.probe = probe
        self.since: float | None = None
        #: what the fault that began it was (db.faults.fault_name): "database unreachable",
        #: "statement timeout", "lock timeout"...
        self.kind = ""
        self._failing: set[str] = set()
        #: the probes that found the server back after one failed
        self.answers = 0
        self._answer = asyncio.Event()  # set (and replaced) when the server answers again
        self._probing = False  # a pause probes (one at a time)
        self._probe_ended = asyncio.Event()  # set (and replaced) when that pause ends
        self._probe_failed = False

    def reset(self) -> None:
        """Starts afresh (a new run_forever): no outage, no probe under way."""
        self.since, self.kind = None, ""
        self._failing.clear()
        self._answer, self._probe_ended = asyncio.Event(), asyncio.Event()
        self._probing = self._probe_failed = False

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, service: str, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.kind = fault_name(exc)
            self._failing.add(service)
            self.events.emit(OutageBegan(self.kind, service, f"{type(exc).__name__}: {exc}"))
        else:
            logger.debug("%s failed again (%s): %s: %s", service, fault_name(exc), type(exc).__name__, exc)
            self._failing.add(service)

    def ok(self, service: str) -> None:
        if service not in self._failing:
            return
        self._failing.discard(service)
        if not self._failing and self.since is not None:
            seconds = time.monotonic() - self.since
            self.since = None
            self._probe_failed = False
            self.events.emit(Recovered(seconds, self.kind))

    async def pause(self, seconds: float, *until: asyncio.Event) -> None:
        """Waits ``seconds`` (a backoff), or until one of ``until`` is set, or until the server
        answers again after failing, whichever comes first; probes it meanwhile (one pause at a
        time probes: when it ends, another one still pausing takes over)."""
        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as waits:
                for event in (self._answer, *until):
                    waits.start_soon(_cancel_when_set, event, waits.cancel_scope)
                if self.probe is not None and self.active:
                    waits.start_soon(self._probe_while_paused, self.probe)

    async def _probe_while_paused(self, probe: Probe) -> None:
        """Probes every PROBE_INTERVAL while the server fails to answer, and more and more slowly
        while it answers (its statements are what fails: the backoff is for them)."""
        while self._probing:  # another pause probes: take over once it ended
            await self._probe_ended.wait()
        self._probing = True
        try:
            answering = ReconnectDelay(first=PROBE_INTERVAL, cap=10.0)
            while self.active:
                try:
                    await probe()
                except Exception as exc:
                    logger.debug("probe: %s: %s", type(exc).__name__, exc)
                    self._probe_failed = True
                    answering.reset()
                    delay = PROBE_INTERVAL * random.uniform(0.8, 1.2)
                else:
                    if self._probe_failed:
                        logger.info("the database answers again: retrying at once")
                        self._probe_failed = False
                        self.answers += 1
                        self.events.emit(ServerAnswered())
                        answer, self._answer = self._answer, asyncio.Event()
                        answer.set()
                    delay = answering.delay()
                await anyio.sleep(delay)
        finally:
            self._probing = False
            ended, self._probe_ended = self._probe_ended, asyncio.Event()
            ended.set()


class Retrier:
    """Retries one of the worker's activities (``name``, as the outage reports it) on database
    faults, with its own reconnect delays."""

    def __init__(self, outage: Outage, name: str) -> None:
        self.outage = outage
        self.name = name
        self.delays = ReconnectDelay()
        self._answers = outage.answers

    def failed(self, exc: BaseException) -> float:
        """Reports a database fault; returns the seconds to wait before the next try (pause with
        ``outage.pause``: it ends when the server is back). Any other error is raised again: it is
        not ours to retry."""
        if not database_fault(exc):
            raise exc
        self.outage.failed(self.name, exc)
        if self._answers != self.outage.answers:  # the server came back since: start again
            self._answers = self.outage.answers
            self.delays.reset()
        return self.delays.delay()

    def ok(self) -> None:
        self.delays.reset()
        self.outage.ok(self.name)

    async def run(
        self,
        operation: Callable[[], Awaitable[T]],
        sleep: Callable[[float], Awaitable[object]] | None = None,
        deadline: float | None = None,
    ) -> T:
        """``operation()``, tried until it succeeds (or, past the ``deadline`` on the monotonic
        clock, raises its last database fault). Between tries: ``sleep``, by default the
        outage's pause."""
        pause = sleep or self.outage.pause
        while True:
            try:
                result = await operation()
            except Exception as exc:
                delay = self.failed(exc)
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                await pause(delay)
                continue
            self.ok()
            return result
