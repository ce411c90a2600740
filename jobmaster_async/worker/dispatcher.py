"""The dispatcher behind ``run_forever``: keeps the slots, claims jobs into free ones when woken
(by the listener's NOTIFY, a slot freed, or a slow safety poll), runs them, and shuts down
gracefully on stop, cancellation and SIGTERM. Its services run beside it: the listener
(worker.listener), the recorder of outcomes (worker.recorder), heartbeat and rescue
(worker.maintenance), the scheduler of periodic tasks (worker.scheduler) and background
retention (worker.pruner).

Every service has the one shape of worker.services (``run(*, task_status)``, in the dispatcher's
task group) and says what happened through the JobMaster's events (events.py), to which the
dispatcher subscribes while it runs: notifications (wake, cancel, schedules), outcomes recorded
(their slots free), an outage begun or ended.

It never dies of the database: every service retries database faults (db.faults) with backoff,
and the worker reports an outage once (worker.outage). Only a bug of ours ends it, with its
traceback.

After an outage it reconciles: jobs the database says it holds but it does not know of (a claim
committed whose answer was lost, an outcome a crashed server lost) go back to waiting.

It heartbeats on the LISTEN connection (worker.listener), never through the pool. A worker that
could not heartbeat for half its ``heartbeat_lapse`` stops claiming, cancels its async jobs,
kills its process jobs and puts them back as soon as it can: others may rescue them once the
lapse passed, and none of them may be running here then. Thread jobs cannot be stopped: they run
on, and may run twice if the worker stays cut off past the lapse. It claims again once a
heartbeat is recorded. That side is in worker.cutoff; signals and the shutdown in worker.shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from typing import Any

import anyio
import anyio.abc

from .. import tracing
from ..events import Cancelled, Claimed, JobFinished, OutageBegan, Recovered
from .cutoff import CutOff
from .executors import run_task
from .listener import CancelJob, Listener, SchedulesChanged, Wake
from .maintenance import Rescuer
from .outage import Retrier
from .outcomes import Claim, log_outcome, outcome_name
from .recorder import Recorder
from .scheduler import Scheduler
from .services import Spawned, spawn, start
from .shutdown import Backend, RunOptions

__all__ = ("Backend", "Dispatcher", "RunOptions")

logger = logging.getLogger(__name__)

#: Seconds an idle dispatcher sleeps past the earliest due time it knows of (timers may fire a
#: hair early; too early costs one more claim, no correctness).
DUE_MARGIN = 0.001
#: The claiming service's name, as the outage knows it.
CLAIMING = "claiming jobs"
#: Seconds before claiming again when the last claim saw claimable jobs it could not take (held
#: by other claimers, or by a process_limit).
CONTENDED = 0.005


def _sole(exc: BaseException) -> BaseException:
    """anyio's task groups wrap even a single error in a group; run_forever raises it as it is."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Dispatcher(CutOff):
    """One ``run_forever`` call (its heartbeat's side: worker.cutoff; its end: worker.shutdown)."""

    def __init__(self, backend: Backend, options: RunOptions) -> None:
        self.backend = backend
        self.options = options
        self.settings = backend.settings
        self.events = backend.events
        self._wake = asyncio.Event()  # set: claim now (NOTIFY, a slot freed, an outage ended)
        self.outage = backend.outage
        self.listener = Listener(
            backend.store,
            self.outage,
            self.events,
            self.settings.connection_timeout / 2,
            beat=self._beat,
            beat_interval=self.settings.heartbeat_interval,
        )
        self.recorder = Recorder(backend.record, self.outage, self.settings.retry_backoff)
        self.scheduler = Scheduler(backend.store.ticks, backend.registered_task_ids, self.outage)
        self.rescuer = Rescuer(backend.maintenance, self.outage, self._may_rescue)
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._exiting = asyncio.Event()  # the process ends after this run: threads cannot be waited for
        self._running: dict[uuid.UUID, tuple[asyncio.Task[None], Claim]] = {}
        self._held: dict[uuid.UUID, Claim] = {}  # claimed until recorded or put back
        self._user_cancelled: set[uuid.UUID] = set()
        self._held_slots = 0  # slots of abandoned threads still running
        self._held_units = 0
        self._reconciled = self.events.count(Recovered)  # outages reconciled after
        self._started = 0.0  # monotonic time run() began
        self._cut_off = False  # no heartbeat for heartbeat_lapse / 2: no claims, jobs stopped
        self._back_since: float | None = None  # monotonic time it heartbeat again after a cut-off
        self._stopped: dict[uuid.UUID, Claim] = {}  # stopped when cut off, not yet put back
        self._putting_back: set[Spawned] = set()
        self._background: set[Spawned] = set()  # abandoned threads' marks
        self._group: anyio.abc.TaskGroup  # where those run, from run() on
        self._loop: asyncio.AbstractEventLoop  # the running loop, from run() on

    # -- control ---------------------------------------------------------------------------------

    def stop(self, exiting: bool = False) -> None:
        """Stop claiming and shut down gracefully; ``exiting``: the process ends right after."""
        if exiting:
            self._exiting.set()
        if not self._stopping:
            logger.info("worker %s stopping: no new jobs are claimed", self.backend.worker_id)
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()

    def _outage_ended(self, _event: Recovered) -> None:
        """Catch up on what may have been notified meanwhile: claim, and read the schedules."""
        self._wake.set()
        self.scheduler.reload()

    def _suspect_connections(self, _event: OutageBegan) -> None:
        """An outage began: close the idle connections, ping the LISTEN one now, and claim: the
        outage lasts until a claim went through too (a claim on a connection the fault cut may be
        under way, and the LISTEN connection alone comes back at once)."""
        self.backend.store.discard_idle_connections()
        self.listener.check_now()
        self.outage.failed(CLAIMING, ConnectionError("an outage began: claiming is suspect until a claim succeeds"))
        self._wake.set()

    def _free_slots(self) -> tuple[int, int]:
        """Slots and units not taken. A slot is taken from the claim until the job's outcome is
        recorded (or the job is put back): the database never sees more jobs ``running`` for this
        worker than its concurrency, even while finished jobs wait for their batch."""
        units = sum(c.definition.process_units for c in self._held.values()) + self._held_units
        return (
            self.options.concurrency - len(self._held) - self._held_slots,
            self.settings.system_process_units - units,
        )

    # -- the main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        self.backend.beats_elsewhere = True
        self.outage.reset()
        logger.info(
            "worker %s started (concurrency %d, schema %s)",
            self.backend.worker_id,
            self.options.concurrency,
            self.backend.store.sql.schema,
        )
        subscriptions = [
            self.events.subscribe(Wake, self._on_wake),
            self.events.subscribe(CancelJob, self._on_cancel),
            self.events.subscribe(SchedulesChanged, self._on_schedules_changed),
            self.events.subscribe(JobFinished, self._on_finished),
            self.events.subscribe(OutageBegan, self._suspect_connections),
            self.events.subscribe(Recovered, self._outage_ended),
        ]
        with self._signals_handled():
            try:
                # the group of the work the dispatcher starts and may end alone (jobs put back,
                # abandoned threads' marks): it outlives the services, to the end of the shutdown
                async with anyio.create_task_group() as self._group:
                    try:
                        await self._serve()
                    finally:
                        with anyio.CancelScope(shield=True):
                            try:
                                await self._shutdown()
                            finally:
                                for spawned in self._putting_back | self._background:
                                    spawned.cancel()
            except Exception as exc:
                raise _sole(exc) from None  # the group wrapped the error _serve raised (and logged)
            finally:
                for unsubscribe in subscriptions:
                    unsubscribe()
                self.backend.beats_elsewhere = False
                logger.info("worker %s stopped", self.backend.worker_id)

    async def _serve(self) -> None:
        """The services and the dispatch loop, until stopped (or cancelled)."""
        try:
            async with anyio.create_task_group() as services:
                # the listener heartbeats too
                await start(services, self.listener, self.rescuer, self.recorder, self.scheduler, self.backend.pruner)
                services.start_soon(self._watch_heartbeat)
                await self._dispatch_loop()
                services.cancel_scope.cancel()
        except Exception as exc:
            error = _sole(exc)
            logger.critical(
                "worker %s failed on an error that is not a database fault (a bug?)",
                self.backend.worker_id,
                exc_info=error,
            )
            raise error from None

    async def _dispatch_loop(self) -> None:
        claiming = Retrier(self.outage, CLAIMING)
        while not self._stopping:
            self._wake.clear()
            try:
                timeout = await self._claim_into_free_slots()
            except Exception as exc:
                await self._pause(claiming.failed(exc))
                continue
            claiming.ok()
            if timeout != 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def _claim_into_free_slots(self) -> float | None:
        """Claims jobs for the free slots; returns how long to wait for a wake-up (0: claim again
        at once, there may be more; None: until a slot frees)."""
        if not self._heartbeating():
            return None  # woken by the next heartbeat
        if self._reconciled != self.events.count(Recovered):
            await self._reconcile()
        slots, units = self._free_slots()
        if slots <= 0:
            return None
        # at most half the slots per claim: the outcomes of one half are recorded while the
        # other half is claimed (a slot frees only once its outcome is recorded)
        slots = min(slots, -(-self.options.concurrency // 2))
        claims = await self.backend.claim(slots, units)
        for claim in claims:
            self._start(claim)
        if self._cut_off:  # while the claim was on its way
            self._stop_jobs(claims)
        for claim in claims:
            self.events.emit(Claimed(claim.job_id, claim.definition.key))
        if len(claims) == slots:
            return 0
        return await self._idle_timeout()

    async def _idle_timeout(self) -> float:
        """The jittered safety poll, or sooner if a job falls due before it (a scheduled job, a
        retry after its backoff): the earliest time the last claim or the database said. That
        time was measured at the server before its answer arrived, so waking at it is waking a
        little after it; a job claimable now but held by another claimer is tried again in
        CONTENDED seconds."""
        timeout = self.settings.poll_interval * random.uniform(0.8, 1.2)
        seconds = await self.backend.store.seconds_to_next_run(await self.backend.claimable_task_ids())
        if seconds is not None:
            timeout = min(timeout, seconds + DUE_MARGIN if seconds > 0 else CONTENDED)
        return timeout

    async def _pause(self, seconds: float) -> None:
        """A backoff pause, cut short by stop() and by the server answering again (worker.outage),
        not by wake-ups (they keep coming while the database fails, and must not defeat the
        backoff)."""
        await self.outage.pause(seconds, self._stop_requested)

    async def _reconcile(self) -> None:
        """After an outage: puts back the jobs the database says this worker holds but it does
        not know of. A claim may have committed while its answer was lost (a killed backend, a
        deadline passed), and a crashed server may have lost a recorded outcome (when commits do
        not wait for the WAL flush); either would leave its job running for good, held by a worker
        that heartbeats. The dispatcher is the only claimer, and it is here, not claiming."""
        count = self.events.count(Recovered)
        held = await self.backend.store.held_jobs(self.backend.worker_id)
        unknown = [(job_id, attempts) for job_id, attempts in held if job_id not in self._held]
        if unknown:
            logger.warning(
                "%d jobs were held by this worker without its knowing (a claim whose answer was lost in "
                "the outage, or an outcome the server lost): back to waiting",
                len(unknown),
            )
            await self._release([job_id for job_id, _ in unknown], [attempts for _, attempts in unknown])
        self._reconciled = count

    # -- running jobs ----------------------------------------------------------------------------

    def _start(self, claim: Claim) -> None:
        # the loop's own create_task: asyncio.create_task looks the loop up, and on Python 3.11
        # every lookup is a getpid() system call
        task = self._loop.create_task(self._run_job(claim), name=f"job {claim.job_id}")
        self._running[claim.job_id] = (task, claim)
        self._held[claim.job_id] = claim

    async def _run_job(self, claim: Claim) -> None:
        started = time.monotonic()
        # the attempt's span (None: no tracing), current in this job's task and its thread
        span = tracing.start_run(claim.definition.key, claim.job_id, claim.attempts, claim.trace_context)
        try:
            outcome = await run_task(
                claim.definition,
                claim.arguments,
                self.backend.threads,
                lambda f: self._hold_slot(claim, f),
                self._loop,
            )
        except BaseException as exc:
            user_cancelled = isinstance(exc, asyncio.CancelledError) and claim.job_id in self._user_cancelled
            if span is not None:  # cancelled by the user, or put back by the shutdown
                span.end("cancelled" if user_cancelled else "released")
            if not user_cancelled:
                raise  # shutdown: the claim is released by _shutdown
            self._user_cancelled.discard(claim.job_id)
            logger.info("job %s (%s) cancelled", claim.job_id, claim.definition.key)
            self._running.pop(claim.job_id, None)
            self.events.emit(Cancelled(claim.job_id, claim.definition.key))  # its slot frees
            return
        backoff = self.backend.settings.retry_backoff
        if span is not None:
            span.end(outcome_name(claim, outcome, backoff), outcome.error_type, outcome.message, outcome.traceback)
        self.recorder.add(claim, outcome)
        self._running.pop(claim.job_id, None)  # its slot frees once the outcome is recorded
        log_outcome(claim, outcome, time.monotonic() - started, backoff)

    def _hold_slot(self, claim: Claim, future: asyncio.Future[Any]) -> None:
        """A cancelled job's thread runs on: it keeps its slot (and, marked abandoned in the
        database, its process_limit count) until it returns."""
        if claim.job_id not in self._user_cancelled:
            return  # shutting down: nothing to hold
        self._held_slots += 1
        self._held_units += claim.definition.process_units

        def released(_: asyncio.Future[Any]) -> None:
            self._held_slots -= 1
            self._held_units -= claim.definition.process_units
            self._wake.set()

        future.add_done_callback(released)
        # shielded: the shutdown waits for these marks (until the process is about to end)
        marking = spawn(self._group, lambda: self._mark_abandoned(claim, future, marking), shield=True)
        self._background.add(marking)

    async def _mark_abandoned(self, claim: Claim, thread: asyncio.Future[Any], marking: Spawned) -> None:
        try:
            retrier = Retrier(self.outage, "marking abandoned threads")
            await retrier.run(lambda: self.backend.store.set_abandoned(claim.job_id, True))
            await asyncio.wait([thread])
            await retrier.run(lambda: self.backend.store.set_abandoned(claim.job_id, False))
        finally:
            self._background.discard(marking)

    # -- notifications and recorded outcomes ---------------------------------------------------

    def _on_wake(self, _event: Wake) -> None:
        self._wake.set()

    def _on_cancel(self, event: CancelJob) -> None:
        running = self._running.get(event.job_id)
        if running is not None:
            self._user_cancelled.add(event.job_id)
            running[0].cancel()

    def _on_schedules_changed(self, _event: SchedulesChanged) -> None:
        self.scheduler.reload()

    def _on_finished(self, event: JobFinished) -> None:
        self._held.pop(event.job_id, None)
        self._wake.set()  # its slot is free
