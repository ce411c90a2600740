"""The typed enqueue: ``await jm.enqueue(foo, file_path="x", number=1)``.

The task object replaces the type-key and task-key strings, and its signature types the
arguments (a ``ParamSpec``), so a type checker reports a wrong or missing argument where the job
is queued. Options that could collide with parameter names go through ``jm.options(...)``:
``await jm.options(priority=5, run_at=timedelta(minutes=10)).enqueue(foo, ...)``. ``insert_job``
stays as the seed has it.
"""

from __future__ import annotations

import difflib
import inspect
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, Protocol

from .arguments import RunAt, when
from .definitions import definition_of
from .errors import InvalidArguments

__all__ = ("EnqueueOptions", "Insert")

P = ParamSpec("P")


class Insert(Protocol):
    """JobMaster.insert_job"""

    async def __call__(
        self, type_key: str, task_key: str, priority: int, arguments: Mapping[str, Any], *, run_at: RunAt = None
    ) -> uuid.UUID: ...


class EnqueueOptions:
    """Options for the jobs queued through it (``jm.options(priority=..., run_at=...)``)."""

    def __init__(self, insert: Insert, *, priority: int = 0, run_at: RunAt = None) -> None:
        when("options", run_at)  # a naive datetime is refused here, where it was given
        self._insert = insert
        self.priority = priority
        self.run_at = run_at

    async def enqueue(self, task: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> uuid.UUID:
        """Queues a job of ``task`` (a function decorated with ``@task``) with these arguments;
        returns its id, or the id of an identical job already active (as ``insert_job``)."""
        definition = definition_of(task)
        names = [p.name for p in definition.parameters]
        for unknown in sorted(set(kwargs) - set(names)):
            close = difflib.get_close_matches(unknown, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (parameters: {', '.join(names) or 'none'})"
            raise InvalidArguments(f"{definition.key}: unknown argument {unknown!r}{hint}")
        try:
            bound = inspect.signature(definition.func).bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"{definition.key}: {exc}") from None
        return await self._insert(
            definition.type_key, definition.task_key, self.priority, dict(bound.arguments), run_at=self.run_at
        )
