"""A worker cut off from the database (worker.dispatcher): one that could not heartbeat for half
its ``heartbeat_lapse`` stops claiming, cancels its async jobs, kills its process jobs and puts
them back as soon as it can; it claims again once a heartbeat is recorded, and rescues others'
jobs half a lapse later.
"""

from __future__ import annotations

import asyncio
import logging
import time

import anyio.abc
import asyncpg

from ..events import Events, HeartbeatRecorded
from ..settings import JobMasterSettings
from .outage import Retrier
from .outcomes import Claim
from .services import Spawned, spawn
from .shutdown import Shutdown, in_thread

__all__ = ("CutOff",)

logger = logging.getLogger(__name__)


class CutOff(Shutdown):
    """The heartbeat's side of one run_forever call."""

    settings: JobMasterSettings
    events: Events
    _group: anyio.abc.TaskGroup
    _started: float
    _cut_off: bool
    _back_since: float | None

    # -- the heartbeat -------------------------------------------------------------------------

    def _heartbeating(self) -> bool:
        """May this worker claim? Only while its last heartbeat is younger than half its lapse:
        a job it claimed would not be rescued by another before this worker noticed being cut
        off and stopped it."""
        age = time.monotonic() - self.backend.last_beat
        return self.backend.registered and not self._cut_off and age < self.settings.heartbeat_lapse / 2

    def _may_rescue(self) -> bool:
        """Rescue the jobs of workers whose heartbeat lapsed? Only while this worker heartbeats,
        and not in the first half lapse after it was cut off: the same fault (a database outage,
        max_connections filled) most likely cut the others off too, and they get that time to
        heartbeat again (their reconnection is retried at the heartbeat's pace: worker.listener)
        before their jobs, some finished and their outcomes not yet recorded, are taken for lost."""
        if not self._heartbeating():
            return False
        return self._back_since is None or time.monotonic() - self._back_since >= self.settings.heartbeat_lapse / 2

    async def _beat(self, conn: asyncpg.Connection) -> None:
        """The listener's heartbeat, on its connection; a worker cut off claims again."""
        heartbeating = self._heartbeating()
        await self.backend.beat_on(conn)
        # cut off meanwhile (the half lapse passed while this heartbeat was on its way): the
        # dispatcher waits for a wake-up with no timeout then, so it must be woken below too
        heartbeating = heartbeating and not self._cut_off
        if self._cut_off:
            self._cut_off = False
            self._back_since = time.monotonic()
            logger.warning(
                "worker %s heartbeats again: it claims jobs again (and rescues others' in %gs)",
                self.backend.worker_id,
                self.settings.heartbeat_lapse / 2,
            )
        if not heartbeating:
            self._wake.set()

    async def _watch_heartbeat(self) -> None:
        """Stops the jobs that can be stopped once no heartbeat was recorded for half the lapse
        (since the last one, or since the start)."""
        half = self.settings.heartbeat_lapse / 2
        while True:
            if self._cut_off:
                await self.events.next(HeartbeatRecorded)
                continue
            since = max(self.backend.last_beat, self._started)
            left = since + half - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
                continue
            self._cut_off = True
            running = [claim for _, claim in self._running.values()]
            threads = sum(1 for claim in running if in_thread(claim))
            in_async = sum(1 for claim in running if claim.definition.is_async)
            logger.warning(
                "worker %s could not heartbeat for %.1fs (half its heartbeat_lapse of %gs): it stops claiming, "
                "cancels its %d async jobs and kills its %d process jobs, and puts them back as soon as it "
                "can; %d thread jobs run on (a thread cannot be stopped: they run twice if another worker "
                "rescues them once the lapse passed)",
                self.backend.worker_id,
                time.monotonic() - since,
                self.settings.heartbeat_lapse,
                in_async,
                len(running) - threads - in_async,
                threads,
            )
            self._stop_jobs(running)

    def _stop_jobs(self, claims: list[Claim]) -> None:
        """Cancels the async jobs among ``claims`` and kills the process ones (a cancelled
        process job's process is killed: worker.executors), then puts them back."""
        stopping = []
        for claim in claims:
            running = self._running.get(claim.job_id)
            if running is not None and not in_thread(claim):
                running[0].cancel()
                stopping.append(running)
        if stopping:
            putting_back = spawn(self._group, lambda: self._put_back(stopping, putting_back))
            self._putting_back.add(putting_back)

    async def _put_back(self, stopping: list[tuple[asyncio.Task[None], Claim]], putting_back: Spawned) -> None:
        """Once the jobs stopped, puts those that ended without an outcome back to waiting, retried
        until the database answers (a job rescued meanwhile is no longer this worker's: fencing
        leaves it alone). Their slots stay taken until then."""
        try:
            await self._put_back_stopped(stopping)
        finally:
            self._putting_back.discard(putting_back)

    async def _put_back_stopped(self, stopping: list[tuple[asyncio.Task[None], Claim]]) -> None:
        await asyncio.wait([task for task, _ in stopping])
        stopped = [claim for task, claim in stopping if task.cancelled()]
        for claim in stopped:
            self._running.pop(claim.job_id, None)
            self._stopped[claim.job_id] = claim
        if stopped:
            ids, attempts = [c.job_id for c in stopped], [c.attempts for c in stopped]
            await Retrier(self.outage, "putting stopped jobs back").run(lambda: self._release(ids, attempts))
            logger.info("%d jobs stopped while this worker could not heartbeat are back to waiting", len(stopped))
