"""Retention in the background: ``run_forever`` deletes finished jobs older than their task's
retention (DESIGN 9 "Retention"; the rules are in sql/functions/retention.sql).

Every ``prune_interval`` (jittered, so that a fleet does not try in step) a worker prunes in
batches, each its own short transaction holding the schema's prune lock (a transaction-level
advisory lock), so one worker at a time prunes and no batch holds locks for long. It stops when a
batch comes back short (nothing more is due) or when another worker holds the lock (that worker
prunes). Between batches it pauses as long as the batch took (``DUTY`` times; ``PAUSE`` at
least), so that pruning a large backlog takes at most half of one connection's time and claims
and outcomes go between batches. A batch is paced by what the server can spare: one that took
longer than ``TARGET`` (the server is busy: claims are slowing down too) halves the next, down
to ``MIN_BATCH`` jobs; one that took under half of it doubles the next, up to ``BATCH``
(benchmarks/retention.py measures the cost beside claims; benchmarks/soak.py whether it keeps up).
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

__all__ = ("BATCH", "DUTY", "MIN_BATCH", "PAUSE", "TARGET", "Pruner", "Pruning", "next_batch")

logger = logging.getLogger(__name__)

#: jobs deleted per transaction, at most
BATCH = 500
#: and at least
MIN_BATCH = 50
#: seconds a batch should take: longer halves the next one, under half of it doubles it
TARGET = 0.1
#: the pause after a batch, as a multiple of the time it took
DUTY = 1.0
#: seconds between two batches of one pruning, at least
PAUSE = 0.02


def next_batch(size: int, took: float) -> int:
    """The size of the batch after one of ``size`` jobs that took ``took`` seconds."""
    if took > TARGET:
        return max(MIN_BATCH, size // 2)
    if took < TARGET / 2:
        return min(BATCH, size * 2)
    return size


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
        #: the size of the next batch (paced: next_batch); a pruning starts where the last ended
        self.batch = BATCH

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
            began, size = time.monotonic(), self.batch
            deleted = await self._prune_batch(size)
            took = time.monotonic() - began
            batches += 1
            if deleted is None:
                logger.debug("another worker is pruning")
                break
            total += deleted
            self.batch = next_batch(size, took)
            if deleted < size:
                break
            await asyncio.sleep(max(PAUSE, DUTY * took))
        if total:
            ended = time.time()
            logger.info(
                "pruned %d finished jobs past their retention in %d batches, %.1f s", total, batches, ended - started
            )
            self.prunings.append(Pruning(started, ended, total, batches))
            self.outage.events.emit(Pruned(total))
        return total
