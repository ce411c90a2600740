"""Tasks: the ``@task`` decorator, ``Dependency``, ``same`` and the registry (parameters:
parameters.py; checks of a set of definitions: definitions.py)."""

from __future__ import annotations

import inspect
import json
import logging
import sys
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from .definitions import check_cycles, check_definitions, check_dependency_arguments
from .errors import TaskDefinitionError
from .parameters import Parameter, check_json, parameters_of
from .schedules import Cron, as_crons

__all__ = (
    "DEFAULT_HOURS",
    "INHERIT",
    "Dependency",
    "Inherit",
    "Parameter",
    "Same",
    "TaskDefinition",
    "check_cycles",
    "check_definitions",
    "definition_of",
    "registry",
    "same",
    "task",
)

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_HOURS = 720.0
Executor = Literal["thread", "process"]
_ARITHMETIC = {"+", "-", "*", "/", "r-", "r/"}


class Inherit:
    """``@task(retention=INHERIT)``, the default: the task keeps its finished jobs as long as the
    deploying JobMaster's ``retention`` says."""

    def __repr__(self) -> str:
        return "INHERIT"


INHERIT = Inherit()


class Same:
    """``same``: the dependent job's value of the argument of the same name, optionally with
    arithmetic (``same + 1``, ``same * 2``, ``same - 1``, ``same / 2``, also reversed)."""

    def __init__(self, ops: tuple[tuple[str, float], ...] = ()) -> None:
        self.ops = ops

    def _with(self, op: str, operand: object) -> Same:
        if isinstance(operand, bool) or not isinstance(operand, int | float):
            raise TaskDefinitionError(f"same {op} {operand!r}: arithmetic on same needs a number")
        if op == "/" and operand == 0:
            raise TaskDefinitionError("same / 0: division by zero")
        return Same((*self.ops, (op, operand)))

    def __add__(self, other: object) -> Same:
        return self._with("+", other)

    __radd__ = __add__

    def __sub__(self, other: object) -> Same:
        return self._with("-", other)

    def __rsub__(self, other: object) -> Same:
        return self._with("r-", other)

    def __mul__(self, other: object) -> Same:
        return self._with("*", other)

    __rmul__ = __mul__

    def __truediv__(self, other: object) -> Same:
        return self._with("/", other)

    def __rtruediv__(self, other: object) -> Same:
        return self._with("r/", other)

    def __repr__(self) -> str:
        text = "same"
        for op, operand in self.ops:
            text = f"{operand} {op[1]} ({text})" if op.startswith("r") else f"({text}) {op} {operand}"
        return text


same = Same()


class Dependency:
    """A task that must have run, with matching arguments, within ``hours`` before a job runs.

    ``task`` is a decorated function or ``"type_key.task_key"``; each keyword argument is a
    constant or ``same`` (with arithmetic)."""

    def __init__(self, task: Callable[..., Any] | str, hours: float | None = None, **arguments: Any) -> None:
        if hours is None:
            hours = DEFAULT_HOURS
        if isinstance(hours, bool) or not isinstance(hours, int | float) or not hours > 0:
            raise TaskDefinitionError(f"Dependency({_name_of(task)}): hours must be a number > 0, got {hours!r}")
        self.task = task
        self.hours = float(hours)
        self.arguments = arguments

    @property
    def key(self) -> tuple[str, str]:
        """(type_key, task_key) of the task depended on."""
        if isinstance(self.task, str):
            type_key, dot, task_key = self.task.rpartition(".")
            if not dot or not type_key or not task_key:
                raise TaskDefinitionError(f"Dependency({self.task!r}): give a task or 'type_key.task_key'")
            return type_key, task_key
        definition = definition_of(self.task)
        return definition.type_key, definition.task_key

    def to_json(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        for name, value in self.arguments.items():
            if isinstance(value, Same):
                arguments[name] = {"same": name, "ops": [list(op) for op in value.ops]}
            else:
                arguments[name] = {"value": value}
        type_key, task_key = self.key
        return {"type_key": type_key, "task_key": task_key, "hours": self.hours, "arguments": arguments}

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.arguments.items())
        return f"Dependency({_name_of(self.task)}, {self.hours:g}{args})"


