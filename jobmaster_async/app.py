"""JobMaster: the entry point. Deploys the schema, inserts, claims, runs and inspects jobs."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, ParamSpec

import asyncpg

from . import tracing
from .arguments import RunAt, as_json, as_json_array, check_insert, refusals_as_errors, when
from .db.connection import DatabaseTarget, dsn_from, opener, read_only
from .db.sql import Catalogue
from .db.startup import host_probes, wait_for_server
from .db.store import Store
from .definitions import Registry, retention_refusal
from .definitions import registry as default_registry
from .enqueue import EnqueueOptions
from .errors import (
    ConfigurationError,
    InvalidArguments,
    JobNotFound,
)
from .events import Events
from .inspection import Inspection
from .jobs import ACTIVE_STATUSES, PoppedJob, as_job_id
from .settings import JobMasterSettings
from .worker.backend import Worker
from .worker.dispatcher import Dispatcher, RunOptions

__all__ = ("JobMaster",)

P = ParamSpec("P")

logger = logging.getLogger(__name__)

#: How long finished jobs are kept by default (DESIGN 9 "Retention").
DEFAULT_RETENTION = timedelta(days=7)
#: Jobs that prune() deletes per transaction.
PRUNE_BATCH = 10_000


def _checked_retention(value: object, what: str = "retention") -> timedelta:
    """A retention or an age: a timedelta longer than zero."""
    refusal = retention_refusal(what, value, forever=what == "retention")
    if refusal:
        raise ConfigurationError(refusal)
    assert isinstance(value, timedelta)
    return value


class JobMaster(Inspection):
    """A job queue in one PostgreSQL schema.

    ``db_engine`` is a SQLAlchemy ``AsyncEngine`` or ``Engine`` (any PostgreSQL driver: its URL is
    reused with asyncpg) or a DSN string; without it, the ``JOBMASTER_DSN`` environment variable.
    Its reads (jobs, the queue's depth, workers, schedules, charts) are in inspection.py.
    """

    def __init__(
        self,
        db_engine: DatabaseTarget | None = None,
        schema: str = "jobmaster",
        *,
        task_modules: Iterable[str] = (),
        registry: Registry | None = None,
        system_process_units: int | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
        pool_size: int | None = None,
        retry_backoff: float | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_lapse: float | None = None,
        poll_interval: float | None = None,
        connection_timeout: float | None = None,
        rescue_interval: float | None = None,
        retention: timedelta | None = DEFAULT_RETENTION,
        prune_interval: float | None = None,
        wait_for_database: float | None = None,
        max_result_bytes: int | None = None,
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
        #: the tasks this JobMaster deploys, runs and schedules (default: every ``@task`` the
        #: process imported, the global registry)
        self.registry = default_registry if registry is None else registry
        #: validated once: see settings.JobMasterSettings
        self.settings = settings = JobMasterSettings.of(
            system_process_units=system_process_units,
            pool_size=pool_size,
            retry_backoff=retry_backoff,
            heartbeat_interval=heartbeat_interval,
            heartbeat_lapse=heartbeat_lapse,
            poll_interval=poll_interval,
            connection_timeout=connection_timeout,
            rescue_interval=rescue_interval,
            prune_interval=prune_interval,
            wait_for_database=wait_for_database,
            max_result_bytes=max_result_bytes,
        )
        #: how long finished jobs are kept after they finished, for the tasks that set no
        #: retention of their own (None: forever); deploy() stores it per task
        self.retention = None if retention is None else _checked_retention(retention)
        self.connect_kwargs = dict(connect_kwargs or {})
        self._open = opener(self.dsn, self.connect_kwargs, settings.connection_timeout)
        #: whether a connection to a read-write server ever opened: before, errors are fatal
        #: (connect() waits for one); after, a worker survives them
        self.connected = False
        self._store = Store(self.sql, self.open_connection, settings.pool_size, settings.connection_timeout)
        #: the worker's typed events (events.py: jobs claimed and finished, outages, recoveries,
        #: rescues...), for subscribers and tests (``await jm.events.wait_for(...)``)
        self.events = Events()
        #: the database side of this process's worker (claims, heartbeat, outcomes, pop_job): private,
        #: as the store; the dashboard and the CLI read through the public methods
        self._worker = Worker(self._store, settings, self.events, self.registry)
        #: this process's worker, as heartbeats, claims and the history name it
        self.worker_id = self._worker.worker_id
        self._dispatcher: Dispatcher | None = None
        self._stop_requested = False
        self._exit_requested = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def open_connection(self) -> asyncpg.Connection:
        """A new connection (named after this process, with the JSON codecs and TCP keepalives),
        opened within ``connection_timeout``."""
        conn = await self._open()
        if not self.connected and not await read_only(conn, self.settings.connection_timeout):
            self.connected = True
        return conn

    async def connect(self, wait: float | None = None) -> None:
        """Start-up: returns once a read-write server answers, waiting up to ``wait`` seconds
        (default: ``wait_for_database``) while none does: connections refused or unanswered, or
        only a standby (a failover; one line says so). Any other error raises at once (a wrong
        address, password or database name will not fix itself); when the time is up,
        DatabaseUnavailable names each host of the DSN and why it failed. Does nothing once
        connected: from then on a worker survives every database fault."""
        if self.connected:
            return
        wait = self.settings.wait_for_database if wait is None else wait
        hosts = host_probes(self.dsn, self.connect_kwargs, self.settings.connection_timeout)
        await wait_for_server(self._store.probe, wait, hosts)
        self.connected = True

    async def close(self) -> None:
        """Closes the connections (and forgets this worker's heartbeat row)."""
        await self._worker.stop_heartbeat()
        await self._store.close(self.worker_id if self._worker.registered and self._worker.popped == 0 else None)
        self._worker.registered = False

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
        await self._store.deploy(self.registry, reset=_reset, prune=prune, retention=self.retention)
        self._worker.forget_definitions()
        if _reset:
            self._worker.registered = False

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
        clock); the job never starts before it. Inside an OpenTelemetry span, the job's runs are
        spans in its trace (README "Tracing")."""
        check_insert(type_key, task_key, priority)
        label = f"{type_key}.{task_key}"
        arguments_json, (at, delay) = as_json(label, arguments), when(label, run_at)
        traceparent, tracestate = tracing.current_context()
        # the common case in one plain statement; dependencies, "ALL", twins and refusals: in full
        job_id = await self._store.insert_job_fast(
            type_key, task_key, priority, arguments_json, at, delay, traceparent, tracestate
        )
        if job_id is None:
            with refusals_as_errors():
                job_id = await self._store.insert_job(
                    type_key, task_key, priority, arguments_json, at, delay, traceparent, tracestate
                )
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
        traceparent, tracestate = tracing.current_context()
        with refusals_as_errors():
            return await self._store.insert_jobs(
                type_key, task_key, priority, batch, at, delay, traceparent, tracestate
            )

    async def enqueue(self, task: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> uuid.UUID:
        """Queues a job of ``task`` (a function decorated with ``@task``), its arguments checked
        by your type checker against the function's signature; returns the job id, as
        ``insert_job``. Priority and time: ``jm.options(priority=5, run_at=...).enqueue(...)``."""
        return await self.options().enqueue(task, *args, **kwargs)

    def options(self, *, priority: int = 0, run_at: RunAt = None) -> EnqueueOptions:
        """Options for jobs queued with ``.enqueue(task, ...)`` on the result: their priority, and
        when they are to run (as ``insert_job``'s ``run_at``)."""
        return EnqueueOptions(self.insert_job, priority=priority, run_at=run_at)

    # -- running -------------------------------------------------------------------------------

    async def pop_job(self) -> PoppedJob | None:
        """Claims the next runnable job (highest priority, then oldest) of a task registered in
        this process; ``await job.execute()`` runs it. The worker heartbeats until then. Every
        ``rescue_interval`` it first puts back the jobs of workers whose heartbeat lapsed, so that
        deployments that only pop (a cron script) recover lost jobs too."""
        return await self._worker.pop_job()

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
        self._worker.threads.grow_to(concurrency)
        self._dispatcher = Dispatcher(self._worker, options)
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

    async def worker_tasks(self) -> list[str]:
        """The tasks this process's worker runs (registered here and deployed), as
        ``type_key.task_key``."""
        return [definition.key for definition in (await self._worker.definitions()).values()]

    async def run(self) -> int:
        """Pops and executes jobs one at a time until none is runnable now; returns how many ran."""
        count = 0
        while (job := await self.pop_job()) is not None:
            await job.execute()
            count += 1
        return count

    # -- retention -------------------------------------------------------------------------------

    async def prune(self, older_than: timedelta | None = None, *, dry_run: bool = False) -> int:
        """Deletes the finished jobs (and their history) older than each task's retention, or
        than ``older_than`` for every task, in short transactions; returns how many went.
        Jobs that dependencies still need are kept (DESIGN 9 "Retention"). ``dry_run``: deletes
        nothing and returns how many would go."""
        if older_than is not None:
            older_than = _checked_retention(older_than, "older_than")
        if dry_run:
            return await self._store.count_prunable_jobs(older_than)
        total = 0
        while True:
            deleted = await self._store.prune_jobs(older_than, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        if total:
            logger.info("pruned %d finished jobs", total)
        return total

    # -- managing (the reads: inspection.py) -----------------------------------------------------

    async def cancel(self, job_id: uuid.UUID | str) -> bool:
        """Cancels a waiting, blocked or running job (its blocked dependents fail). Returns
        False when the job had already finished."""
        before = await self._store.cancel_job(as_job_id(job_id))
        if before is None:
            raise JobNotFound(f"no job {job_id}")
        return before in ACTIVE_STATUSES

    async def retry(self, job_id: uuid.UUID | str) -> uuid.UUID:
        """Queues a failed or cancelled job again; returns its id, or the id of an identical job
        that is already active."""
        with refusals_as_errors():
            new_id = await self._store.retry_job(as_job_id(job_id))
        if new_id is None:
            raise JobNotFound(f"no job {job_id}")
        return new_id

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled asyncpg connection (with the jsonb codec, and a timestamptz codec that gives
        a ``times.UndecodableTime`` for a time ``datetime`` cannot hold), for your own queries;
        its session state is reset when you are done with it."""
        async with self._store.acquire() as conn:
            try:
                yield conn
            finally:
                await conn.reset()
