"""jobmaster_async: an asyncio-native job queue on PostgreSQL."""

from __future__ import annotations

from .app import JobMaster
from .definitions import Cron, Dependency, Registry, same, task
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidArguments,
    InvalidJobId,
    JobMasterError,
    JobNotFound,
    NotRetryable,
    SchemaVersionError,
    TaskDefinitionError,
    TaskNotFound,
)
from .jobs import Job, JobStatus, PoppedJob
from .worker.executors import cancel_requested

__all__ = (
    "ConfigurationError",
    "Cron",
    "DatabaseUnavailable",
    "Dependency",
    "InvalidArguments",
    "InvalidJobId",
    "Job",
    "JobMaster",
    "JobMasterError",
    "JobNotFound",
    "JobStatus",
    "PoppedJob",
    "Registry",
    "NotRetryable",
    "SchemaVersionError",
    "TaskDefinitionError",
    "TaskNotFound",
    "cancel_requested",
    "same",
    "task",
)

__version__ = "0.1.0"