@dataclass
class TaskDefinition:
    """What ``@task`` records about a function."""

    func: Callable[..., Any]
    type_key: str
    task_key: str
    parameters: tuple[Parameter, ...]
    dependencies: tuple[Dependency, ...] = ()
    process_units: int = 1
    process_limit: int | None = None
    write_all: tuple[str, ...] = ()
    retries: int = 0
    rescues: int = 3
    timeout: float | None = None
    executor: Executor = "thread"
    crons: tuple[Cron, ...] = ()
    #: how long its finished jobs are kept (None: forever; INHERIT: the JobMaster's retention)
    retention: timedelta | Inherit | None = INHERIT
    is_async: bool = False
    description: str | None = None
    origin: str = field(default="", repr=False)

    @property
    def key(self) -> str:
        return f"{self.type_key}.{self.task_key}"

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def to_row(self, retention: timedelta | None = None) -> dict[str, Any]:
        """The tasks-table row deploy() writes; ``retention`` is the JobMaster's, for a task that
        sets none."""
        return {
            "type_key": self.type_key,
            "task_key": self.task_key,
            "parameters": json.dumps([p.to_json() for p in self.parameters]),
            "write_all": list(self.write_all),
            "dependencies": json.dumps([d.to_json() for d in self.dependencies]),
            "process_units": self.process_units,
            "process_limit": self.process_limit,
            "retries": self.retries,
            "rescues": self.rescues,
            "timeout": self.timeout,
            "executor": "async" if self.is_async else self.executor,
            "description": self.description,
            "retention": retention if isinstance(self.retention, Inherit) else self.retention,
        }


class Registry:
    """Tasks registered in this process, by (type_key, task_key)."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str], TaskDefinition] = {}

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


def definition_of(func: Callable[..., Any]) -> TaskDefinition:
    """The definition ``@task`` attached to a function."""
    definition = getattr(func, "__jobmaster_task__", None)
    if not isinstance(definition, TaskDefinition):
        raise TaskDefinitionError(f"{_name_of(func)} is not a task: decorate it with @task")
    return definition


@overload
def task(func: F, /) -> F: ...


@overload
def task(
    *,
    type_key: str | None = None,
    task_key: str | None = None,
    process_units: int = 1,
    process_limit: int | None = None,
    write_all: str | Sequence[str] | None = None,
    dependencies: Dependency | Iterable[Dependency] | None = None,
    retries: int = 0,
    rescues: int = 3,
    timeout: float | None = None,
    executor: Executor = "thread",
    cron: str | Cron | Sequence[str | Cron] | None = None,
    retention: timedelta | Inherit | None = INHERIT,
) -> Callable[[F], F]: ...


def task(
    func: F | None = None,
    /,
    *,
    type_key: str | None = None,
    task_key: str | None = None,
    process_units: int = 1,
    process_limit: int | None = None,
    write_all: str | Sequence[str] | None = None,
    dependencies: Dependency | Iterable[Dependency] | None = None,
    retries: int = 0,
    rescues: int = 3,
    timeout: float | None = None,
    executor: Executor = "thread",
    cron: str | Cron | Sequence[str | Cron] | None = None,
    retention: timedelta | Inherit | None = INHERIT,
) -> F | Callable[[F], F]:
    """Registers a function as a task; the function stays directly callable.

    The type key defaults to the module's last name (a script's file name when run directly),
    the task key to the function's name."""

    def decorate(fn: F) -> F:
        definition = _define(
            fn,
            type_key=type_key,
            task_key=task_key,
            process_units=process_units,
            process_limit=process_limit,
            write_all=write_all,
            dependencies=dependencies,
            retries=retries,
            rescues=rescues,
            timeout=timeout,
            executor=executor,
            cron=cron,
            retention=retention,
        )
        registry.add(definition)
        fn.__jobmaster_task__ = definition  # type: ignore[attr-defined]
        return fn

    if func is not None:
        return decorate(func)
    return decorate


# ------------------------------------------------------------------------------------------------
# Building a definition
# ------------------------------------------------------------------------------------------------


def _define(
    fn: Callable[..., Any],
    *,
    type_key: str | None,
    task_key: str | None,
    process_units: int,
    process_limit: int | None,
    write_all: str | Sequence[str] | None,
    dependencies: Dependency | Iterable[Dependency] | None,
    retries: int,
    rescues: int,
    timeout: float | None,
    executor: str,
    cron: str | Cron | Sequence[str | Cron] | None = None,
    retention: timedelta | Inherit | None = INHERIT,
) -> TaskDefinition:
    if not callable(fn):
        raise TaskDefinitionError(f"@task needs a function, got {fn!r}")
    type_key = type_key or _module_key(fn)
    task_key = task_key or fn.__name__
    label = f"{type_key}.{task_key}"
    for what, key in (("type_key", type_key), ("task_key", task_key)):
        if not key or "." in key:
            raise TaskDefinitionError(f"task {label}: {what} must be non-empty and contain no '.'")
    is_async = inspect.iscoroutinefunction(fn)
    _check_int(label, "process_units", process_units, minimum=0)
    if process_limit is not None:
        _check_int(label, "process_limit", process_limit, minimum=1)
    _check_int(label, "retries", retries, minimum=0)
    _check_int(label, "rescues", rescues, minimum=0)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise TaskDefinitionError(f"task {label}: timeout must be a number of seconds > 0, got {timeout!r}")
    if executor not in ("thread", "process"):
        raise TaskDefinitionError(f"task {label}: executor must be 'thread' or 'process', got {executor!r}")
    if is_async and executor == "process":
        raise TaskDefinitionError(f"task {label}: executor='process' is for sync functions; async tasks run inline")
    if not isinstance(retention, Inherit) and retention is not None:
        refusal = retention_refusal(f"task {label}: retention", retention)
        if refusal:
            raise TaskDefinitionError(refusal)

    parameters = parameters_of(label, fn)
    names = {p.name for p in parameters}
    all_params = _write_all(label, write_all, parameters)
    deps = _dependencies(label, dependencies, names)
    crons = _crons(label, cron, parameters)
    doc = inspect.getdoc(fn)
    return TaskDefinition(
        func=fn,
        type_key=type_key,
        task_key=task_key,
        parameters=parameters,
        dependencies=deps,
        process_units=process_units,
        process_limit=process_limit,
        write_all=all_params,
        retries=retries,
        rescues=rescues,
        timeout=float(timeout) if timeout is not None else None,
        executor=executor,  # type: ignore[arg-type]
        crons=crons,
        retention=retention,
        is_async=is_async,
        description=doc.split("\n\n")[0].strip() if doc else None,
        origin=f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}",
    )


