"""What one run_forever call (worker.dispatcher) works with (its backend, its options, its state),
and its end: signals, and the graceful shutdown. Running jobs get
the grace period; thread jobs are held until their threads return (unless the process is about to
end); the rest go back to waiting; every outcome is recorded; the worker's row is removed. A
worker that cannot reach the database meanwhile retries for SHUTDOWN_RETRY_SECONDS, then says so:
another worker rescues those jobs once its heartbeat lapsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import anyio
import asyncpg

from ..db.faults import database_fault
from ..db.ports import WorkerStore
from ..events import Events
from ..settings import JobMasterSettings
from .executors import DaemonThreadPool, Outcome
from .listener import Listener
from .maintenance import Maintenance
from .outage import Outage, Retrier
from .outcomes import Claim
from .pruner import Pruner
from .recorder import Recorder
from .services import Spawned, start

__all__ = ("SHUTDOWN_RETRY_SECONDS", "Backend", "RunOptions", "Shutdown", "in_thread")

logger = logging.getLogger(__name__)

#: How long a stopping worker keeps trying to record outcomes and put jobs back while the
#: database is away; past it, the rescuer of another worker puts them back once this one's
#: heartbeat lapsed.
SHUTDOWN_RETRY_SECONDS = 10.0


class Backend(Protocol):
    """What the dispatcher needs of the worker's database side (worker.backend.Worker)."""

    settings: JobMasterSettings
    worker_id: uuid.UUID
    threads: DaemonThreadPool
    maintenance: Maintenance
    pruner: Pruner
    events: Events
    outage: Outage
    registered: bool
    last_beat: float
    beats_elsewhere: bool

    @property
    def store(self) -> WorkerStore: ...

    async def beat_on(self, conn: asyncpg.Connection) -> None: ...
    async def claim(self, limit: int, units: int) -> list[Claim]: ...
    async def record(self, outcomes: Sequence[tuple[Claim, Outcome]]) -> set[uuid.UUID]: ...
    async def claimable_task_ids(self) -> list[int]: ...
    async def registered_task_ids(self) -> list[int]: ...


@dataclass(frozen=True)
class RunOptions:
    """The arguments of one run_forever call (the rest is the JobMaster's JobMasterSettings)."""

    concurrency: int
    grace_period: float
    handle_signals: bool


def in_thread(claim: Claim) -> bool:
    return not claim.definition.is_async and claim.definition.executor == "thread"


