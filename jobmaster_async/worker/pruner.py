"""Retention in the background: ``run_forever`` deletes finished jobs older than their task's
retention (DESIGN 9 "Retention"; the rules are in sql/functions/retention.sql).

Every ``prune_interval`` (jittered, so that a fleet does not try in step) a worker prunes in
batches of ``BATCH`` jobs, each its own short transaction holding the schema's prune lock (a
transaction-level advisory lock), so one worker at a time prunes and no batch holds locks for
long. It stops when a batch comes back short (nothing more is due) or when another worker holds
the lock (that worker prunes). Between batches it pauses as long as the batch took (``DUTY``
times; ``PAUSE`` at least), so that pruning a large backlog takes at most half of one
connection's time and claims and outcomes go between batches (benchmarks/retention.py measures
the cost beside claims; benchmarks/soak.py whether it keeps up).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc

from ..events import Pruned
from .outage import Outage, Retrier

__all__ = ("BATCH", "DUTY", "PAUSE", "Pruner", "Pruning")

logger = logging.getLogger(__name__)

#: jobs deleted per transaction
BATCH = 500
#: the pause after a batch, as a multiple of the time it took
DUTY = 1.0
#: seconds between two batches of one pruning, at least
PAUSE = 0.02


@dataclass(frozen=True)
class Pruning:
    """One pruning that deleted jobs: when (wall clock), how many, in how many batches."""

    started: float
    ended: float
    deleted: int
    batches: int


class Pruner:
    """A service (worker.services). ``prune_batch(max_rows)`` deletes one batch if no other
    worker prunes (else None); each pruning that deleted jobs is emitted on the outage's events
    (``Pruned``), and ``prunings`` keeps the last 1,000 of those."""

    def __init__(self, interval: float, prune_batch: Callable[[int], Awaitable[int | None]], outage: Outage) -> None:
        self.interval = interval
        self._prune_batch = prune_batch
        self.outage = outage
        self.prunings: deque[Pruning] = deque(maxlen=1000)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Prunes every (jittered) interval until cancelled; database faults are retried with
        backoff. Does nothing when the interval is 0."""
        task_status.started()
        if not self.interval:
            return
        service = Retrier(self.outage, "pruner")
        while True:
            await asyncio.sleep(self.interval * random.uniform(0.5, 1.0))
            await service.run(self.prune)

    async def prune(self) -> int:
        """One pruning: batches until none is left or another worker prunes; how many went."""
        total, batches, started = 0, 0, time.time()
        while True:
            began = time.monotonic()
            deleted = await self._prune_batch(BATCH)
            batches += 1
            if deleted is None:
                logger.debug("another worker is pruning")
                break
            total += deleted
            if deleted < BATCH:
                break
            await asyncio.sleep(max(PAUSE, DUTY * (time.monotonic() - began)))
        if total:
            ended = time.time()
            logger.info(
                "pruned %d finished jobs past their retention in %d batches, %.1f s", total, batches, ended - started
            )
            self.prunings.append(Pruning(started, ended, total, batches))
            self.outage.events.emit(Pruned(total))
        return total
