"""The worker's typed events, delivered to subscribers (worker.services' protocol).

Services emit what happened (jobs claimed, outcomes recorded, an outage, a recovery, a rescue,
a heartbeat, a tick fired...) on one ``Events`` hub per JobMaster (``jm.events``); the dispatcher,
the CLI's ``--progress``, logging and tests subscribe to the kinds they need. A subscriber is
called synchronously, on the event loop, in the order of emission: it must not block (set an
event, count, append). The hub also counts every kind (and the kinds it derives from), so that a
test can await "N completed jobs" since the JobMaster was made (``wait_for``, bounded).

An outcome's event (``Completed``, ``Failed``, ``Retried``, ``Cancelled``: all ``JobFinished``) is
emitted once the outcome was recorded (or dropped by fencing): the database shows it by then.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

__all__ = (
    "Cancelled",
    "Claimed",
    "Completed",
    "Count",
    "Event",
    "Events",
    "Failed",
    "HeartbeatRecorded",
    "JobFinished",
    "Listening",
    "OutageBegan",
    "Pruned",
    "Recovered",
    "Rescued",
    "Retried",
    "ServerAnswered",
    "TickFired",
)

logger = logging.getLogger(__name__)

E = TypeVar("E", bound="Event")

#: Seconds ``Events.wait_for`` waits by default before failing (a worker that died must fail a
#: test, not hang it).
WAIT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Event:
    """Something a service of the worker did."""


@dataclass(frozen=True, slots=True)
class Claimed(Event):
    """A job was claimed by run_forever (and starts now)."""

    job_id: uuid.UUID
    task: str


@dataclass(frozen=True, slots=True)
class JobFinished(Event):
    """A claimed job's outcome was recorded (or dropped by fencing), or the job was cancelled."""

    job_id: uuid.UUID
    task: str


@dataclass(frozen=True, slots=True)
class Completed(JobFinished):
    """The job returned: ``complete``."""


@dataclass(frozen=True, slots=True)
class Retried(JobFinished):
    """The job raised or timed out, and runs again after its backoff."""

    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class Failed(JobFinished):
    """The job raised or timed out, for good."""

    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class Cancelled(JobFinished):
    """The job was cancelled (``cancel()``) while it ran here."""


@dataclass(frozen=True, slots=True)
class Rescued(Event):
    """This worker put back the jobs of workers whose heartbeat lapsed."""

    jobs: int


@dataclass(frozen=True, slots=True)
class OutageBegan(Event):
    """A service met a database fault (db.faults): the worker retries with backoff (worker.outage)."""

    kind: str
    service: str
    #: the fault: "<exception type>: <message>"
    error: str = ""


@dataclass(frozen=True, slots=True)
class Recovered(Event):
    """Every service that met a fault succeeded since: the outage ended."""

    seconds: float
    #: the kind of the outage that ended (OutageBegan.kind)
    kind: str = ""


@dataclass(frozen=True, slots=True)
class ServerAnswered(Event):
    """A probe found the server back during an outage: pauses end at once."""


@dataclass(frozen=True, slots=True)
class HeartbeatRecorded(Event):
    """This worker's heartbeat was recorded."""


@dataclass(frozen=True, slots=True)
class Listening(Event):
    """The listener LISTENs (again) on the schema's channel."""


@dataclass(frozen=True, slots=True)
class TickFired(Event):
    """The scheduler fired a periodic task's tick that created a job or deduped into one."""

    task: str
    tick: datetime
    job_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Pruned(Event):
    """A background pruning deleted ``deleted`` finished jobs."""

    deleted: int


class Count:
    """How many times something happened, and a way to await a number of them."""

    __slots__ = ("_changed", "count")

    def __init__(self) -> None:
        self.count = 0
        self._changed: asyncio.Event | None = None

    def add(self, n: int = 1) -> None:
        self.count += n
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_for(self, count: int, seconds: float | None = WAIT_SECONDS) -> None:
        """Returns once ``count`` is reached; raises TimeoutError after ``seconds`` (None: never)."""
        async with asyncio.timeout(seconds):
            while self.count < count:
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()


Handler = Callable[[Any], object]


class Events:
    """One hub of typed events: ``emit`` calls the subscribers of the event's kind and of the
    kinds it derives from, and counts it under each."""

    def __init__(self) -> None:
        self._handlers: dict[type[Event], list[Handler]] = {}
        self._counts: dict[type[Event], Count] = {}
        # per emitted type: its kinds (the type and its bases up to Event), computed once
        self._kinds: dict[type[Event], tuple[type[Event], ...]] = {}

    def subscribe(self, kind: type[E], handler: Callable[[E], object]) -> Callable[[], None]:
        """Calls ``handler`` with each event of ``kind`` (subclasses included) from now on;
        returns the function that unsubscribes it."""
        handlers = self._handlers.setdefault(kind, [])
        handlers.append(handler)
        return lambda: handlers.remove(handler)

    def emit(self, event: Event) -> None:
        kinds = self._kinds.get(type(event))
        if kinds is None:
            kinds = self._kinds[type(event)] = tuple(
                k for k in type(event).__mro__ if isinstance(k, type) and issubclass(k, Event) and k is not Event
            )
        for kind in kinds:
            self.counter(kind).add()
            handlers = self._handlers.get(kind)
            if handlers:
                for handler in tuple(handlers):
                    try:
                        handler(event)
                    except Exception:  # a subscriber's bug: the others, and the worker, go on
                        logger.exception("a subscriber of %s raised on %r", kind.__name__, event)

    def counter(self, kind: type[Event]) -> Count:
        found = self._counts.get(kind)
        if found is None:
            found = self._counts[kind] = Count()
        return found

    def count(self, kind: type[Event]) -> int:
        """How many events of ``kind`` (subclasses included) were emitted so far."""
        return self.counter(kind).count

    async def wait_for(self, kind: type[Event], count: int, seconds: float | None = WAIT_SECONDS) -> None:
        """Returns once ``count`` events of ``kind`` were emitted in all (since the hub was made);
        raises TimeoutError after ``seconds`` (None: never)."""
        await self.counter(kind).wait_for(count, seconds)

    async def next(self, kind: type[Event]) -> None:
        """Returns at the next event of ``kind`` (however long that takes)."""
        counter = self.counter(kind)
        await counter.wait_for(counter.count + 1, None)
