"""What a worker of this process does with the database: find its tasks, heartbeat, claim, record
outcomes, and the pop_job path. Shared by run_forever (worker.dispatcher) and JobMaster.pop_job;
JobMaster keeps only the public API.

Its events (events.py: heartbeats, outages, rescues...) go to the JobMaster's hub. pop_job's
heartbeat runs from the first job popped until the last one executed: no caller's task group
lives that long, so it runs in a task group of its own (worker.services.Detached).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence

import asyncpg

from .. import lifecycle, tracing
from ..db.store import Store
from ..events import Events, HeartbeatRecorded
from ..jobs import Job, JobStatus, PoppedJob
from ..settings import JobMasterSettings
from ..tasks import Registry, TaskDefinition
from .executors import DaemonThreadPool, Outcome, OutcomeLimits, run_task
from .maintenance import Heartbeat, Maintenance
from .outage import Outage, log_outages
from .outcomes import Claim, log_outcome, outcome_name, record_outcomes, retry_delay
from .pruner import Pruner
from .services import Detached

__all__ = ("Worker",)

logger = logging.getLogger(__name__)


class Worker:
    """This process's worker (one worker id, one heartbeat row): finds its tasks, heartbeats,
    claims, runs what it claimed (run_task) and records the outcomes; the dispatcher drives it."""

    def __init__(self, store: Store, settings: JobMasterSettings, events: Events, registry: Registry) -> None:
        #: the tasks this worker runs (JobMaster(registry=...))
        self.registry = registry
        self.store = store
        self.settings = settings
        self.events = events
        self.worker_id = uuid.uuid4()
        self.node = socket.gethostname()
        self.threads = DaemonThreadPool(32, OutcomeLimits(max_result_bytes=settings.max_result_bytes))
        #: the database faults of this worker (run_forever starts it afresh: Outage.reset)
        log_outages(events)  # first: the log says an outage before anyone reacts to it
        self.outage = Outage(events, probe=lambda: self.store.probe())  # looked up at each probe
        self.maintenance = Maintenance(
            settings, beat=self.beat, rescue=store.rescue_jobs, last_beat=lambda: self.last_beat, events=events
        )
        #: run_forever's background retention (one worker of a schema at a time)
        self.pruner = Pruner(settings.prune_interval, store.prune_jobs_if_free, self.outage)
        self._definitions: dict[int, TaskDefinition] | None = None  # task_id -> definition
        self.registered = False
        self.last_beat = 0.0  # monotonic time of the last heartbeat recorded (HeartbeatRecorded)
        #: run_forever heartbeats on its LISTEN connection (worker.listener): claims do not beat
        self.beats_elsewhere = False
        self._units_in_use = 0
        self.popped = 0  # jobs popped and not yet executed
        self._heartbeat = Detached(Heartbeat(self.maintenance, self.outage), "jobmaster-heartbeat")
        self._too_large_logged: set[str] = set()

    def forget_definitions(self) -> None:
        """After a deploy: task ids are read again."""
        self._definitions = None

    async def stop_heartbeat(self) -> None:
        await self._heartbeat.stop()

    async def definitions(self) -> dict[int, TaskDefinition]:
        """task_id -> definition, for the tasks registered here and deployed."""
        if self._definitions is None:
            rows = await self.store.task_ids()
            found: dict[int, TaskDefinition] = {}
            for row in rows:
                definition = self.registry.get(row["type_key"], row["task_key"])
                if definition is not None:
                    found[row["task_id"]] = definition
            missing = {d.key for d in self.registry} - {d.key for d in found.values()}
            if missing:
                logger.warning("tasks registered but not deployed (call deploy()): %s", ", ".join(sorted(missing)))
            self._definitions = found
        return self._definitions

    async def registered_task_ids(self) -> list[int]:
        """The tasks registered here and deployed (their schedules are this worker's to fire)."""
        return list(await self.definitions())

    async def claimable_task_ids(self) -> list[int]:
        """The tasks this process may claim: registered, deployed, within the units budget."""
        ids = []
        for task_id, definition in (await self.definitions()).items():
            if definition.process_units > self.settings.system_process_units:
                if definition.key not in self._too_large_logged:
                    self._too_large_logged.add(definition.key)
                    logger.warning(
                        "task %s needs %d process units, more than this process's %d: never claimed here",
                        definition.key,
                        definition.process_units,
                        self.settings.system_process_units,
                    )
                continue
            ids.append(task_id)
        return ids

    async def beat(self) -> None:
        """Records this worker's heartbeat (registering it on first use), through the pool (the
        pop_job path; run_forever beats on its LISTEN connection: beat_on)."""
        sent = time.monotonic()
        await self.store.heartbeat(self.worker_id, self.node, os.getpid(), self.settings.heartbeat_lapse)
        self._beaten(sent)

    async def beat_on(self, conn: asyncpg.Connection) -> None:
        """Records this worker's heartbeat on ``conn``, a connection of its own (run_forever's
        LISTEN connection), within the round trip's deadline."""
        lapse = self.settings.heartbeat_lapse
        sent = time.monotonic()
        await self.store.heartbeat(self.worker_id, self.node, os.getpid(), lapse, conn)
        self._beaten(sent)

    def _beaten(self, sent: float) -> None:
        """A heartbeat sent at ``sent`` (monotonic) was recorded. The database dates it from its
        transaction's start, so the worker's view of its own heartbeat is dated from the send,
        never fresher than the database's (a slow heartbeat must not shift the cut-off at half the
        lapse past another worker's rescue)."""
        self.registered = True
        self.last_beat = sent
        self.events.emit(HeartbeatRecorded())

    async def claim(self, limit: int, units: int) -> list[Claim]:
        """Claims up to ``limit`` runnable jobs within ``units`` free process units."""
        task_ids = await self.claimable_task_ids()
        if not task_ids or limit <= 0:
            return []
        stale = not self.registered or time.monotonic() - self.last_beat > self.settings.heartbeat_interval
        if stale and not self.beats_elsewhere:
            await self.beat()  # a fresh heartbeat before holding jobs: never claimed by a 'dead' worker
        rows = await self.store.claim(self.worker_id, task_ids, limit, units)
        definitions = await self.definitions()
        return [
            Claim(
                job_id=row["job_id"],
                definition=definitions[row["task_id"]],
                priority=row["priority"],
                arguments=row["arguments"],
                attempts=row["attempts"],
                tries=row["tries"],
                trace_context=row["trace_context"],
            )
            for row in rows
        ]

    async def pop_job(self) -> PoppedJob | None:
        """JobMaster.pop_job."""
        await self.maintenance.rescue_if_due()
        claims = await self.claim(1, self.settings.system_process_units - self._units_in_use)
        if not claims:
            return None
        claim = claims[0]
        self._units_in_use += claim.definition.process_units
        self.popped += 1
        self._heartbeat.start()
        job = PoppedJob(
            job_id=claim.job_id,
            type_key=claim.definition.type_key,
            task_key=claim.definition.task_key,
            priority=claim.priority,
            arguments=claim.arguments,
            status=JobStatus.RUNNING,
            attempts=claim.attempts,
            max_attempts=lifecycle.max_attempts(claim.attempts, claim.tries, claim.definition.retries),
            worker_id=self.worker_id,
            trace_context=claim.trace_context,
            _executor=lambda j: self._execute_popped(j, claim),
        )
        return job

    async def _execute_popped(self, job: PoppedJob, claim: Claim) -> None:
        recorded = False
        # the attempt's span (None: no tracing), current in the caller's task and the task's thread
        span = tracing.start_run(claim.definition.key, claim.job_id, claim.attempts, claim.trace_context)
        try:
            started = time.monotonic()
            outcome = await run_task(claim.definition, claim.arguments, self.threads)
            backoff = self.settings.retry_backoff
            if span is not None:
                ended, span = span, None
                ended.end(outcome_name(claim, outcome, backoff), outcome.error_type, outcome.message, outcome.traceback)
            log_outcome(claim, outcome, time.monotonic() - started, backoff)
            await self.record([(claim, outcome)])
            recorded = True
            self._apply(job, claim, outcome)
        finally:
            if span is not None:  # cancelled while the task ran: the job is handed back
                span.end("released")
            self._units_in_use -= claim.definition.process_units
            self.popped -= 1
            if not recorded:  # cancelled: hand the job back rather than leave it running
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release_jobs(self.worker_id, [claim.job_id], [claim.attempts]))
            if self.popped == 0:
                self._heartbeat.cancel()

    def _apply(self, job: Job, claim: Claim, outcome: Outcome) -> None:
        if outcome.ok:
            job.status, job.result = JobStatus.COMPLETE, outcome.result
        else:
            retrying = retry_delay(claim, outcome, self.settings.retry_backoff) is not None
            job.status = JobStatus.WAITING if retrying else JobStatus.FAILED
            job.error_type, job.message, job.traceback = outcome.error_type, outcome.message, outcome.traceback

    async def record(self, outcomes: Sequence[tuple[Claim, Outcome]]) -> set[uuid.UUID]:
        """Records outcomes of claimed jobs; returns the ids recorded (fencing drops the others)."""
        return await record_outcomes(self.store, self.worker_id, outcomes, self.settings.retry_backoff)