class Shutdown:
    """The state of one run_forever call (worker.dispatcher.Dispatcher sets it), and its end."""

    backend: Backend
    options: RunOptions
    outage: Outage
    listener: Listener
    recorder: Recorder
    _loop: asyncio.AbstractEventLoop
    _wake: asyncio.Event
    _stopping: bool
    _stop_requested: asyncio.Event
    _exiting: asyncio.Event
    _running: dict[uuid.UUID, tuple[asyncio.Task[None], Claim]]
    _held: dict[uuid.UUID, Claim]
    _stopped: dict[uuid.UUID, Claim]
    _putting_back: set[Spawned]
    _background: set[Spawned]

    def stop(self, exiting: bool = False) -> None:
        raise NotImplementedError

    # -- signals ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals_handled(self) -> Any:
        """SIGTERM and SIGINT, from start to the end of the shutdown, when asked to handle them."""
        signals = (signal.SIGTERM, signal.SIGINT) if self.options.handle_signals else ()
        for signum in signals:
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            yield
        finally:
            for signum in signals:
                self._loop.remove_signal_handler(signum)

    def _on_signal(self, signum: signal.Signals) -> None:
        """A signal means the process is about to end: threads cannot outlive it, so thread
        jobs still running after the grace period are put back rather than waited for."""
        if self._stopping:
            logger.warning("second %s: shutting down without waiting for running jobs", signum.name)
            self._exiting.set()
            self.options = replace(self.options, grace_period=0.0)
            for task, _ in list(self._running.values()):
                task.cancel()
        else:
            logger.info("%s received: shutting down gracefully", signum.name)
            self.stop(exiting=True)

    # -- shutdown --------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Lets running jobs finish within the grace period, holds thread jobs until their threads
        return (unless the process is about to end), puts the rest back to waiting, records every
        outcome, and forgets this worker."""
        self._stopping = True
        self._stop_requested.set()
        for spawned in list(self._putting_back):  # their jobs are put back below
            spawned.cancel()
            await spawned.wait()
        async with anyio.create_task_group() as keepalive:
            await start(keepalive, self.listener, self.recorder)  # the listener heartbeats too
            await self._finish_running_jobs()
            await self._until_exiting([m.wait for m in self._background])  # abandoned threads: their marks
            await self._retry_or_give_up("recording outcomes", self.recorder.flush)
            keepalive.cancel_scope.cancel()
        for spawned in list(self._background):
            spawned.cancel()
        try:
            await self.backend.store.remove_worker(self.backend.worker_id)
        except Exception as exc:
            if not database_fault(exc):
                raise
            logger.warning("could not remove this worker's row (%s); it lapses", exc)

    async def _finish_running_jobs(self) -> None:
        tasks = [task for task, _ in self._running.values()]
        if tasks:
            logger.info("waiting up to %gs for %d running jobs", self.options.grace_period, len(tasks))
            await asyncio.wait(tasks, timeout=self.options.grace_period)
        threads = [task for task, claim in self._running.values() if not task.done() and in_thread(claim)]
        if threads and not self._exiting.is_set():
            logger.warning(
                "%d jobs still run in threads, which cannot be stopped: they stay held (the worker "
                "heartbeats) until their threads return",
                len(threads),
            )
            await self._until_exiting([functools.partial(asyncio.wait, [thread]) for thread in threads])
        leftover = [task for task, _ in self._running.values()]
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.wait(leftover)
        # cancelled: no outcome (and those stopped when cut off, not yet put back)
        unfinished = [claim for _, claim in self._running.values()] + list(self._stopped.values())
        if unfinished:
            logger.warning("putting %d unfinished jobs back to waiting", len(unfinished))
            ids, attempts = [c.job_id for c in unfinished], [c.attempts for c in unfinished]
            await self._retry_or_give_up("putting jobs back", lambda: self._release(ids, attempts))

    async def _until_exiting(self, waits: Iterable[Callable[[], Awaitable[object]]]) -> None:
        """Awaits each of ``waits``, or until a signal says the process is about to end."""
        async with anyio.create_task_group() as group:

            async def all_done() -> None:
                for wait in waits:
                    await wait()
                group.cancel_scope.cancel()

            async def exiting() -> None:
                await self._exiting.wait()
                group.cancel_scope.cancel()

            group.start_soon(all_done)
            group.start_soon(exiting)

    async def _release(self, job_ids: list[uuid.UUID], attempts: list[int]) -> None:
        """Puts jobs held by this worker back to waiting, their start not counted."""
        await self.backend.store.release_jobs(self.backend.worker_id, job_ids, attempts)
        for job_id in job_ids:
            self._held.pop(job_id, None)
            self._stopped.pop(job_id, None)
        self._wake.set()  # their slots are free

    async def _retry_or_give_up(self, what: str, operation: Callable[[], Awaitable[None]]) -> None:
        """``operation`` retried for SHUTDOWN_RETRY_SECONDS at most; a worker that gives up says
        so: the jobs concerned are put back by another once its heartbeat lapsed."""
        deadline = time.monotonic() + SHUTDOWN_RETRY_SECONDS
        try:
            await Retrier(self.outage, what).run(operation, deadline=deadline)
        except Exception as exc:
            if not database_fault(exc):
                raise
            logger.error(
                "%s failed for %gs (%s: %s); the jobs concerned are rescued once this worker's heartbeat lapsed",
                what,
                SHUTDOWN_RETRY_SECONDS,
                type(exc).__name__,
                exc,
            )
