"""JobMaster: the entry point. Deploys the schema, inserts, claims, runs and inspects jobs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ParamSpec

import asyncpg

from .arguments import RunAt, as_json, as_json_array, check_insert, refusals_as_errors, when
from .db.connection import DatabaseTarget, dsn_from, opener
from .db.faults import server_not_ready
from .db.sql import Catalogue
from .db.store import Store
from .enqueue import EnqueueOptions
from .errors import (
    ConfigurationError,
    InvalidArguments,
    JobNotFound,
    TaskDefinitionError,
)
from .jobs import ACTIVE_STATUSES, Job, JobStatus, PoppedJob, as_job_id
from .schedules import Cron
from .settings import Settings
from .tasks import TaskDefinition, registry
from .worker.dispatcher import Dispatcher, RunOptions
from .worker.executors import DaemonThreadPool, Outcome, run_task
from .worker.maintenance import Maintenance
from .worker.outage import Backoff, Outage
from .worker.outcomes import Claim, log_outcome, record_outcomes
from .worker.signals import Signal

__all__ = ("JobMaster",)

P = ParamSpec("P")

logger = logging.getLogger(__name__)

#: Seconds a worker waits at start-up for a server that refuses connections (not started yet).
STARTUP_WAIT = 10.0


class JobMaster:
    """A job queue in one PostgreSQL schema.

    ``db_engine`` is a SQLAlchemy ``AsyncEngine`` or ``Engine`` (any PostgreSQL driver: its URL is
    reused with asyncpg) or a DSN string; without it, the ``JOBMASTER_DSN`` environment variable.
    """

    def __init__(
        self,
        db_engine: DatabaseTarget | None = None,
        schema: str = "jobmaster",
        *,
        task_modules: Iterable[str] = (),
        system_process_units: int | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
        pool_size: int | None = None,
        retry_backoff: float | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_lapse: float | None = None,
        poll_interval: float | None = None,
        connection_timeout: float | None = None,
        rescue_interval: float | None = None,
    ) -> None:
        if db_engine is None:
            db_engine = os.environ.get("JOBMASTER_DSN")
            if not db_engine:
                raise ConfigurationError("JobMaster needs db_engine (an engine or DSN) or the JOBMASTER_DSN variable")
        self.dsn = dsn_from(db_engine)
        self.schema = schema
        try:
            self.sql = Catalogue(schema)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        for module in task_modules:
            importlib.import_module(module)
        #: validated once: see settings.Settings
        self.settings = settings = Settings.of(
            system_process_units=system_process_units,
            pool_size=pool_size,
            retry_backoff=retry_backoff,
            heartbeat_interval=heartbeat_interval,
            heartbeat_lapse=heartbeat_lapse,
            poll_interval=poll_interval,
            connection_timeout=connection_timeout,
            rescue_interval=rescue_interval,
        )
        self.connect_kwargs = dict(connect_kwargs or {})
        self.worker_id = uuid.uuid4()
        self.node = socket.gethostname()

        self.threads = DaemonThreadPool(max_workers=32)
        self._open = opener(self.dsn, self.connect_kwargs, settings.connection_timeout)
        #: whether a connection ever opened: before, errors are fatal; after, a worker survives them
        self.connected = False
        self.store = Store(self.sql, self.open_connection, settings.pool_size, settings.connection_timeout)
        self.maintenance = Maintenance(
            settings,
            beat=self.beat,
            rescue=self.store.rescue_jobs,
            last_beat=lambda: self.last_beat,
        )
        self._definitions: dict[int, TaskDefinition] | None = None  # task_id -> definition
        self._registered = False
        self.last_beat = 0.0
        self._units_in_use = 0
        self._popped = 0
        self._heartbeat: asyncio.Task[None] | None = None
        self._too_large_logged: set[str] = set()
        self._dispatcher: Dispatcher | None = None
        self._stop_requested = False
        self._exit_requested = False
        #: fired with the number of jobs claimed / whose outcome was recorded by run_forever
        self.claimed = Signal()
        self.finished = Signal()
        #: fired when run_forever loses the database (or the network) and when it recovered
        self.outages = Signal()
        self.recoveries = Signal()

    # -- lifecycle -------------------------------------------------------------------------------

    async def open_connection(self) -> asyncpg.Connection:
        """A new connection (named after this process, with the JSON codecs and TCP keepalives),
        opened within ``connection_timeout``."""
        conn = await self._open()
        self.connected = True
        return conn

    async def connect(self, wait: float = STARTUP_WAIT) -> None:
        """Start-up: opens a first connection, waiting up to ``wait`` seconds for a server that
        refuses connections (not started yet, or starting up); any other error raises at once
        (a wrong address, password or database name will not fix itself). Does nothing once a
        connection has opened: from then on a worker survives every database fault."""
        if self.connected:
            return
        deadline, backoff = time.monotonic() + wait, Backoff(first=0.2, cap=2.0)
        while True:
            try:
                async with self.store.acquire():
                    return
            except Exception as exc:
                delay = backoff.delay()
                if not server_not_ready(exc) or time.monotonic() + delay > deadline:
                    raise
                logger.info("waiting for the database to accept connections (%s)", exc)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        """Closes the connections (and forgets this worker's heartbeat row)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        await self.store.close(self.worker_id if self._registered and self._popped == 0 else None)
        self._registered = False

    async def __aenter__(self) -> JobMaster:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- deploy ----------------------------------------------------------------------------------

    async def deploy(self, _reset: bool = False, *, prune: bool = False) -> None:
        """Creates or migrates the schema and writes this process's task definitions. Idempotent
        and safe to run from several processes at once. ``_reset=True`` drops every job first;
        ``prune=True`` removes task definitions no longer registered here (and idle)."""
        await self.store.deploy(registry, reset=_reset, prune=prune)
        self._definitions = None
        if _reset:
            self._registered = False

    # -- inserting -------------------------------------------------------------------------------

    async def insert_job(
        self,
        type_key: str,
        task_key: str,
        priority: int = 0,
        arguments: Mapping[str, Any] | None = None,
        *,
        run_at: RunAt = None,
    ) -> uuid.UUID:
        """Inserts a job (validated and deduplicated in SQL) and returns its id, or the id of the
        identical job already waiting, blocked or running (moved earlier if it was to run later
        than ``run_at``). ``run_at``: an aware datetime, or a timedelta from now (the database's
        clock); the job never starts before it."""
        check_insert(type_key, task_key, priority)
        label = f"{type_key}.{task_key}"
        arguments_json, (at, delay) = as_json(label, arguments), when(label, run_at)
        # the common case in one plain statement; dependencies, "ALL", twins and refusals: in full
        job_id = await self.store.insert_job_fast(type_key, task_key, priority, arguments_json, at, delay)
        if job_id is None:
            with refusals_as_errors():
                job_id = await self.store.insert_job(type_key, task_key, priority, arguments_json, at, delay)
        return job_id

    async def insert_jobs(
        self,
        type_key: str,
        task_key: str,
        priority: int = 0,
        arguments: Sequence[Mapping[str, Any]] = (),
        *,
        run_at: RunAt = None,
    ) -> list[uuid.UUID]:
        """Inserts many jobs of one task in one round trip; one id per element, in order. Every
        job is to run at ``run_at`` (as ``insert_job``)."""
        check_insert(type_key, task_key, priority)
        at, delay = when(f"{type_key}.{task_key}", run_at)
        if isinstance(arguments, Mapping | str | bytes) or not isinstance(arguments, Sequence | Iterable):
            raise InvalidArguments(
                f"{type_key}.{task_key}: insert_jobs takes a list of argument mappings, got "
                f"{type(arguments).__name__} (use insert_job for one job)"
            )
        batch = as_json_array(f"{type_key}.{task_key}", list(arguments))
        with refusals_as_errors():
            return await self.store.insert_jobs(type_key, task_key, priority, batch, at, delay)

    async def enqueue(self, task: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> uuid.UUID:
        """Queues a job of ``task`` (a function decorated with ``@task``), its arguments checked
        by your type checker against the function's signature; returns the job id, as
        ``insert_job``. Priority and time: ``jm.options(priority=5, run_at=...).enqueue(...)``."""
        return await self.options().enqueue(task, *args, **kwargs)

    def options(self, *, priority: int = 0, run_at: RunAt = None) -> EnqueueOptions:
        """Options for jobs queued with ``.enqueue(task, ...)`` on the result: their priority, and
        when they are to run (as ``insert_job``'s ``run_at``)."""
        return EnqueueOptions(self.insert_job, priority=priority, run_at=run_at)

    # -- claiming and running --------------------------------------------------------------------

    async def definitions(self) -> dict[int, TaskDefinition]:
        """task_id -> definition, for the tasks registered here and deployed."""
        if self._definitions is None:
            rows = await self.store.task_ids()
            found: dict[int, TaskDefinition] = {}
            for row in rows:
                definition = registry.get(row["type_key"], row["task_key"])
                if definition is not None:
                    found[row["task_id"]] = definition
            missing = {d.key for d in registry} - {d.key for d in found.values()}
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
        """Records this worker's heartbeat (registering it on first use)."""
        await self.store.heartbeat(self.worker_id, self.node, os.getpid(), self.settings.heartbeat_lapse)
        self._registered = True
        self.last_beat = time.monotonic()

    async def claim(self, limit: int, units: int) -> list[Claim]:
        """Claims up to ``limit`` runnable jobs within ``units`` free process units."""
        task_ids = await self.claimable_task_ids()
        if not task_ids or limit <= 0:
            return []
        if not self._registered or time.monotonic() - self.last_beat > self.settings.heartbeat_interval:
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
                max_attempts=row["max_attempts"],
            )
            for row in rows
        ]

    async def pop_job(self) -> PoppedJob | None:
        """Claims the next runnable job (highest priority, then oldest) of a task registered in
        this process; ``await job.execute()`` runs it. The worker heartbeats until then. Every
        ``rescue_interval`` it first puts back the jobs of workers whose heartbeat lapsed, so that
        deployments that only pop (a cron script) recover lost jobs too."""
        await self.maintenance.rescue_if_due()
        claims = await self.claim(1, self.settings.system_process_units - self._units_in_use)
        if not claims:
            return None
        claim = claims[0]
        self._units_in_use += claim.definition.process_units
        self._popped += 1
        self._start_heartbeat()
        job = PoppedJob(
            job_id=claim.job_id,
            type_key=claim.definition.type_key,
            task_key=claim.definition.task_key,
            priority=claim.priority,
            arguments=claim.arguments,
            status=JobStatus.RUNNING,
            attempts=claim.attempts,
            max_attempts=claim.max_attempts,
            worker_id=self.worker_id,
            _executor=lambda j: self._execute_popped(j, claim),
        )
        return job

    async def _execute_popped(self, job: PoppedJob, claim: Claim) -> None:
        recorded = False
        try:
            started = time.monotonic()
            outcome = await run_task(claim.definition, claim.arguments, self.threads)
            log_outcome(claim, outcome, time.monotonic() - started, self.settings.retry_backoff)
            await self.record([(claim, outcome)])
            recorded = True
            self._apply(job, claim, outcome)
        finally:
            self._units_in_use -= claim.definition.process_units
            self._popped -= 1
            if not recorded:  # cancelled: hand the job back rather than leave it running
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release_jobs(self.worker_id, [claim.job_id], [claim.attempts]))
            if self._popped == 0 and self._heartbeat is not None:
                self._heartbeat.cancel()
                self._heartbeat = None

    def _apply(self, job: Job, claim: Claim, outcome: Outcome) -> None:
        if outcome.ok:
            job.status, job.result = JobStatus.COMPLETE, outcome.result
        else:
            retrying = not outcome.final and claim.attempts < claim.max_attempts
            job.status = JobStatus.WAITING if retrying else JobStatus.FAILED
            job.error_type, job.message, job.traceback = outcome.error_type, outcome.message, outcome.traceback

    async def record(self, outcomes: Sequence[tuple[Claim, Outcome]]) -> set[uuid.UUID]:
        """Records outcomes of claimed jobs; returns the ids recorded (fencing drops the others)."""
        return await record_outcomes(self.store, self.worker_id, outcomes, self.settings.retry_backoff)

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None:
            outage = Outage(self.outages, self.recoveries)
            self._heartbeat = asyncio.create_task(self.maintenance.heartbeat_loop(outage), name="jobmaster-heartbeat")

    async def run_forever(
        self,
        concurrency: int = 8,
        *,
        handle_signals: bool = False,
        grace_period: float = 30.0,
    ) -> None:
        """The dispatcher: runs jobs as they become runnable, at most ``concurrency`` at once,
        until ``stop()`` is called or the calling task is cancelled (then running jobs get
        ``grace_period`` seconds to finish and the rest go back to waiting). With
        ``handle_signals``, SIGTERM and SIGINT stop it gracefully (a second one at once)."""
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        if self._dispatcher is not None:
            raise RuntimeError("run_forever is already running on this JobMaster")
        options = RunOptions(concurrency=concurrency, grace_period=grace_period, handle_signals=handle_signals)
        if self.threads.max_workers < concurrency:
            self.threads.max_workers = concurrency
        self._dispatcher = Dispatcher(self, options, self.claimed, self.finished, self.outages, self.recoveries)
        if self._stop_requested:
            self._dispatcher.stop(exiting=self._exit_requested)
        try:
            await self.connect()
            await self._dispatcher.run()
        finally:
            self._dispatcher = None
            self._stop_requested = self._exit_requested = False

    async def stop(self) -> None:
        """Stops ``run_forever`` gracefully: it returns once running jobs are done, or put back
        after the grace period; jobs running in threads (which cannot be stopped) are held until
        their threads return."""
        self.request_stop()

    def request_stop(self, *, exiting: bool = False) -> None:
        """``stop()`` for callbacks that cannot await (call it on the event loop's thread).
        ``exiting``: the process ends right after (a signal handler's case), so thread jobs still
        running after the grace period are put back instead of waited for."""
        if self._dispatcher is not None:
            self._dispatcher.stop(exiting=exiting)
        else:
            self._stop_requested = True
            self._exit_requested = self._exit_requested or exiting

    async def run(self) -> int:
        """Pops and executes jobs one at a time until none is runnable now; returns how many ran."""
        count = 0
        while (job := await self.pop_job()) is not None:
            await job.execute()
            count += 1
        return count

    # -- inspecting and managing -----------------------------------------------------------------

    async def get_job(self, job_id: uuid.UUID | str) -> Job | None:
        """The job with that id, or None."""
        row = await self.store.get_job(as_job_id(job_id))
        return Job.from_row(row) if row is not None else None

    async def jobs(
        self,
        status: str | None = None,
        type_key: str | None = None,
        task_key: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs, newest first, optionally of one status and task."""
        if status is not None and status not in JobStatus.__members__.values():
            raise ValueError(f"unknown status {status!r}; one of {', '.join(JobStatus)}")
        rows = await self.store.list_jobs(status, type_key, task_key, limit)
        return [Job.from_row(row) for row in rows]

    async def counts(self) -> dict[str, int]:
        """How many jobs there are of each status."""
        return await self.store.status_counts()

    async def active_counts(self) -> dict[str, int]:
        """How many jobs are waiting, blocked and running: the queue's depth, read from indexes, so
        it stays cheap however many finished jobs the table keeps (``counts()`` reads them all)."""
        return await self.store.active_counts()

    async def history(self, job_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """Every status change of a job: status, reason, at, worker_id, node, pid, message."""
        return await self.store.job_events(as_job_id(job_id))

    async def dependencies(self, job_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """The jobs a job waits (or waited) for: job_id, type_key, task_key, status."""
        return await self.store.job_dependencies(as_job_id(job_id))

    async def schedules(self) -> list[dict[str, Any]]:
        """The periodic tasks' schedules as deployed: type_key, task_key, expression, timezone,
        arguments, priority, created_at, last_tick (the last tick fired), last_job_id and
        last_job_status (the job it created or deduped into), and next_tick (computed here)."""
        now = datetime.now(UTC)
        found = await self.store.list_schedules()
        for schedule in found:
            try:
                cron = Cron(schedule["expression"], schedule["arguments"], schedule["priority"], schedule["timezone"])
            except TaskDefinitionError:
                schedule["next_tick"] = None
            else:
                schedule["next_tick"] = cron.next_tick(now)
        return found

    async def cancel(self, job_id: uuid.UUID | str) -> bool:
        """Cancels a waiting, blocked or running job (its blocked dependents fail). Returns
        False when the job had already finished."""
        before = await self.store.cancel_job(as_job_id(job_id))
        if before is None:
            raise JobNotFound(f"no job {job_id}")
        return before in ACTIVE_STATUSES

    async def retry(self, job_id: uuid.UUID | str) -> uuid.UUID:
        """Queues a failed or cancelled job again; returns its id, or the id of an identical job
        that is already active."""
        with refusals_as_errors():
            new_id = await self.store.retry_job(as_job_id(job_id))
        if new_id is None:
            raise JobNotFound(f"no job {job_id}")
        return new_id

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled asyncpg connection (with the jsonb codec), for your own queries; its session
        state is reset when you are done with it."""
        async with self.store.acquire() as conn:
            try:
                yield conn
            finally:
                await conn.reset()
