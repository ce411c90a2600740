"""Registries of tasks and the ``@task`` decorator that fills them."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from ..errors import TaskDefinitionError
from .build import define
from .checks import check_definitions
from .task import TaskDefinition, definition_of

__all__ = ("Registry", "TaskDecorator", "registry", "task")

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")


class TaskDecorator(Generic[P]):
    """``@task`` and ``@task(option=...)``: registers a function as a task (the function stays
    directly callable). Its options are ``build.define``'s keyword arguments, typed from there.

    The type key defaults to the module's last name (a script's file name when run directly),
    the task key to the function's name."""

    def __init__(self, build: Callable[Concatenate[Callable[..., Any], P], TaskDefinition], into: Registry) -> None:
        self._build = build
        self._into = into

    @overload
    def __call__(self, func: F, /) -> F: ...

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Callable[[F], F]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        unknown = sorted(set(kwargs) - set(inspect.signature(self._build).parameters))
        if unknown:  # said where the options are given, as Python says it of a keyword
            raise TypeError(f"@task got an unexpected option {unknown[0]!r}")
        if len(args) > 1:
            raise TypeError(f"@task takes the function and keyword options, got {len(args)} positional arguments")
        if args:
            return self._decorate(args[0], kwargs)
        return lambda func: self._decorate(func, kwargs)

    def _decorate(self, func: F, options: dict[str, Any]) -> F:
        build = typing.cast(Callable[..., TaskDefinition], self._build)
        definition = build(func, **options)
        self._into.add(definition)
        func.__jobmaster_task__ = definition  # type: ignore[attr-defined]
        return func


class Registry:
    """A set of tasks by (type_key, task_key): what a JobMaster deploys, claims and schedules.

    ``@task`` registers into the global ``registry``, the default of ``JobMaster(registry=...)``
    (so every task the process imported); a ``Registry`` of one's own holds only the tasks given
    to it, ``Registry(foo, bar)`` (functions decorated elsewhere) or decorated with its own
    ``@tasks.task(...)``."""

    def __init__(self, *tasks: Callable[..., Any]) -> None:
        self._tasks: dict[tuple[str, str], TaskDefinition] = {}
        #: ``@registry.task`` / ``@registry.task(retries=2, ...)``: as ``@task``, into this registry
        self.task = TaskDecorator(define, self)
        for func in tasks:
            self.add(definition_of(func))

    def add(self, definition: TaskDefinition) -> None:
        key = (definition.type_key, definition.task_key)
        existing = self._tasks.get(key)
        if existing is not None and existing.origin != definition.origin:
            raise TaskDefinitionError(f"task {definition.key}: duplicate key, already defined by {existing.origin}")
        self._tasks[key] = definition

    def get(self, type_key: str, task_key: str) -> TaskDefinition | None:
        return self._tasks.get((type_key, task_key))

    def remove(self, type_key: str, task_key: str) -> None:
        self._tasks.pop((type_key, task_key), None)

    def __iter__(self) -> typing.Iterator[TaskDefinition]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)

    def rows_to_deploy(
        self, deployed: Mapping[tuple[str, str], Mapping[str, Any]], retention: timedelta | None = None
    ) -> list[dict[str, Any]]:
        """The tasks-table rows deploy() writes, once the definitions registered here have been
        checked as a whole against the ones already deployed (by key: rows with their
        ``parameters`` and ``dependencies``); ``retention`` is the JobMaster's, for tasks that set
        none."""
        definitions = list(self)
        check_definitions(definitions, deployed)
        return [definition.to_row(retention) for definition in definitions]

    def schedules_to_deploy(self) -> list[dict[str, Any]]:
        """The schedules deploy() stores: every registered task's (none is a list too: a task that
        lost its schedules loses them in the database)."""
        return [
            {
                "type_key": definition.type_key,
                "task_key": definition.task_key,
                "schedules": [
                    {
                        "key": cron.key(),
                        "expression": cron.expression,
                        "timezone": cron.timezone,
                        "arguments": cron.arguments,
                        "priority": cron.priority,
                    }
                    for cron in definition.crons
                ],
            }
            for definition in self
        ]


registry = Registry()


#: The process's registry: ``@task`` registers here; the default of ``JobMaster(registry=...)``.
registry = Registry()
task = registry.task
