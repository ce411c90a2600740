"""Exceptions. Each one's docstring is its default message."""

from __future__ import annotations

__all__ = (
    "ConfigurationError",
    "DatabaseUnavailable",
    "InvalidArguments",
    "InvalidJobId",
    "JobMasterError",
    "JobNotFound",
    "NotRetryable",
    "SchemaVersionError",
    "TaskDefinitionError",
    "TaskNotFound",
)

#: The SQLSTATE every refusal of bad input raises in SQL.
REFUSAL_SQLSTATE = "JM400"


class JobMasterError(Exception):
    """A JobMaster error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class TaskDefinitionError(JobMasterError):
    """A task is defined wrongly."""


class InvalidArguments(JobMasterError):
    """The job's arguments do not fit its task."""


class TaskNotFound(InvalidArguments):
    """No task is deployed under that type key and task key."""


class JobNotFound(JobMasterError):
    """No job has that id."""


class InvalidJobId(JobMasterError, ValueError):
    """That is not a job id (a UUID)."""


class NotRetryable(JobMasterError):
    """Only failed or cancelled jobs can be retried."""


class SchemaVersionError(JobMasterError):
    """The database schema was deployed by a newer version of jobmaster_async."""


class ConfigurationError(JobMasterError):
    """JobMaster is configured wrongly."""


class DatabaseUnavailable(JobMasterError, ConnectionError):
    """No read-write database server answered in the time a worker waits for one at start-up."""
