"""The recorder: outcomes of finished jobs, buffered and written in batches.

Jobs finish one by one; their outcomes are written together, at most ``RECORD_BATCH`` per
statement (complete_jobs() finds each job's values in the batch arrays by position, so a
statement's cost grows with the square of its batch). While the database is away the outcomes
stay buffered and the recorder retries with backoff: a finished job's outcome is never dropped by
a fault (fencing alone may drop it: worker.outcomes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence

from .executors import Outcome
from .outage import Outage, Service
from .outcomes import Claim
from .signals import Signal

__all__ = ("RECORD_BATCH", "Recorder")

#: Outcomes recorded per statement at most.
RECORD_BATCH = 100

Record = Callable[[Sequence[tuple[Claim, Outcome]]], Awaitable[set[uuid.UUID]]]


class Recorder:
    """``add()`` outcomes; ``run()`` records them until cancelled; ``flush()`` records what is
    buffered now. ``on_recorded`` gets each batch written (its outcomes, fenced out or not);
    ``recorded`` counts them."""

    def __init__(self, record: Record, outage: Outage, on_recorded: Callable[[list[Claim]], None]) -> None:
        self._record = record
        self.outage = outage
        self.on_recorded = on_recorded
        self.recorded = Signal()
        self._outcomes: list[tuple[Claim, Outcome]] = []
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        return len(self._outcomes)

    def add(self, claim: Claim, outcome: Outcome) -> None:
        self._outcomes.append((claim, outcome))
        self._ready.set()

    async def run(self) -> None:
        service = Service(self.outage, "recording outcomes")
        while True:
            await self._ready.wait()
            self._ready.clear()
            await service.run(self.flush)

    async def flush(self) -> None:
        """Records the buffered outcomes until none is left; on failure the unrecorded ones stay
        buffered (and the error is raised)."""
        async with self._lock:
            while self._outcomes:
                batch, self._outcomes = self._outcomes[:RECORD_BATCH], self._outcomes[RECORD_BATCH:]
                try:
                    await self._record(batch)
                except BaseException:
                    self._outcomes[:0] = batch
                    raise
                self.on_recorded([claim for claim, _ in batch])
                self.recorded.fire(len(batch))
