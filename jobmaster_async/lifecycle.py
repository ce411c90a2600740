"""A job's lifecycle: its statuses, why it changes status (the history's reasons), and the retry
policy, each written once.

The transitions themselves are SQL functions (``sql/functions/``), each given the next status and
reason and writing its own history row (the contract at the top of ``sql/functions/triggers.sql``;
a client's plain SQL is recorded by the triggers, with a reason read from the statuses):

==========  =====================  ==========================================================
reason      status afterwards      written by
==========  =====================  ==========================================================
inserted    waiting, blocked, ...  the inserts (``insert_job_fast``; the others by trigger)
claimed     running                the claim (``claim_jobs_fast``, ``claim_jobs()``)
completed   complete               ``complete_jobs``; ``_settle`` (an "ALL" parent)
retried     waiting                ``fail_jobs``, when :func:`retry_delay` gave a delay
failed      failed                 ``fail_jobs`` (no delay), ``rescue_jobs`` (rescues used up),
                                   ``_settle`` (a dependency failed), ``retry_job`` (a
                                   dependency it needs cannot be had)
released    waiting                ``release_jobs`` (a worker shutting down)
rescued     waiting                ``rescue_jobs`` (its worker was lost)
cancelled   cancelled              ``cancel_job``
unblocked   waiting                ``_settle``: its dependencies completed
requeued    waiting, blocked       ``retry_job``
==========  =====================  ==========================================================

The retry policy ("will this failure be retried, and when") is decided here, once, from the
task's definition: the worker passes the delay (or None: failed for good) to ``fail_jobs``. The
rescue policy stays in SQL (``rescue_jobs``), decided there from the stored task row: a rescuer
puts back other workers' jobs, whose definitions it does not have.

A job counts its starts twice: ``attempts``, every start (a release's and a rescue's too; it never
decreases, which fencing relies on), and ``tries``, the starts that count against the task's
``retries`` since the job was queued or requeued (a release or a rescue gives its start back).
"""

from __future__ import annotations

import enum

__all__ = ("MAX_RETRY_DELAY", "JobStatus", "Reason", "max_attempts", "retry_delay")

#: the longest wait before a retry, in seconds
MAX_RETRY_DELAY = 3600.0


class JobStatus(enum.StrEnum):
    """A job's status; a plain string everywhere (``job.status == "complete"``)."""

    WAITING = "waiting"
    BLOCKED = "blocked"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Reason(enum.StrEnum):
    """Why a job's status changed: ``job_events.reason`` (the table in this module's docstring)."""

    INSERTED = "inserted"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    RETRIED = "retried"
    FAILED = "failed"
    RELEASED = "released"
    RESCUED = "rescued"
    CANCELLED = "cancelled"
    UNBLOCKED = "unblocked"
    REQUEUED = "requeued"


def retry_delay(retries: int, tries: int, final: bool, backoff: float) -> float | None:
    """The retry policy: seconds until the next attempt after a failure of the try ``tries`` (1 for
    the first) of a task allowing ``retries`` retries, or None when the failure is final (it says
    so, or the retries are used up). Exponential: ``backoff``, then twice that, and so on, at most
    MAX_RETRY_DELAY."""
    if final or tries > retries:
        return None
    return float(min(backoff * 2.0 ** max(tries - 1, 0), MAX_RETRY_DELAY))


def max_attempts(attempts: int, tries: int, retries: int) -> int:
    """The public ``Job.max_attempts``: the number of the last start a failure may be retried up to,
    as things stand (each release or rescue moves it on by one; a requeue by ``retry()`` starts a
    fresh budget). The SQL reads say the same: ``attempts - tries + retries + 1``."""
    return attempts - tries + retries + 1
