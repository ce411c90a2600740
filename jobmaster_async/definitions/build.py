"""Building a TaskDefinition from a function and ``@task``'s options, each checked with a message
naming the task and the option."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..errors import TaskDefinitionError
from .checks import check_dependency_arguments
from .dependencies import Dependency, Same
from .parameters import Parameter, check_json, parameters_of
from .schedules import Cron, as_crons
from .task import INHERIT, Executor, Inherit, TaskDefinition, definition_of, retention_refusal

__all__ = ("define",)


def define(
    fn: Callable[..., Any],
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
) -> TaskDefinition:
    """The definition of ``fn`` with these options: ``@task``'s keyword arguments are this
    function's (registry.TaskDecorator takes its signature), checked here."""
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
        executor=executor,
        crons=crons,
        retention=retention,
        is_async=is_async,
        description=doc.split("\n\n")[0].strip() if doc else None,
        origin=f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}",
    )


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
