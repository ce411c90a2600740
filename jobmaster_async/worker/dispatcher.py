"""The dispatcher behind ``run_forever``: claims jobs into free slots when woken by NOTIFY (or a
slow safety poll), runs them, and records their outcomes in batches, next to a listener, a
heartbeat and a rescuer. Graceful on stop, cancellation and SIGTERM; survives database restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import anyio
import asyncpg

from ..db.connection import connect
from ..db.pool import Pool
from ..db.sql import Catalogue
from .claimer import Claimer
from .executors import DaemonThreadPool, Outcome, run_task
from .outcomes import Claim
from .signals import Signal

__all__ = ("TRANSIENT_ERRORS", "Backend", "Dispatcher", "DispatcherSettings")

logger = logging.getLogger(__name__)

#: Outcomes recorded per statement at most: complete_jobs() finds each job's values in the batch
#: arrays by position (array_position), so a statement's cost grows with the square of its batch.
RECORD_BATCH = 100

#: Errors that mean "the database is away for now": retried with backoff, never fatal.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
)


class Backend(Protocol):
    """What the dispatcher needs from JobMaster."""

    sql: Catalogue
    dsn: str
    connect_kwargs: dict[str, Any]
    worker_id: uuid.UUID
    threads: DaemonThreadPool
    claimer: Claimer

    async def pool(self) -> Pool: ...
    async def claim(self, limit: int, units: int) -> list[Claim]: ...
    async def record(self, outcomes: list[tuple[Claim, Outcome]]) -> set[uuid.UUID]: ...
    async def beat(self) -> None: ...
    async def claimable_task_ids(self) -> list[int]: ...


@dataclass(frozen=True)
class DispatcherSettings:
    concurrency: int
    system_process_units: int
    grace_period: float
    poll_interval: float
    heartbeat_interval: float
    rescue_interval: float
    handle_signals: bool


class _Outage:
    """Logs a failing component once per outage, and its recovery."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self.delay = 0.1

    def failed(self, exc: BaseException) -> float:
        """Logs (once) and returns the seconds to wait before the next try."""
        if self.since is None:
            self.since = time.monotonic()
            logger.warning(
                "%s: database unreachable (%s: %s); retrying with backoff", self.what, type(exc).__name__, exc
            )
        else:
            logger.debug("%s still failing: %s", self.what, exc)
        delay, self.delay = self.delay, min(self.delay * 2, 10.0)
        return delay * random.uniform(0.8, 1.2)

    def ok(self) -> None:
        if self.since is not None:
            logger.warning("%s: database reachable again after %.1fs", self.what, time.monotonic() - self.since)
            self.since = None
        self.delay = 0.1


