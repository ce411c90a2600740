"""Claimed jobs and the recording of their outcomes, in batches."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..db.pool import Pool
from ..db.sql import Catalogue
from ..tasks import TaskDefinition
from .executors import Outcome

__all__ = ("Claim", "record_outcomes", "retry_delay")

logger = logging.getLogger(__name__)

MAX_RETRY_DELAY = 3600.0


@dataclass(frozen=True, slots=True)
class Claim:
    """A job this worker holds: fenced by (worker, attempt)."""

    job_id: uuid.UUID
    definition: TaskDefinition
    priority: int
    arguments: dict[str, Any]
    attempts: int
    max_attempts: int


def retry_delay(claim: Claim, backoff: float) -> float | None:
    """Seconds until the next attempt (exponential), or None when attempts are used up."""
    if claim.attempts >= claim.max_attempts:
        return None
    return float(min(backoff * 2.0 ** (claim.attempts - 1), MAX_RETRY_DELAY))


async def record_outcomes(
    db: Pool | asyncpg.Connection,
    sql: Catalogue,
    worker_id: uuid.UUID,
    outcomes: Sequence[tuple[Claim, Outcome]],
    backoff: float,
    timeout: float | None = None,
) -> set[uuid.UUID]:
    """Writes successes and failures (one statement each at most); returns the ids recorded.
    An id missing from the answer was no longer held by this worker and attempt (fencing)."""
    done = [(c, o) for c, o in outcomes if o.ok]
    failed = [(c, o) for c, o in outcomes if not o.ok]
    recorded: set[uuid.UUID] = set()
    if done:
        ids = await db.fetchval(
            sql["complete_jobs"],
            worker_id,
            [c.job_id for c, _ in done],
            [c.attempts for c, _ in done],
            [json.dumps(o.result) for _, o in done],
            timeout=timeout,
        )
        recorded.update(ids)
    if failed:
        ids = await db.fetchval(
            sql["fail_jobs"],
            worker_id,
            [c.job_id for c, _ in failed],
            [c.attempts for c, _ in failed],
            [o.error_type for _, o in failed],
            [o.message for _, o in failed],
            [o.traceback for _, o in failed],
            [retry_delay(c, backoff) for c, _ in failed],
            timeout=timeout,
        )
        recorded.update(ids)
    for claim, _ in outcomes:
        if claim.job_id not in recorded:
            logger.warning(
                "outcome of job %s (%s, attempt %d) dropped: the job is no longer held by this worker",
                claim.job_id,
                claim.definition.key,
                claim.attempts,
                extra={"job_id": str(claim.job_id)},
            )
    return recorded
