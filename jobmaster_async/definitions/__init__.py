"""Task definitions: what ``@task`` records (task.py), built and checked from a function
(build.py: options, parameters.py: its signature), dependencies between tasks
(dependencies.py), checks of a whole set at deploy (checks.py), ``Cron`` schedules
(schedules.py) and the registries that hold them (registry.py). Nothing here knows the database:
deploy() writes the rows these hand over."""

from __future__ import annotations

from .checks import check_cycles, check_definitions, check_dependency_arguments
from .dependencies import DEFAULT_HOURS, Dependency, Same, same
from .parameters import Parameter
from .registry import Registry, TaskDecorator, registry, task
from .schedules import Cron
from .task import INHERIT, Inherit, TaskDefinition, definition_of, retention_refusal

__all__ = (
    "DEFAULT_HOURS",
    "INHERIT",
    "Cron",
    "Dependency",
    "Inherit",
    "Parameter",
    "Registry",
    "Same",
    "TaskDecorator",
    "TaskDefinition",
    "check_cycles",
    "check_definitions",
    "check_dependency_arguments",
    "definition_of",
    "registry",
    "retention_refusal",
    "same",
    "task",
)
