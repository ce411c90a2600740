"""Checking task definitions: a dependency's arguments against its task, and the whole set of a
process's tasks at deploy, against the tasks other services deployed (unknown dependencies,
arguments a dependency does not take, cycles, dependencies that can never be created)."""

from __future__ import annotations

import graphlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import TaskDefinitionError
from .dependencies import Dependency
from .task import TaskDefinition

__all__ = ("check_cycles", "check_definitions", "check_dependency_arguments")

logger = logging.getLogger("jobmaster_async.tasks")


def check_dependency_arguments(label: str, dep: Dependency, target: TaskDefinition) -> None:
    """Raises if the dependency specifies arguments its task does not take."""
    for arg in dep.arguments:
        if target.parameter(arg) is None:
            raise TaskDefinitionError(f"task {label}: {dep!r}: {target.key} takes no argument {arg!r}")


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
                    _unknowable_argument(definition, dep, name, ".".join(target_key))
    check_cycles(edges)


def _unknowable_argument(definition: TaskDefinition, dep: Dependency, name: str, target: str) -> None:
    """A dependency that cannot be created when missing: a required argument of it is neither
    given by the Dependency nor an argument of the dependent. Likely a mistake, so a warning at
    each deploy (the original README's ``baz`` shows it on purpose: README "Tasks")."""
    logger.warning(
        "task %s: %r cannot be created when missing: its required argument %r is neither given by the "
        "Dependency nor an argument of %s; so a %s job is inserted as failed when no fresh or active %s "
        "job matches it",
        definition.key,
        dep,
        name,
        definition.key,
        definition.key,
        target,
    )


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
