"""Tasks: the ``@task`` decorator, ``Dependency``, ``same`` and the registry, as they were
imported before the definitions became a package (``definitions/``): the same names, re-exported."""

from __future__ import annotations

from .definitions import (
    DEFAULT_HOURS,
    INHERIT,
    Dependency,
    Inherit,
    Parameter,
    Registry,
    Same,
    TaskDefinition,
    check_cycles,
    check_definitions,
    definition_of,
    registry,
    retention_refusal,
    same,
    task,
)

__all__ = (
    "DEFAULT_HOURS",
    "INHERIT",
    "Dependency",
    "Inherit",
    "Parameter",
    "Registry",
    "Same",
    "TaskDefinition",
    "check_cycles",
    "check_definitions",
    "definition_of",
    "registry",
    "retention_refusal",
    "same",
    "task",
)
