"""Jobs: what a job looks like from Python, and its statuses.

One type, ``Job``; a job this process claimed is the same with a way to run it: ``PoppedJob``
(``await job.execute()``) here, ``sync.SyncJob`` (``job.execute()``) in the blocking facade. The
worker's hot path holds a lighter ``worker.outcomes.Claim`` (the fields it runs and fences
with, and the task's definition)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import InvalidJobId
from .lifecycle import JobStatus

__all__ = ("ACTIVE_STATUSES", "Job", "JobStatus", "PoppedJob", "as_job_id", "job_fields")


ACTIVE_STATUSES = frozenset({JobStatus.WAITING, JobStatus.BLOCKED, JobStatus.RUNNING})


def as_job_id(job_id: uuid.UUID | str) -> uuid.UUID:
    """A job id from a UUID or its string form."""
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        raise InvalidJobId(
            f"not a job id: {job_id!r} (a job id is a UUID, as insert_job returns it, such as "
            "'01a22e93-5b6f-7c2e-9d4a-3f0e1b2c4d5e')"
        ) from None


@dataclass
class Job:
    """A job: a task plus arguments, with its state as last read from the database.

    A time a ``datetime`` cannot hold (a ``run_at`` of ``200000-01-01`` or ``4000-01-01 BC``
    written before run_at was bounded, or past the library) does not fail the listing: it reads
    as a ``times.UndecodableTime``, whose ``str()`` and ``isoformat()`` are the value as
    PostgreSQL writes it in UTC (``200000-01-01 00:00:00+00``) and which compares as the
    nearest time a datetime holds. A jsonb value Python cannot read is a ``storable.UndecodableJSON``."""

    job_id: uuid.UUID
    type_key: str
    task_key: str
    priority: int
    arguments: dict[str, Any]
    status: str
    attempts: int = 0
    max_attempts: int = 1
    rescues: int = 0
    result: Any = None
    message: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    is_parent: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_after: datetime | None = None
    worker_id: uuid.UUID | None = None
    #: the time its inserter asked it to run at (None: none; retry() forgets it)
    run_at: datetime | None = None
    #: the W3C trace context it was inserted in, ``{"traceparent": ..., "tracestate": ...}``
    #: (tracestate only when there is one); None when its inserter was in no span (README "Tracing")
    trace_context: dict[str, str] | None = None

    @property
    def task_name(self) -> str:
        return f"{self.type_key}.{self.task_key}"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        return cls(
            job_id=row["job_id"],
            type_key=row["type_key"],
            task_key=row["task_key"],
            priority=row["priority"],
            arguments=row["arguments"],
            status=row["status"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            rescues=row["rescues"],
            result=row["result"],
            message=row["message"],
            error_type=row["error_type"],
            traceback=row["traceback"],
            is_parent=row["is_parent"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            run_after=row["run_after"],
            worker_id=row["worker_id"],
            run_at=row["run_at"],
            trace_context=row.get("trace_context"),
        )


@dataclass
class PoppedJob(Job):
    """A job claimed by ``pop_job()``, held by this worker until ``execute()`` has run it."""

    _executor: Callable[[PoppedJob], Awaitable[None]] | None = field(default=None, repr=False, compare=False)

    async def execute(self) -> None:
        """Runs the job and records its outcome (``status`` is updated). Once only."""
        if self._executor is None:
            raise RuntimeError(f"job {self.job_id} was already executed")
        executor, self._executor = self._executor, None
        await executor(self)


def job_fields(job: Job) -> dict[str, Any]:
    """The fields ``Job`` has, of ``job`` (a variant's own are left out): to build another variant
    of the same job, or to bring one up to date."""
    return {f.name: getattr(job, f.name) for f in dataclasses.fields(Job)}