class Dispatcher:
    """One ``run_forever`` call."""

    def __init__(self, backend: Backend, settings: DispatcherSettings, claimed: Signal, finished: Signal) -> None:
        self.backend = backend
        self.settings = settings
        self.claimed = claimed
        self.finished = finished
        self._stopping = False
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running: dict[uuid.UUID, tuple[asyncio.Task[None], Claim]] = {}
        self._user_cancelled: set[uuid.UUID] = set()
        self._held_slots = 0  # slots of abandoned threads still running
        self._held_units = 0
        self._outcomes: list[tuple[Claim, Outcome]] = []
        self._outcomes_ready = asyncio.Event()
        self._recording = asyncio.Lock()
        self._background: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop  # the running loop, from run() on

    # -- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming and shut down gracefully."""
        if not self._stopping:
            logger.info("worker %s stopping: no new jobs are claimed", self.backend.worker_id)
        self._stopping = True
        self._wake.set()

    def _free_slots(self) -> tuple[int, int]:
        units = sum(c.definition.process_units for _, c in self._running.values()) + self._held_units
        return (
            self.settings.concurrency - len(self._running) - self._held_slots,
            self.settings.system_process_units - units,
        )

    # -- the main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        logger.info(
            "worker %s started (concurrency %d, schema %s)",
            self.backend.worker_id,
            self.settings.concurrency,
            self.backend.sql.schema,
        )
        try:
            async with anyio.create_task_group() as services:
                services.start_soon(self._listen)
                services.start_soon(self._heartbeat_loop)
                services.start_soon(self._rescue_loop)
                services.start_soon(self._record_loop)
                if self.settings.handle_signals:
                    services.start_soon(self._signal_loop)
                await self._dispatch_loop()
                services.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
            logger.info("worker %s stopped", self.backend.worker_id)

    async def _dispatch_loop(self) -> None:
        outage = _Outage("claiming jobs")
        await self.backend.beat()
        while not self._stopping:
            self._wake.clear()
            slots, units = self._free_slots()
            timeout: float | None = None  # full: wait until a slot frees
            if slots > 0:
                try:
                    claims = await self.backend.claim(slots, units)
                except TRANSIENT_ERRORS as exc:
                    await self._sleep(outage.failed(exc))
                    continue
                outage.ok()
                for claim in claims:
                    self._start(claim)
                if claims:
                    self.claimed.fire(len(claims))
                if len(claims) == slots:
                    continue  # there may be more: claim again as soon as a slot frees
                timeout = await self._idle_timeout()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _idle_timeout(self) -> float:
        """The jittered safety poll, or sooner if a retry falls due before it."""
        timeout = self.settings.poll_interval * random.uniform(0.8, 1.2)
        claimer = self.backend.claimer
        if claimer.due_in_known:  # the last claim said it
            seconds = claimer.due_in
        else:
            try:
                pool = await self.backend.pool()
                task_ids = await self.backend.claimable_task_ids()
                seconds = await pool.fetchval(self.backend.sql["seconds_to_next_run"], task_ids)
            except TRANSIENT_ERRORS:
                return timeout
        if seconds is not None:
            timeout = min(timeout, max(seconds, 0.0) + 0.005)
        return timeout

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait() if self._stopping else self._wake.wait(), seconds)

    # -- running jobs ----------------------------------------------------------------------------

    def _start(self, claim: Claim) -> None:
        # the loop's own create_task: asyncio.create_task looks the loop up, and on Python 3.11
        # every lookup is a getpid() system call
        task = self._loop.create_task(self._run_job(claim), name=f"job {claim.job_id}")
        self._running[claim.job_id] = (task, claim)

    async def _run_job(self, claim: Claim) -> None:
        started = time.monotonic()
        try:
            outcome = await run_task(
                claim.definition,
                claim.arguments,
                self.backend.threads,
                lambda f: self._hold_slot(claim, f),
                self._loop,
            )
        except asyncio.CancelledError:
            if claim.job_id in self._user_cancelled:
                self._user_cancelled.discard(claim.job_id)
                logger.info("job %s (%s) cancelled", claim.job_id, claim.definition.key)
                self._running.pop(claim.job_id, None)
                self.finished.fire()
                self._wake.set()
                return
            raise  # shutdown: the claim is released by _shutdown
        self._outcomes.append((claim, outcome))
        self._outcomes_ready.set()
        self._running.pop(claim.job_id, None)
        self._wake.set()
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "job %s (%s) %s in %.3fs%s",
                claim.job_id,
                claim.definition.key,
                "done" if outcome.ok else "failed",
                time.monotonic() - started,
                "" if outcome.ok else f": {outcome.error_type}: {outcome.message}",
                extra={"job_id": str(claim.job_id)},
            )

    def _hold_slot(self, claim: Claim, future: asyncio.Future[Any]) -> None:
        """A cancelled job's thread runs on: it keeps its slot (and, marked abandoned in the
        database, its process_limit count) until it returns."""
        if claim.job_id not in self._user_cancelled:
            return  # shutting down: nothing to hold
        self._held_slots += 1
        self._held_units += claim.definition.process_units
        self._spawn(self._set_abandoned(claim, True))

        def released(_: asyncio.Future[Any]) -> None:
            self._held_slots -= 1
            self._held_units -= claim.definition.process_units
            self._spawn(self._set_abandoned(claim, False))
            self._wake.set()

        future.add_done_callback(released)

    async def _set_abandoned(self, claim: Claim, abandoned: bool) -> None:
        with contextlib.suppress(*TRANSIENT_ERRORS):
            pool = await self.backend.pool()
            await pool.execute(self.backend.sql["set_abandoned"], claim.job_id, abandoned)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- recording outcomes ----------------------------------------------------------------------

    async def _record_loop(self) -> None:
        outage = _Outage("recording outcomes")
        while True:
            await self._outcomes_ready.wait()
            self._outcomes_ready.clear()
            try:
                await self._flush()
            except TRANSIENT_ERRORS as exc:
                await asyncio.sleep(outage.failed(exc))
                self._outcomes_ready.set()
                continue
            outage.ok()

    async def _flush(self) -> None:
        """Records the buffered outcomes, at most RECORD_BATCH per statement, until none is left;
        on failure the unrecorded ones stay buffered."""
        async with self._recording:
            while self._outcomes:
                batch, self._outcomes = self._outcomes[:RECORD_BATCH], self._outcomes[RECORD_BATCH:]
                try:
                    await self.backend.record(batch)
                except BaseException:
                    self._outcomes[:0] = batch
                    raise
                self.finished.fire(len(batch))

    # -- the listener ----------------------------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload.startswith("cancel:"):
            with contextlib.suppress(ValueError):
                job_id = uuid.UUID(payload[len("cancel:") :])
                running = self._running.get(job_id)
                if running is not None:
                    self._user_cancelled.add(job_id)
                    running[0].cancel()
            return
        self._wake.set()

    async def _listen(self) -> None:
        outage = _Outage("LISTEN connection")
        channel = self.backend.sql.channel
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self.backend.dsn, self.backend.connect_kwargs)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(channel, self._on_notify)
                outage.ok()
                self._wake.set()  # catch up on anything notified while we were not listening
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self.settings.poll_interval)
                    if not lost.is_set():
                        await conn.execute("SELECT 1", timeout=10)  # is the connection still alive?
                raise ConnectionError("LISTEN connection closed")
            except TRANSIENT_ERRORS as exc:
                await asyncio.sleep(outage.failed(exc))
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()

    # -- heartbeat and rescue --------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        outage = _Outage("heartbeat")
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await self.backend.beat()
                outage.ok()
            except TRANSIENT_ERRORS as exc:
                outage.failed(exc)

    async def _rescue_loop(self) -> None:
        outage = _Outage("rescuer")
        while True:
            await asyncio.sleep(self.settings.rescue_interval * random.uniform(0.5, 1.0))
            try:
                pool = await self.backend.pool()
                rescued = await pool.fetchval(self.backend.sql["rescue_jobs"])
                outage.ok()
            except TRANSIENT_ERRORS as exc:
                outage.failed(exc)
                continue
            if rescued:
                logger.warning("rescued %d jobs of workers whose heartbeat lapsed", rescued)

    async def _signal_loop(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stopping:
                    logger.warning("second %s: shutting down without waiting for running jobs", signum.name)
                    self.settings = replace(self.settings, grace_period=0.0)
                    for task, _ in list(self._running.values()):
                        task.cancel()
                else:
                    logger.info("%s received: shutting down gracefully", signum.name)
                    self.stop()

    # -- shutdown --------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Lets running jobs finish within the grace period, puts the rest back to waiting,
        records every outcome, and forgets this worker."""
        self._stopping = True
        self._stopped.set()
        async with anyio.create_task_group() as keepalive:
            keepalive.start_soon(self._heartbeat_loop)
            tasks = [task for task, _ in self._running.values()]
            if tasks:
                logger.info("waiting up to %gs for %d running jobs", self.settings.grace_period, len(tasks))
                await asyncio.wait(tasks, timeout=self.settings.grace_period)
            leftover = [(task, claim) for task, claim in self._running.values() if not task.done()]
            for task, _ in leftover:
                task.cancel()
            if leftover:
                await asyncio.wait([task for task, _ in leftover])
                await self._release([claim for _, claim in leftover])
            await self._flush_until_done()
            keepalive.cancel_scope.cancel()
        with contextlib.suppress(*TRANSIENT_ERRORS):
            pool = await self.backend.pool()
            await pool.execute(self.backend.sql["remove_worker"], self.backend.worker_id)

    async def _release(self, claims: list[Claim]) -> None:
        logger.warning("putting %d unfinished jobs back to waiting", len(claims))
        for _ in range(20):
            try:
                pool = await self.backend.pool()
                await pool.fetchval(
                    self.backend.sql["release_jobs"],
                    self.backend.worker_id,
                    [c.job_id for c in claims],
                    [c.attempts for c in claims],
                )
                return
            except TRANSIENT_ERRORS as exc:
                logger.warning("releasing jobs failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
        logger.error("could not put jobs back; the rescuer will once this worker's heartbeat lapses")

    async def _flush_until_done(self) -> None:
        for _ in range(20):
            try:
                await self._flush()
                return
            except TRANSIENT_ERRORS as exc:
                logger.warning("recording outcomes failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
        logger.error(
            "could not record %d outcomes; their jobs are rescued once this worker's heartbeat lapses",
            len(self._outcomes),
        )
