"""The recorder: outcomes of finished jobs, buffered and written in batches.

Jobs finish one by one; their outcomes are written together, at most ``RECORD_BATCH`` per
statement (complete_jobs() finds each job's values in the batch arrays by position, so a
statement's cost grows with the square of its batch) and at most ``RECORD_BATCH_BYTES`` of
results, messages and tracebacks (one outcome alone may be more: worker.bounds bounds it). While
the database is away the outcomes stay buffered and the recorder retries with backoff: a finished
job's outcome is never dropped by a fault (fencing alone may drop it: worker.outcomes).

Every statement has the round trip's deadline (``connection_timeout``), so recording never waits
longer than that at a time. A statement that times out (that deadline, or the server's
``statement_timeout`` / ``lock_timeout``) is retried like a fault, with backoff, but in batches
half as large each time (twice as large again after each success once the
outcomes of the batch that timed out are recorded), so that one slow outcome never blocks the
others. An outcome of more than ``SLOW_OUTCOME_BYTES`` that times out alone goes to the back of
the buffer; timing out again after others were recorded meanwhile (so the database answers: not a
lock, not a lost network), it is replaced by a failure saying so (worker.outcomes.unrecordable).
A refused statement is split by worker.outcomes itself.

Each outcome written (or dropped by fencing) is said on the worker's events (events.py:
``Completed``, ``Retried`` or ``Failed``): the dispatcher frees its slot then.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.abc

from ..db.faults import fault_name, timed_out
from ..events import Completed, Failed, JobFinished, Retried
from .executors import Outcome
from .outage import Outage, Retrier
from .outcomes import Claim, outcome_name, outcome_size, unrecordable

__all__ = ("RECORD_BATCH", "RECORD_BATCH_BYTES", "SLOW_OUTCOME_BYTES", "Recorder")

logger = logging.getLogger(__name__)

#: Outcomes recorded per statement at most.
RECORD_BATCH = 100
#: Bytes of results, messages and tracebacks per statement at most (but for one outcome alone).
RECORD_BATCH_BYTES = 8 * 1024 * 1024
#: An outcome this large that times out alone is replaced by a failure saying so: its size is
#: the likely cause. A smaller one is retried as long as it takes (a lock, a slow server).
SLOW_OUTCOME_BYTES = 64 * 1024

Record = Callable[[Sequence[tuple[Claim, Outcome]]], Awaitable[set[uuid.UUID]]]


def finished(claim: Claim, outcome: Outcome, backoff: float) -> JobFinished:
    """The event saying that ``outcome`` was recorded."""
    key = claim.definition.key
    name = outcome_name(claim, outcome, backoff)
    if name == "completed":
        return Completed(claim.job_id, key)
    return (Retried if name == "retried" else Failed)(claim.job_id, key, outcome.error_type)


class Recorder:
    """A service (worker.services): ``add()`` outcomes; ``run()`` records them until cancelled;
    ``flush()`` records what is buffered now. Each outcome written (fenced out or not) is emitted
    on the outage's events (``retry_backoff`` names retries as the outcome's log line does)."""

    def __init__(self, record: Record, outage: Outage, retry_backoff: float = 1.0) -> None:
        self._record = record
        self.outage = outage
        self.events = outage.events
        self.retry_backoff = retry_backoff
        self._outcomes: list[tuple[Claim, Outcome]] = []
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        #: outcomes per statement now: RECORD_BATCH, halved by each timeout, doubled by each
        #: success once the outcomes of the batch that timed out last are all recorded
        self.batch_limit = RECORD_BATCH
        self._suspects: set[uuid.UUID] = set()
        #: statements that succeeded so far; for each large outcome that timed out alone, that
        #: count then (others recorded since: its size is the cause, not the database)
        self._statements = 0
        self._slow: dict[uuid.UUID, int] = {}

    @property
    def pending(self) -> int:
        return len(self._outcomes)

    def add(self, claim: Claim, outcome: Outcome) -> None:
        self._outcomes.append((claim, outcome))
        self._ready.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        retrier = Retrier(self.outage, "recording outcomes")
        task_status.started()
        while True:
            await self._ready.wait()
            self._ready.clear()
            await retrier.run(self.flush)

    def _next_batch(self) -> list[tuple[Claim, Outcome]]:
        """The first outcomes buffered, within ``batch_limit`` and RECORD_BATCH_BYTES (one at least)."""
        count, size = 0, 0
        for _, outcome in self._outcomes[: self.batch_limit]:
            size += outcome_size(outcome)
            if count and size > RECORD_BATCH_BYTES:
                break
            count += 1
        batch, self._outcomes = self._outcomes[:count], self._outcomes[count:]
        return batch

    async def flush(self) -> None:
        """Records the buffered outcomes until none is left; on failure the unrecorded ones stay
        buffered (and the error is raised)."""
        async with self._lock:
            while self._outcomes:
                batch = self._next_batch()
                try:
                    await self._record(batch)
                except BaseException as exc:
                    self._outcomes[:0] = batch
                    if isinstance(exc, Exception) and timed_out(exc):
                        self._timed_out(batch, exc)
                    raise
                self._statements += 1
                if self._slow:
                    for claim, _ in batch:
                        self._slow.pop(claim.job_id, None)
                if self.batch_limit < RECORD_BATCH:
                    self._suspects.difference_update(claim.job_id for claim, _ in batch)
                    if not self._suspects:
                        self.batch_limit = min(RECORD_BATCH, 2 * self.batch_limit)
                for claim, outcome in batch:
                    self.events.emit(finished(claim, outcome, self.retry_backoff))

    def _timed_out(self, batch: list[tuple[Claim, Outcome]], exc: Exception) -> None:
        """A statement of ``batch`` took too long: smaller batches from now on. A large outcome
        that times out alone goes to the back of the buffer; if it times out again after others
        were recorded meanwhile (the database answers: its size is the cause, not a lock or a
        lost network), it is replaced by a failure saying so."""
        self._suspects = {claim.job_id for claim, _ in batch}
        if len(batch) > 1:
            self.batch_limit = max(1, len(batch) // 2)
            logger.info("recording %d outcomes timed out: batches of %d from now on", len(batch), self.batch_limit)
            return
        [(claim, outcome)] = batch
        size = outcome_size(outcome)
        if size <= SLOW_OUTCOME_BYTES or fault_name(exc).startswith("lock"):
            return  # not the outcome's doing (a row lock held elsewhere): retried as long as it takes
        before = self._slow.get(claim.job_id)
        if before is None or before == self._statements:
            self._slow[claim.job_id] = self._statements
            if len(self._outcomes) > 1:
                self._outcomes.append(self._outcomes.pop(0))
            return
        del self._slow[claim.job_id]
        logger.error(
            "the outcome of job %s (%s, %d bytes) could not be recorded in time while others were: recorded as a "
            "failure",
            claim.job_id,
            claim.definition.key,
            size,
            extra={"job_id": str(claim.job_id)},
        )
        reason = ascii(f"its {size:,} bytes could not be recorded in time ({type(exc).__name__}: {exc})")[1:-1]
        self._outcomes[0] = (claim, unrecordable(claim, outcome, reason))
