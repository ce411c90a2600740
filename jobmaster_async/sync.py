"""A blocking facade: the same methods as ``jobmaster_async.JobMaster`` without ``await``, for
scripts and cron jobs (``job = jobmaster.pop_job(); if job: job.execute()``)."""

from __future__ import annotations

import asyncio
import atexit
import functools
import signal
import threading
import uuid
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import asyncpg

from . import app
from .arguments import RunAt
from .db.connection import DatabaseTarget
from .enqueue import EnqueueOptions
from .ids import MAX_CANDIDATES, Candidate
from .inspection import ScanEnd, TaskDepth
from .jobs import Job, PoppedJob, job_fields

__all__ = ("JobMaster", "SyncJob")

T = TypeVar("T")
P = ParamSpec("P")


class _LoopThread:
    """An event loop in a daemon thread: it keeps heartbeats going between blocking calls and
    never holds up interpreter exit."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="jobmaster-sync-loop", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("the blocking JobMaster cannot be called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


@dataclass
class SyncJob(Job):
    """A job claimed through the blocking facade: the ``Job``, with an ``execute()`` that blocks
    until its outcome is recorded (``status`` and the outcome's fields are then updated)."""

    _popped: PoppedJob | None = field(default=None, repr=False, compare=False)
    _runner: _LoopThread | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, popped: PoppedJob, runner: _LoopThread) -> SyncJob:
        return cls(**job_fields(popped), _popped=popped, _runner=runner)

    def execute(self) -> None:
        """Runs the job and records its outcome. Once only."""
        if self._popped is None or self._runner is None:
            raise RuntimeError(f"job {self.job_id} is not this process's to execute")
        self._runner.call(self._popped.execute())
        for name, value in job_fields(self._popped).items():
            setattr(self, name, value)


