"""What ``@task`` records about a function: ``TaskDefinition``, the one place a task's options
live. Its fields marked as columns (``COLUMN``) are the tasks table's columns of the same name:
deploy() hands ``to_row()`` over as JSON and the SQL reads the fields by name (sql/queries.sql
``upsert_task``). So a new option is: a field here; its keyword in ``build.define``, whose
signature ``@task`` takes (and where it is checked); its column in ``sql/schema.sql`` and a
migration; its name in ``upsert_task``'s column lists (tests/test_deploy.py fails until it is)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from ..errors import TaskDefinitionError
from .dependencies import Dependency, name_of
from .parameters import Parameter
from .schedules import Cron

__all__ = ("INHERIT", "Executor", "Inherit", "TaskDefinition", "column_names", "definition_of", "retention_refusal")

Executor = Literal["thread", "process"]

#: field(metadata=COLUMN): the field is the tasks table's column of the same name
COLUMN = {"column": True}


class Inherit:
    """``@task(retention=INHERIT)``, the default: the task keeps its finished jobs as long as the
    deploying JobMaster's ``retention`` says."""

    def __repr__(self) -> str:
        return "INHERIT"


INHERIT = Inherit()


@dataclass
class TaskDefinition:
    """What ``@task`` records about a function."""

    func: Callable[..., Any]
    type_key: str = field(metadata=COLUMN)
    task_key: str = field(metadata=COLUMN)
    parameters: tuple[Parameter, ...] = field(metadata=COLUMN)
    dependencies: tuple[Dependency, ...] = field(default=(), metadata=COLUMN)
    process_units: int = field(default=1, metadata=COLUMN)
    process_limit: int | None = field(default=None, metadata=COLUMN)
    write_all: tuple[str, ...] = field(default=(), metadata=COLUMN)
    retries: int = field(default=0, metadata=COLUMN)
    rescues: int = field(default=3, metadata=COLUMN)
    timeout: float | None = field(default=None, metadata=COLUMN)
    #: stored as "async" for an async task
    executor: Executor = field(default="thread", metadata=COLUMN)
    crons: tuple[Cron, ...] = ()
    #: how long its finished jobs are kept (None: forever; INHERIT: the JobMaster's retention)
    retention: timedelta | Inherit | None = field(default=INHERIT, metadata=COLUMN)
    is_async: bool = False
    description: str | None = field(default=None, metadata=COLUMN)
    origin: str = field(default="", repr=False)

    @property
    def key(self) -> str:
        return f"{self.type_key}.{self.task_key}"

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def to_row(self, retention: timedelta | None = None) -> dict[str, Any]:
        """The tasks-table row deploy() writes, as JSON values by column name; ``retention`` is
        the JobMaster's, for a task that sets none."""
        row = {name: _as_json(getattr(self, name)) for name in column_names()}
        row["executor"] = "async" if self.is_async else self.executor
        if isinstance(self.retention, Inherit):
            row["retention"] = _as_json(retention)
        return row


def column_names() -> tuple[str, ...]:
    """The fields of TaskDefinition that are columns of the tasks table."""
    return tuple(f.name for f in dataclasses.fields(TaskDefinition) if f.metadata.get("column"))


def _as_json(value: Any) -> Any:
    """A field's value as the JSON that PostgreSQL reads into its column (jsonb_populate_record:
    an array for text[] and jsonb lists, PostgreSQL's interval text for a timedelta)."""
    if isinstance(value, tuple):
        return [item.to_json() if hasattr(item, "to_json") else item for item in value]
    if isinstance(value, timedelta):
        return f"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"
    return value


def definition_of(func: Callable[..., Any]) -> TaskDefinition:
    """The definition ``@task`` attached to a function."""
    definition = getattr(func, "__jobmaster_task__", None)
    if not isinstance(definition, TaskDefinition):
        raise TaskDefinitionError(f"{name_of(func)} is not a task: decorate it with @task")
    return definition


def retention_refusal(what: str, value: object, forever: bool = True) -> str | None:
    """Why ``value`` is no retention (a timedelta longer than zero), or None; ``forever``: None,
    keeping forever, is allowed too (the caller lets it through)."""
    if isinstance(value, timedelta) and value > timedelta(0):
        return None
    return f"{what} must be a timedelta > 0{' or None (keep forever)' if forever else ''}, got {value!r}"
