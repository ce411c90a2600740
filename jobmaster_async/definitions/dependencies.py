"""Dependencies between tasks: ``Dependency`` (a task that must have run, with matching arguments,
within some hours) and ``same`` (the dependent job's value of an argument, with arithmetic).

A Dependency names its task by the function ``@task`` decorated or by ``"type_key.task_key"``;
it reads the definition the decorator attached to the function (``__jobmaster_task__``), so this
module needs nothing from the others of the package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import TaskDefinitionError

__all__ = ("DEFAULT_HOURS", "Dependency", "Same", "attached_key", "name_of", "same")

DEFAULT_HOURS = 720.0


def attached_key(func: object) -> tuple[str, str] | None:
    """(type_key, task_key) of the definition ``@task`` attached to ``func``, or None."""
    definition = getattr(func, "__jobmaster_task__", None)
    type_key, task_key = getattr(definition, "type_key", None), getattr(definition, "task_key", None)
    if isinstance(type_key, str) and isinstance(task_key, str):
        return type_key, task_key
    return None


def name_of(task: object) -> str:
    """How messages name a task given as a function or a string."""
    if isinstance(task, str):
        return repr(task)
    key = attached_key(task)
    if key is not None:
        return ".".join(key)
    return getattr(task, "__qualname__", repr(task))


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
            raise TaskDefinitionError(f"Dependency({name_of(task)}): hours must be a number > 0, got {hours!r}")
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
        key = attached_key(self.task)
        if key is None:
            raise TaskDefinitionError(f"{name_of(self.task)} is not a task: decorate it with @task")
        return key

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
        return f"Dependency({name_of(self.task)}, {self.hours:g}{args})"
