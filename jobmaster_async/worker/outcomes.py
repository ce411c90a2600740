"""Claimed jobs and the recording of their outcomes, in batches."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import lifecycle
from ..db.faults import refused_statement
from ..db.store import Store
from ..tasks import TaskDefinition
from .bounds import truncated
from .executors import Outcome

__all__ = (
    "Claim",
    "log_outcome",
    "outcome_name",
    "outcome_size",
    "record_outcomes",
    "retry_delay",
    "unrecordable",
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claim:
    """A job this worker holds: fenced by (worker, attempt)."""

    job_id: uuid.UUID
    definition: TaskDefinition
    priority: int
    arguments: dict[str, Any]
    attempts: int
    #: the starts that count against the task's retries, this one included (lifecycle.py)
    tries: int
    #: the W3C trace context it was inserted in (a dict of the headers), or None (tracing.py)
    trace_context: Any = None


def retry_delay(claim: Claim, outcome: Outcome, backoff: float) -> float | None:
    """Seconds until the next attempt, or None when the failure is final (the retry policy:
    lifecycle.retry_delay, from the task's definition)."""
    return lifecycle.retry_delay(claim.definition.retries, claim.tries, outcome.final, backoff)


def outcome_name(claim: Claim, outcome: Outcome, backoff: float) -> str:
    """completed, retried (a failure after which the job runs again) or failed (for good)."""
    if outcome.ok:
        return "completed"
    return "retried" if retry_delay(claim, outcome, backoff) is not None else "failed"


def log_outcome(claim: Claim, outcome: Outcome, seconds: float, backoff: float) -> None:
    """One line per finished job: INFO when done; a failure at WARNING when a retry follows
    (saying which and when), at ERROR with its traceback when it is final."""
    job, key = claim.job_id, claim.definition.key
    delay = None if outcome.ok else retry_delay(claim, outcome, backoff)
    #: structured fields of the record, for log handlers that read them
    extra = {
        "job_id": str(job),
        "task": key,
        "outcome": "completed" if outcome.ok else "retried" if delay is not None else "failed",
    }
    if outcome.ok:
        if logger.isEnabledFor(logging.INFO):
            logger.info("job %s (%s) done in %.3fs", job, key, seconds, extra=extra)
        return
    error = f"{outcome.error_type}: {outcome.message}"
    if delay is not None:
        retries, retry = claim.definition.retries, claim.tries
        logger.warning(
            "job %s (%s) failed in %.3fs: %s; retry %d of %d in %gs",
            job,
            key,
            seconds,
            error,
            retry,
            retries,
            delay,
            extra=extra,
        )
    else:
        logger.error(
            "job %s (%s) failed in %.3fs: %s\n%s",
            job,
            key,
            seconds,
            error,
            (outcome.traceback or "").rstrip(),
            extra=extra,
        )


async def record_outcomes(
    store: Store, worker_id: uuid.UUID, outcomes: Sequence[tuple[Claim, Outcome]], backoff: float
) -> set[uuid.UUID]:
    """Writes successes and failures (one statement each at most); returns the ids recorded.
    An id missing from the answer was no longer held by this worker and attempt (fencing), or was
    recorded by an earlier try of the same outcomes whose answer was lost: asked to the history
    before saying that an outcome was dropped.

    Values are bounded and checked before (worker.bounds, executors.Outcome), so PostgreSQL
    refusing one is unexpected; if it does (db.faults.refused_statement), the statement is split
    until the refused outcome is alone, and it is replaced by a failure saying why (a result: the
    job fails for good; a failure: its texts go, its retry stays); one that cannot be recorded even
    so is dropped with an ERROR naming the job. One job's data never keeps the others from being
    recorded. Faults (db.faults) are raised: the recorder retries them."""
    done = [(c, o) for c, o in outcomes if o.ok]
    failed = [(c, o) for c, o in outcomes if not o.ok]
    recorded: set[uuid.UUID] = set()
    lost: set[uuid.UUID] = set()
    if done:
        refused = await _record(store, worker_id, done, backoff, _complete, recorded)
        failed += [(c, unrecordable(c, o, _reason(exc))) for c, o, exc in refused]
    if failed:
        refused = await _record(store, worker_id, failed, backoff, _fail, recorded)
        if refused:
            last = [(c, unrecordable(c, o, _reason(exc))) for c, o, exc in refused]
            for claim, _, exc in await _record(store, worker_id, last, backoff, _fail, recorded):
                lost.add(claim.job_id)
                logger.error(
                    "the outcome of job %s (%s, attempt %d) cannot be recorded, even as a failure: dropped (%s)",
                    claim.job_id,
                    claim.definition.key,
                    claim.attempts,
                    _reason(exc),
                    extra={"job_id": str(claim.job_id)},
                )
    missing = [claim for claim, _ in outcomes if claim.job_id not in recorded and claim.job_id not in lost]
    if missing:
        already = await store.outcomes_recorded_by(worker_id, [claim.job_id for claim in missing])
        recorded |= already
        for claim in missing:
            if claim.job_id not in already:
                logger.warning(
                    "outcome of job %s (%s, attempt %d) dropped: the job is no longer held by this worker",
                    claim.job_id,
                    claim.definition.key,
                    claim.attempts,
                    extra={"job_id": str(claim.job_id)},
                )
    return recorded


_Statement = Callable[[Store, uuid.UUID, Sequence[tuple[Claim, Outcome]], float], Awaitable[list[uuid.UUID]]]


async def _record(
    store: Store,
    worker_id: uuid.UUID,
    outcomes: Sequence[tuple[Claim, Outcome]],
    backoff: float,
    statement: _Statement,
    recorded: set[uuid.UUID],
) -> list[tuple[Claim, Outcome, BaseException]]:
    """Runs ``statement`` for the outcomes, halving the batch around refusals; adds the ids
    recorded to ``recorded`` and returns the outcomes refused alone, with their errors."""
    try:
        recorded.update(await statement(store, worker_id, outcomes, backoff))
        return []
    except Exception as exc:
        if not refused_statement(exc):
            raise
        if len(outcomes) == 1:
            return [(outcomes[0][0], outcomes[0][1], exc)]
    half = len(outcomes) // 2
    return [
        *await _record(store, worker_id, outcomes[:half], backoff, statement, recorded),
        *await _record(store, worker_id, outcomes[half:], backoff, statement, recorded),
    ]


async def _complete(
    store: Store, worker_id: uuid.UUID, done: Sequence[tuple[Claim, Outcome]], backoff: float
) -> list[uuid.UUID]:
    return await store.complete_jobs(
        worker_id, [c.job_id for c, _ in done], [c.attempts for c, _ in done], [o.result_json for _, o in done]
    )


async def _fail(
    store: Store, worker_id: uuid.UUID, failed: Sequence[tuple[Claim, Outcome]], backoff: float
) -> list[uuid.UUID]:
    return await store.fail_jobs(
        worker_id,
        [c.job_id for c, _ in failed],
        [c.attempts for c, _ in failed],
        [o.error_type for _, o in failed],
        [o.message for _, o in failed],
        [o.traceback for _, o in failed],
        [retry_delay(c, o, backoff) for c, o in failed],
    )


def _reason(exc: BaseException) -> str:
    """An error as plain ASCII text of bounded length."""
    return ascii(truncated(f"{type(exc).__name__}: {exc}", 2000))[1:-1]


def outcome_size(outcome: Outcome) -> int:
    """About how many bytes recording ``outcome`` sends (characters: cheap to count)."""
    return len(outcome.result_json) + len(outcome.message or "") + len(outcome.traceback or "")


def unrecordable(claim: Claim, outcome: Outcome, reason: str) -> Outcome:
    """What is recorded instead of an outcome that could not be (plain text only): a result
    becomes a final failure (``UnstorableOutcome``) saying why; a failure keeps its type, the start
    of its message and its retry decision, and loses its traceback."""
    if outcome.ok:
        return Outcome(
            ok=False,
            error_type="UnstorableOutcome",
            message=f"the outcome of job {claim.job_id} ({claim.definition.key}) could not be stored: {reason}",
            final=True,
        )
    start = ascii(truncated(outcome.message or "", 1000))[1:-1]
    return Outcome(
        ok=False,
        error_type=ascii(truncated(outcome.error_type or "Exception", 200))[1:-1],
        message=f"{start} [its message and traceback could not be stored: {reason}]",
        final=outcome.final,
    )
