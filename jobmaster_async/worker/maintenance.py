"""Maintenance: this worker's heartbeat, and the rescue of lost workers' jobs.

A worker holding jobs heartbeats every ``heartbeat_interval``; a worker whose heartbeat is older
than its ``heartbeat_lapse`` is lost, and every ``rescue_interval`` (jittered, so that a fleet
does not rescue in step) a worker puts the jobs of lost workers back (rescue_jobs() in SQL: one
rescuer per lost worker). Both are services (worker.services): ``Heartbeat`` and ``Rescuer``.
``run_forever`` runs the rescuer (its heartbeat goes on the LISTEN connection: worker.listener);
``pop_job`` runs the heartbeat while it holds jobs and rescues when due before claiming, so that
a deployment that only pops recovers lost jobs too.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from ..events import Events, Rescued
from ..settings import JobMasterSettings
from .outage import Outage, Retrier

__all__ = ("Heartbeat", "Maintenance", "Rescuer")

logger = logging.getLogger(__name__)


class Maintenance:
    """``beat`` records this worker's heartbeat; ``rescue`` puts lost workers' jobs back and says
    how many; ``last_beat`` is the monotonic time of the last heartbeat recorded. Each rescue
    that put jobs back is emitted on ``events`` (``Rescued``)."""

    def __init__(
        self,
        settings: JobMasterSettings,
        beat: Callable[[], Awaitable[None]],
        rescue: Callable[[], Awaitable[int]],
        last_beat: Callable[[], float],
        events: Events,
    ) -> None:
        self.settings = settings
        self.beat = beat
        self._rescue = rescue
        self._last_beat = last_beat
        self._last_rescue = -math.inf
        self.events = events

    async def rescue_if_due(self) -> int:
        """Rescues if a rescue interval passed since the last one (pop_job's way)."""
        if time.monotonic() - self._last_rescue < self.settings.rescue_interval:
            return 0
        return await self.rescue()

    async def rescue(self) -> int:
        """Puts back the jobs of lost workers, unless this worker's own heartbeat lapsed (cut off
        from the database for a while, it would take itself for lost)."""
        self._last_rescue = time.monotonic()
        own_lapse = time.monotonic() - self._last_beat()
        if self._last_beat() > 0 and own_lapse >= self.settings.heartbeat_lapse:
            return 0
        rescued = await self._rescue()
        if rescued:
            logger.warning("rescued %d jobs of workers whose heartbeat lapsed", rescued)
            self.events.emit(Rescued(rescued))
        return rescued


class Heartbeat:
    """A service: heartbeats every ``heartbeat_interval`` until cancelled; database faults are
    retried with backoff."""

    def __init__(self, maintenance: Maintenance, outage: Outage) -> None:
        self.maintenance = maintenance
        self.outage = outage

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        retrier = Retrier(self.outage, "heartbeat")
        task_status.started()
        while True:
            await anyio.sleep(self.maintenance.settings.heartbeat_interval)
            await retrier.run(self.maintenance.beat)


class Rescuer:
    """A service: rescues every (jittered) rescue interval until cancelled, when
    ``heartbeating()`` says this worker's own heartbeat is fresh (run_forever's: it beat, less
    than half the lapse ago; a worker cut off from its start would take itself for lost)."""

    def __init__(
        self, maintenance: Maintenance, outage: Outage, heartbeating: Callable[[], bool] = lambda: True
    ) -> None:
        self.maintenance = maintenance
        self.outage = outage
        self.heartbeating = heartbeating

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        retrier = Retrier(self.outage, "rescuer")

        async def rescue_if_heartbeating() -> None:
            # asked again at every try: a rescue retried across an outage must not run once the
            # database is back before this worker may rescue again
            if self.heartbeating():
                await self.maintenance.rescue()

        task_status.started()
        while True:
            await anyio.sleep(self.maintenance.settings.rescue_interval * random.uniform(0.5, 1.0))
            await retrier.run(rescue_if_heartbeating)
