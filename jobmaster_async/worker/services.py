"""The one shape of the worker's background activities (and the dashboard's poller).

A service is an object whose ``run(*, task_status)`` runs until cancelled, in a task group of
its owner (the dispatcher's for run_forever's services: worker.dispatcher). It calls
``task_status.started()`` once it is under way; ``start`` starts services in a group in order,
each once the previous one started. A service says what happened through typed events
(events.py), never through callbacks of its owner, and keeps no task of its own outside a
task group.

``Detached`` runs a service whose life no caller's task group spans (pop_job's heartbeat, from
the first job popped to the last one executed): in a task group of its own, in the one task of
the package that no task group owns, started and stopped by its owner.

``spawn`` is for work a service starts and may have to end on its own (a job put back, an
abandoned thread's marks): a task of the group with its own cancel scope, which can be
cancelled alone and awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.abc

__all__ = ("Detached", "Service", "Spawned", "spawn", "start")

logger = logging.getLogger(__name__)


class Service(Protocol):
    """A background activity: ``run`` until cancelled, ``task_status.started()`` once under way."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...


async def start(group: anyio.abc.TaskGroup, *services: Service) -> None:
    """Starts ``services`` in ``group``, each once the one before said it started."""
    for service in services:
        await group.start(service.run)


class Spawned:
    """A task of a group that can be cancelled alone (``cancel``) and awaited (``wait``)."""

    __slots__ = ("_done", "scope")

    def __init__(self, shield: bool) -> None:
        self.scope = anyio.CancelScope(shield=shield)
        self._done = anyio.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        self.scope.cancel()

    async def wait(self) -> None:
        await self._done.wait()


def spawn(group: anyio.abc.TaskGroup, work: Callable[[], Awaitable[object]], *, shield: bool = False) -> Spawned:
    """Runs ``work()`` in ``group``. ``shield``: cancelling the group (or a scope around it) does
    not end it, only its own ``cancel()`` does (the group waits for it: cancel it before)."""
    spawned = Spawned(shield)

    async def run() -> None:
        try:
            with spawned.scope:
                await work()
        finally:
            spawned._done.set()

    group.start_soon(run)
    return spawned


class Detached:
    """Runs ``service`` in a task group of its own, from ``start()`` (if it is not running) until
    ``cancel()`` or ``stop()`` (which waits for it to end), or until its ``run`` returns."""

    def __init__(self, service: Service, name: str) -> None:
        self.service = service
        self.name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A detached service that raised says so (no caller awaits it to see the error)."""
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s ended on an error", self.name, exc_info=task.exception())

    async def _run(self) -> None:
        async with anyio.create_task_group() as group:
            await group.start(self.service.run)

    def cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        task = self._task
        self.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