class SyncEnqueueOptions:
    """``jm.options(...)`` of the blocking facade."""

    def __init__(self, options: EnqueueOptions, call: Callable[[Coroutine[Any, Any, uuid.UUID]], uuid.UUID]) -> None:
        self._options = options
        self._call = call

    def enqueue(self, task: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> uuid.UUID:
        return self._call(self._options.enqueue(task, *args, **kwargs))


def _close_at_exit(ref: weakref.ref[JobMaster]) -> None:
    jobmaster = ref()
    if jobmaster is not None:
        jobmaster.close()


class JobMaster:
    """Blocking JobMaster. Takes the same arguments as ``jobmaster_async.JobMaster``."""

    def __init__(self, db_engine: DatabaseTarget | None = None, schema: str = "jobmaster", **options: Any) -> None:
        self.aio = app.JobMaster(db_engine, schema, **options)
        self._runner = _LoopThread()
        self._closed = False
        atexit.register(_close_at_exit, weakref.ref(self))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this JobMaster is closed")
        return self._runner.call(coro)

    def connect(self, wait: float | None = None) -> None:
        self._call(self.aio.connect(wait))

    def deploy(self, _reset: bool = False, *, prune: bool = False) -> None:
        self._call(self.aio.deploy(_reset, prune=prune))

    def insert_job(
        self,
        type_key: str,
        task_key: str,
        priority: int = 0,
        arguments: Mapping[str, Any] | None = None,
        *,
        run_at: RunAt = None,
    ) -> uuid.UUID:
        return self._call(self.aio.insert_job(type_key, task_key, priority, arguments, run_at=run_at))

    def insert_jobs(
        self,
        type_key: str,
        task_key: str,
        priority: int = 0,
        arguments: Sequence[Mapping[str, Any]] = (),
        *,
        run_at: RunAt = None,
    ) -> list[uuid.UUID]:
        return self._call(self.aio.insert_jobs(type_key, task_key, priority, arguments, run_at=run_at))

    def enqueue(self, task: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> uuid.UUID:
        """``jobmaster_async.JobMaster.enqueue``, blocking."""
        return self._call(self.aio.enqueue(task, *args, **kwargs))

    def options(self, *, priority: int = 0, run_at: RunAt = None) -> SyncEnqueueOptions:
        return SyncEnqueueOptions(self.aio.options(priority=priority, run_at=run_at), self._call)

    def pop_job(self) -> SyncJob | None:
        job = self._call(self.aio.pop_job())
        return SyncJob.of(job, self._runner) if job is not None else None

    def run(self) -> int:
        return self._call(self.aio.run())

    def run_forever(self, concurrency: int = 8, *, handle_signals: bool = False, **options: Any) -> None:
        """Blocks while the dispatcher runs in the background loop. Ctrl-C (and SIGTERM with
        ``handle_signals``, from the main thread) stops it gracefully, as before the process
        exits (thread jobs still running after the grace period are put back)."""
        future = asyncio.run_coroutine_threadsafe(self.aio.run_forever(concurrency, **options), self._runner.loop)
        previous = None
        if handle_signals and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: self._stop_before_exit())
        try:
            while True:
                try:
                    future.result()
                    return
                except KeyboardInterrupt:
                    self._stop_before_exit()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _stop_before_exit(self) -> None:
        self._runner.loop.call_soon_threadsafe(functools.partial(self.aio.request_stop, exiting=True))

    def stop(self) -> None:
        self._call(self.aio.stop())

    def worker_tasks(self) -> list[str]:
        return self._call(self.aio.worker_tasks())

    def prune(self, older_than: timedelta | None = None, *, dry_run: bool = False) -> int:
        return self._call(self.aio.prune(older_than, dry_run=dry_run))

    def get_job(self, job_id: uuid.UUID | str) -> Job | None:
        return self._call(self.aio.get_job(job_id))

    def jobs(
        self, status: str | None = None, type_key: str | None = None, task_key: str | None = None, limit: int = 100
    ) -> list[Job]:
        return self._call(self.aio.jobs(status, type_key, task_key, limit))

    def history(self, job_id: uuid.UUID | str) -> list[dict[str, Any]]:
        return self._call(self.aio.history(job_id))

    def dependencies(self, job_id: uuid.UUID | str) -> list[dict[str, Any]]:
        return self._call(self.aio.dependencies(job_id))

    def find_jobs(self, text: str, limit: int = MAX_CANDIDATES + 1) -> list[Candidate]:
        return self._call(self.aio.find_jobs(text, limit))

    def dependency_tree(
        self, job_id: uuid.UUID | str, depth: int = 8, rows: int = 300
    ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        return self._call(self.aio.dependency_tree(job_id, depth, rows))

    def job_worker(self, job_id: uuid.UUID | str, worker_id: uuid.UUID) -> dict[str, Any]:
        return self._call(self.aio.job_worker(job_id, worker_id))

    def jobs_page(self, **filters: Any) -> list[asyncpg.Record]:
        """``jobmaster_async.JobMaster.jobs_page``, blocking (the same keyword arguments)."""
        return self._call(self.aio.jobs_page(**filters))

    def scan_end(self, before: uuid.UUID | None, scan: int) -> ScanEnd:
        return self._call(self.aio.scan_end(before, scan))

    def queue_depth(self) -> list[TaskDepth]:
        return self._call(self.aio.queue_depth())

    def workers(self) -> list[dict[str, Any]]:
        return self._call(self.aio.workers())

    def deployed_tasks(self) -> list[dict[str, Any]]:
        return self._call(self.aio.deployed_tasks())

    def schema_version(self) -> int | None:
        return self._call(self.aio.schema_version())

    def clock(self, less: timedelta = timedelta(0)) -> datetime:
        return self._call(self.aio.clock(less))

    def events_per_minute(self, whole: bool = True) -> tuple[list[asyncpg.Record], datetime]:
        return self._call(self.aio.events_per_minute(whole))

    def history_window(self, since: datetime, lag: timedelta) -> list[asyncpg.Record]:
        return self._call(self.aio.history_window(since, lag))

    def counts(self) -> dict[str, int]:
        return self._call(self.aio.counts())

    def active_counts(self) -> dict[str, int]:
        return self._call(self.aio.active_counts())

    def schedules(self) -> list[dict[str, Any]]:
        return self._call(self.aio.schedules())

    def cancel(self, job_id: uuid.UUID | str) -> bool:
        return self._call(self.aio.cancel(job_id))

    def retry(self, job_id: uuid.UUID | str) -> uuid.UUID:
        return self._call(self.aio.retry(job_id))

    def close(self) -> None:
        if not self._closed:
            self._runner.call(self.aio.close())
            self._closed = True
            self._runner.stop()

    def __enter__(self) -> JobMaster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
