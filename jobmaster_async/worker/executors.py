"""Runs one task function: async inline, sync in a thread or a process; timeouts enforced."""

from __future__ import annotations

import functools
import json
import logging
import traceback
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_process
import anyio.to_thread

from ..tasks import TaskDefinition

__all__ = ("Outcome", "run_task")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How a run ended: a JSON result, or an error."""

    ok: bool
    result: Any = None
    error_type: str | None = None
    message: str | None = None
    traceback: str | None = None

    @classmethod
    def failure(cls, exc: BaseException) -> Outcome:
        return cls(
            ok=False,
            error_type=type(exc).__qualname__,
            message=str(exc) or type(exc).__qualname__,
            traceback="".join(traceback.format_exception(exc)),
        )


async def run_task(
    definition: TaskDefinition,
    arguments: dict[str, Any],
    *,
    thread_limiter: anyio.CapacityLimiter | None = None,
) -> Outcome:
    """Runs the task and returns its outcome; never raises for the task's own errors."""
    func = definition.func
    try:
        with anyio.move_on_after(definition.timeout) as scope:
            if definition.is_async:
                result = await func(**arguments)
            elif definition.executor == "process":
                result = await anyio.to_process.run_sync(functools.partial(func, **arguments), cancellable=True)
            else:
                result = await anyio.to_thread.run_sync(
                    functools.partial(func, **arguments), abandon_on_cancel=True, limiter=thread_limiter
                )
    except Exception as exc:
        return Outcome.failure(exc)
    if scope.cancelled_caught:
        if not definition.is_async and definition.executor == "thread":
            logger.warning(
                "task %s timed out after %gs; its thread runs on, abandoned", definition.key, definition.timeout
            )
        return Outcome.failure(TimeoutError(f"task {definition.key} timed out after {definition.timeout:g}s"))
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return Outcome.failure(TypeError(f"task {definition.key} returned a value that is not JSON: {exc}"))
    return Outcome(ok=True, result=result)
