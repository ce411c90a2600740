"""Task parameters: what a task's signature says its jobs' arguments are (JSON type, required or
defaulted, options, nullability, help from the docstring), as the SQL validation sees them."""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import TaskDefinitionError

__all__ = ("Parameter", "check_json", "parameters_of")

_PARAM_HELP = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


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


def parameters_of(label: str, fn: Callable[..., Any]) -> tuple[Parameter, ...]:
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
            check_json(label, p.name, default, "default")
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
        check_json(label, name, option, "option")
    if all(isinstance(o, bool) for o in options):
        return "boolean"
    if all(isinstance(o, int) and not isinstance(o, bool) for o in options):
        return "integer"
    if all(isinstance(o, int | float) and not isinstance(o, bool) for o in options):
        return "number"
    if all(isinstance(o, str) for o in options):
        return "string"
    return "any"


def check_json(label: str, name: str, value: Any, what: str) -> None:
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
