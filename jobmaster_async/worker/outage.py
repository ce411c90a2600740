"""Surviving the database: the backoff every retry loop of the worker uses, and the reporting of
an outage once for the whole worker (not once per connection or service).

An outage begins when a service of the worker (claiming, recording, LISTEN, heartbeat, ...) meets
a database fault (db.faults) and ends when every service that met one has succeeded since: one
warning at the start, one line at the end. Errors that are not database faults are not retried:
they are bugs, and end the worker with their traceback.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..db.faults import database_fault, fault_name
from .signals import Signal

__all__ = ("Backoff", "Outage", "Service")

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Backoff:
    """Delays that double from ``first`` up to ``cap`` seconds, jittered by ±20 % so that the
    workers of a fleet do not retry in step."""

    def __init__(self, first: float = 0.1, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def delay(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.first


class Outage:
    """The database faults of one worker. When one begins, ``on_begin`` is called: every
    connection of the worker is suspect then (a restart or a cut network took them all), and
    finding the others out at once keeps the outage one outage. When it ends, ``on_end``."""

    def __init__(
        self,
        began: Signal,
        ended: Signal,
        on_begin: Callable[[], None] = lambda: None,
        on_end: Callable[[], None] = lambda: None,
    ) -> None:
        self.began = began
        self.ended = ended
        self.on_begin = on_begin
        self.on_end = on_end
        self.since: float | None = None
        #: what the fault that began it was (db.faults.fault_name): "database unreachable",
        #: "statement timeout", "lock timeout"...
        self.kind = ""
        self._failing: set[str] = set()

    @property
    def active(self) -> bool:
        return self.since is not None

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
            ended = "database reachable again" if self.kind == "database unreachable" else f"{self.kind} ended"
            logger.warning("%s: the worker recovered after %.1fs", ended, time.monotonic() - self.since)
            self.since = None
            self.ended.fire()
            self.on_end()


class Service:
    """One of the worker's activities, as the outage sees it, with its own backoff."""

    def __init__(self, outage: Outage, name: str) -> None:
        self.outage = outage
        self.name = name
        self.backoff = Backoff()

    def failed(self, exc: BaseException) -> float:
        """Reports a database fault; returns the seconds to wait before the next try. Any other
        error is raised again: it is not ours to retry."""
        if not database_fault(exc):
            raise exc
        self.outage.failed(self.name, exc)
        return self.backoff.delay()

    def ok(self) -> None:
        self.backoff.reset()
        self.outage.ok(self.name)

    async def run(
        self,
        operation: Callable[[], Awaitable[T]],
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        deadline: float | None = None,
    ) -> T:
        """``operation()``, tried until it succeeds (or, past the ``deadline`` on the monotonic
        clock, raises its last database fault)."""
        while True:
            try:
                result = await operation()
            except Exception as exc:
                delay = self.failed(exc)
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                await sleep(delay)
                continue
            self.ok()
            return result
