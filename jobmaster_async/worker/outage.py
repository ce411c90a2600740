"""Surviving the database: the backoff every retry loop of the worker uses, and the reporting of
an outage once for the whole worker (not once per connection or service).

An outage begins when a service of the worker (claiming, recording, LISTEN, heartbeat, ...) meets
a database fault (db.faults) and ends when every service that met one has succeeded since: one
warning at the start, one line at the end. Errors that are not database faults are not retried:
they are bugs, and end the worker with their traceback.

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

from ..db.faults import database_fault, fault_name
from ..db.waiting import Backoff
from .signals import Signal

__all__ = ("PROBE_INTERVAL", "Backoff", "Outage", "Service")

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two probes of the database while services wait out their backoff.
PROBE_INTERVAL = 0.5

#: Opens a connection to a read-write server and closes it, or raises (db.store.Store.probe).
Probe = Callable[[], Awaitable[None]]


class Outage:
    """The database faults of one worker. When one begins, ``on_begin`` is called: every
    connection of the worker is suspect then (a restart or a cut network took them all), and
    finding the others out at once keeps the outage one outage. When it ends, ``on_end``.
    With a ``probe``, pauses end as soon as the server answers again (``pause``)."""

    def __init__(
        self,
        began: Signal,
        ended: Signal,
        on_begin: Callable[[], None] = lambda: None,
        on_end: Callable[[], None] = lambda: None,
        probe: Probe | None = None,
    ) -> None:
        self.began = began
        self.ended = ended
        self.on_begin = on_begin
        self.on_end = on_end
        self.probe = probe
        self.since: float | None = None
        #: what the fault that began it was (db.faults.fault_name): "database unreachable",
        #: "statement timeout", "lock timeout"...
        self.kind = ""
        self._failing: set[str] = set()
        #: counts the probes that found the server back after one failed
        self.answered = Signal()
        self._answer = asyncio.Event()  # set (and replaced) when the server answers again
        self._pausing = 0
        self._prober: asyncio.Task[None] | None = None
        self._probe_failed = False

    def failed(self, service: str, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.kind = fault_name(exc)
            logger.warning(
                "%s (%s: %s: %s); the worker retries with backoff",
                self.kind,
                service,
                type(exc).__name__,
                exc,
            )
            self._failing.add(service)
            self.began.fire()
            self.on_begin()
        else:
            logger.debug("%s failed again (%s): %s: %s", service, fault_name(exc), type(exc).__name__, exc)
            self._failing.add(service)

    def ok(self, service: str) -> None:
        if service not in self._failing:
            return
        self._failing.discard(service)
        if not self._failing and self.since is not None:
            ended = {
                "database unreachable": "database reachable again",
                "server is read-only (a standby?)": "a read-write server answers again",
            }.get(self.kind, f"{self.kind} ended")
            logger.warning("%s: the worker recovered after %.1fs", ended, time.monotonic() - self.since)
            self.since = None
            self._probe_failed = False
            self.ended.fire()
            self.on_end()

    async def pause(self, seconds: float, *until: asyncio.Event) -> None:
        """Waits ``seconds`` (a backoff), or until one of ``until`` is set, or until the server
        answers again after failing, whichever comes first; probes it meanwhile."""
        answer = self._answer
        waits = [asyncio.ensure_future(event.wait()) for event in (answer, *until)]
        self._pausing += 1
        if self.probe is not None and self.since is not None and (self._prober is None or self._prober.done()):
            self._prober = asyncio.ensure_future(self._probe_while_paused(self.probe))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            self._pausing -= 1
            if not self._pausing and self._prober is not None:
                self._prober.cancel()  # nobody waits: retries find the server themselves
                self._prober = None

    async def _probe_while_paused(self, probe: Probe) -> None:
        """Probes every PROBE_INTERVAL while the server fails to answer, and more and more slowly
        while it answers (its statements are what fails: the backoff is for them)."""
        answering = Backoff(first=PROBE_INTERVAL, cap=10.0)
        while self.since is not None:
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
                    self.answered.fire()
                    answer, self._answer = self._answer, asyncio.Event()
                    answer.set()
                delay = answering.delay()
            await asyncio.sleep(delay)


class Service:
    """One of the worker's activities, as the outage sees it, with its own backoff."""

    def __init__(self, outage: Outage, name: str) -> None:
        self.outage = outage
        self.name = name
        self.backoff = Backoff()
        self._answers = outage.answered.count

    def failed(self, exc: BaseException) -> float:
        """Reports a database fault; returns the seconds to wait before the next try (pause with
        ``outage.pause``: it ends when the server is back). Any other error is raised again: it is
        not ours to retry."""
        if not database_fault(exc):
            raise exc
        self.outage.failed(self.name, exc)
        if self._answers != self.outage.answered.count:  # the server came back since: start again
            self._answers = self.outage.answered.count
            self.backoff.reset()
        return self.backoff.delay()

    def ok(self) -> None:
        self.backoff.reset()
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