def retention_refusal(what: str, value: object, forever: bool = True) -> str | None:
    """Why ``value`` is no retention (a timedelta longer than zero), or None; ``forever``: None,
    keeping forever, is allowed too (the caller lets it through)."""
    if isinstance(value, timedelta) and value > timedelta(0):
        return None
    return f"{what} must be a timedelta > 0{' or None (keep forever)' if forever else ''}, got {value!r}"


def _crons(
    label: str, cron: str | Cron | Sequence[str | Cron] | None, parameters: tuple[Parameter, ...]
) -> tuple[Cron, ...]:
    """The task's schedules; each must give every required argument and no unknown one (a tick's
    job has exactly the Cron's arguments)."""
    try:
        crons = as_crons(cron)
    except TaskDefinitionError as exc:
        raise TaskDefinitionError(f"task {label}: {exc}") from None
    names = {p.name for p in parameters}
    for schedule in crons:
        missing = [p.name for p in parameters if p.required and p.name not in schedule.arguments]
        if missing:
            raise TaskDefinitionError(
                f"task {label}: cron {schedule.expression!r} does not give the required argument "
                f"{missing[0]!r}: Cron({schedule.expression!r}, arguments={{{missing[0]!r}: ...}})"
            )
        unknown = sorted(set(schedule.arguments) - names)
        if unknown:
            raise TaskDefinitionError(
                f"task {label}: cron {schedule.expression!r} gives an unknown argument {unknown[0]!r}"
            )
    return crons


def _module_key(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "__main__"
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            return str(spec.name).rsplit(".", 1)[-1]
        file = getattr(main, "__file__", None)
        if file:
            return Path(file).stem
    return module.rsplit(".", 1)[-1]


def _check_int(label: str, option: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TaskDefinitionError(f"task {label}: {option} must be an integer >= {minimum}, got {value!r}")


def _write_all(label: str, write_all: str | Sequence[str] | None, parameters: tuple[Parameter, ...]) -> tuple[str, ...]:
    if write_all is None:
        return ()
    names = [n.strip() for n in write_all.split(",")] if isinstance(write_all, str) else list(write_all)
    by_name = {p.name: p for p in parameters}
    for name in names:
        parameter = by_name.get(name)
        if parameter is None:
            raise TaskDefinitionError(f"task {label}: write_all names {name!r}, which is not a parameter")
        if parameter.options is None:
            raise TaskDefinitionError(
                f"task {label}: write_all parameter {name!r} has no options (annotate it with a list or Literal)"
            )
    return tuple(names)


def _dependencies(
    label: str, dependencies: Dependency | Iterable[Dependency] | None, names: set[str]
) -> tuple[Dependency, ...]:
    if dependencies is None:
        return ()
    deps = (dependencies,) if isinstance(dependencies, Dependency) else tuple(dependencies)
    for dep in deps:
        if not isinstance(dep, Dependency):
            raise TaskDefinitionError(f"task {label}: dependencies must be Dependency objects, got {dep!r}")
        for arg, value in dep.arguments.items():
            if isinstance(value, Same):
                if arg not in names:
                    raise TaskDefinitionError(
                        f"task {label}: {dep!r}: same for argument {arg!r}, but {label} has no parameter {arg!r}"
                    )
            else:
                check_json(label, arg, value, "dependency argument")
        if not isinstance(dep.task, str):
            check_dependency_arguments(label, dep, definition_of(dep.task))
    return deps


def _name_of(task: object) -> str:
    if isinstance(task, str):
        return repr(task)
    definition = getattr(task, "__jobmaster_task__", None)
    if isinstance(definition, TaskDefinition):
        return definition.key
    return getattr(task, "__qualname__", repr(task))
