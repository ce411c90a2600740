"""Tasks: the ``@task`` decorator, ``Dependency``, ``same``, parameter parsing and the registry."""

from __future__ import annotations

import graphlib
import inspect
import json
import logging
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from .errors import TaskDefinitionError
from .schedules import Cron, as_crons

__all__ = (
    "DEFAULT_HOURS",
    "Dependency",
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
_PARAM_HELP = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


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


@dataclass(frozen=True)
class Parameter:
    """One parameter of a task, as the SQL validation sees it."""

    name: str
    type: str  # "string" | "integer" | "number" | "boolean" | "array" | "object" | "any"
    required: bool
    default: Any = None
    options: tuple[Any, ...] | None = None
    nullable: bool = False
    help: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        data["nullable"] = self.nullable
        if not self.required:
            data["default"] = self.default
        if self.options is not None:
            data["options"] = list(self.options)
        if self.help:
            data["help"] = self.help
        return data


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
    is_async: bool = False
    description: str | None = None
    origin: str = field(default="", repr=False)

    @property
    def key(self) -> str:
        return f"{self.type_key}.{self.task_key}"

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def to_row(self) -> dict[str, Any]:
        """The tasks-table row deploy() writes."""
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

    def rows_to_deploy(self, deployed: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The tasks-table rows deploy() writes, once the definitions registered here have been
        checked as a whole against the ones already deployed (by key: rows with their
        ``parameters`` and ``dependencies``)."""
        definitions = list(self)
        check_definitions(definitions, deployed)
        return [definition.to_row() for definition in definitions]

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

    parameters = _parameters(label, fn)
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


def _parameters(label: str, fn: Callable[..., Any]) -> tuple[Parameter, ...]:
    signature = inspect.signature(fn)
    helps = _param_help(inspect.getdoc(fn) or "")
    parameters = []
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TaskDefinitionError(f"task {label}: parameter {p.name!r}: *args and **kwargs are not supported")
        if p.kind is p.POSITIONAL_ONLY:
            raise TaskDefinitionError(
                f"task {label}: parameter {p.name!r}: positional-only parameters are not supported"
            )
        annotation = p.annotation
        if isinstance(annotation, str):
            annotation = _evaluate(label, p.name, annotation, fn)
        json_type, nullable, options = _json_type(label, p.name, annotation)
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        if not required:
            _check_json(label, p.name, default, "default")
            if default is None and not nullable and json_type != "any":
                nullable = True  # `x: int = None` is an implicit Optional
            if options is not None and default not in options and default is not None:
                raise TaskDefinitionError(
                    f"task {label}: parameter {p.name!r}: default {default!r} is not one of {list(options)}"
                )
        parameters.append(
            Parameter(
                name=p.name,
                type=json_type,
                required=required,
                default=default,
                options=options,
                nullable=nullable,
                help=helps.get(p.name),
            )
        )
    return tuple(parameters)


def _evaluate(label: str, name: str, annotation: str, fn: Callable[..., Any]) -> Any:
    try:
        return eval(annotation, getattr(fn, "__globals__", {}), {"Literal": Literal})
    except Exception as exc:
        raise TaskDefinitionError(
            f"task {label}: parameter {name!r}: cannot evaluate annotation {annotation!r}: {exc}"
        ) from exc


_SIMPLE_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
    Any: "any",
    object: "any",
}


def _json_type(label: str, name: str, annotation: Any) -> tuple[str, bool, tuple[Any, ...] | None]:
    """(JSON type, nullable, options) of an annotation."""
    if annotation is inspect.Parameter.empty:
        return "any", True, None
    if isinstance(annotation, list | tuple):  # the seed's ['A', 'B', 'C']
        return _options_type(label, name, tuple(annotation)), False, tuple(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        options = typing.get_args(annotation)
        return _options_type(label, name, options), False, options
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(annotation))
        if len(members) == 1:
            json_type, _, member_options = _json_type(label, name, members[0])
            return json_type, nullable, member_options
        kinds = {_json_type(label, name, m)[0] for m in members}
        if kinds <= {"integer", "number"}:
            return "number", nullable, None
        return "any", nullable, None
    if annotation is None or annotation is type(None):
        return "any", True, None
    base = origin if origin is not None else annotation
    if base in (list, tuple, Sequence, typing.List, typing.Tuple):  # noqa: UP006
        return "array", False, None
    if base in (dict, Mapping, typing.Dict):  # noqa: UP006
        return "object", False, None
    if base in _SIMPLE_TYPES:
        json_type = _SIMPLE_TYPES[base]
        return json_type, json_type == "any", None  # None is an Any (and an object)
    raise TaskDefinitionError(
        f"task {label}: parameter {name!r}: annotation {annotation!r} is not a JSON type "
        "(use str, int, float, bool, list, dict, a Literal or a list of options)"
    )


def _options_type(label: str, name: str, options: tuple[Any, ...]) -> str:
    if not options:
        raise TaskDefinitionError(f"task {label}: parameter {name!r}: the list of options is empty")
    for option in options:
        _check_json(label, name, option, "option")
    if all(isinstance(o, bool) for o in options):
        return "boolean"
    if all(isinstance(o, int) and not isinstance(o, bool) for o in options):
        return "integer"
    if all(isinstance(o, int | float) and not isinstance(o, bool) for o in options):
        return "number"
    if all(isinstance(o, str) for o in options):
        return "string"
    return "any"


def _check_json(label: str, name: str, value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TaskDefinitionError(f"task {label}: parameter {name!r}: {what} {value!r} is not JSON") from exc


def _param_help(doc: str) -> dict[str, str]:
    helps: dict[str, str] = {}
    for line in doc.splitlines():
        match = _PARAM_HELP.match(line)
        if match:
            helps[match.group(1)] = match.group(2).strip()
    return helps


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
                _check_json(label, arg, value, "dependency argument")
        if not isinstance(dep.task, str):
            check_dependency_arguments(label, dep, definition_of(dep.task))
    return deps


def check_dependency_arguments(label: str, dep: Dependency, target: TaskDefinition) -> None:
    """Raises if the dependency specifies arguments its task does not take."""
    for arg in dep.arguments:
        if target.parameter(arg) is None:
            raise TaskDefinitionError(f"task {label}: {dep!r}: {target.key} takes no argument {arg!r}")


def _name_of(task: object) -> str:
    if isinstance(task, str):
        return repr(task)
    definition = getattr(task, "__jobmaster_task__", None)
    if isinstance(definition, TaskDefinition):
        return definition.key
    return getattr(task, "__qualname__", repr(task))


# ------------------------------------------------------------------------------------------------
# Checking a set of definitions (at deploy, against the tasks other services deployed)
# ------------------------------------------------------------------------------------------------


def check_definitions(
    definitions: Sequence[TaskDefinition], deployed: Mapping[tuple[str, str], Mapping[str, Any]]
) -> None:
    """Checks what only the whole set of tasks shows: unknown dependencies, arguments a dependency
    does not take, cycles; warns about dependencies whose required arguments stay unknown."""
    local = {(d.type_key, d.task_key): d for d in definitions}
    # (type_key, task_key) -> parameters as JSON dicts, for tasks defined here or elsewhere
    parameters: dict[tuple[str, str], list[dict[str, Any]]] = {
        key: _json(row["parameters"]) for key, row in deployed.items()
    }
    edges: dict[tuple[str, str], list[tuple[str, str]]] = {
        key: [(d["type_key"], d["task_key"]) for d in _json(row["dependencies"])] for key, row in deployed.items()
    }
    for key, definition in local.items():
        parameters[key] = [p.to_json() for p in definition.parameters]
        edges[key] = [dep.key for dep in definition.dependencies]

    for definition in definitions:
        for dep in definition.dependencies:
            target_key = dep.key
            if target_key not in parameters:
                raise TaskDefinitionError(
                    f"task {definition.key}: {dep!r}: unknown dependency {'.'.join(target_key)} "
                    "(neither registered in this process nor deployed)"
                )
            target = local.get(target_key)
            if target is not None:
                check_dependency_arguments(definition.key, dep, target)
            else:
                names = {p["name"] for p in parameters[target_key]}
                for arg in dep.arguments:
                    if arg not in names:
                        raise TaskDefinitionError(
                            f"task {definition.key}: {dep!r}: {'.'.join(target_key)} takes no argument {arg!r}"
                        )
            own = {p.name for p in definition.parameters}
            for param in parameters[target_key]:
                name = param["name"]
                if param.get("required") and name not in dep.arguments and name not in own:
                    logger.warning(
                        "task %s: %r: required argument %r of %s is neither specified nor an argument "
                        "of %s; jobs that need to create this dependency will fail",
                        definition.key,
                        dep,
                        name,
                        ".".join(target_key),
                        definition.key,
                    )
    check_cycles(edges)


def check_cycles(edges: Mapping[tuple[str, str], Iterable[tuple[str, str]]]) -> None:
    """Raises if tasks depend on each other in a circle (``edges``: task -> the tasks it depends
    on), naming the tasks of the circle in order: ``a -> b -> a`` reads "a depends on b"."""
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as exc:
        # each node of the cycle graphlib reports is depended on by the next one; read backwards
        cycle = reversed(exc.args[1])
        raise TaskDefinitionError("dependency cycle: " + " -> ".join(".".join(k) for k in cycle)) from None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
