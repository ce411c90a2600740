"""Claiming jobs: the common claim as one prepared plain statement, on a connection of its own.

``claim_jobs()`` (sql/functions/claim.sql) respects process_limit and process_units; most claims
have neither to respect, and for them the PL/pgSQL call is pure overhead. Those run
``claim_jobs_fast`` (queries.sql) instead, on a connection whose session settings are the planner
settings ``claim_jobs()`` sets for itself (``Catalogue.claim_session_settings``, from the one
source: db/sql.py CLAIM_SETTINGS); like ``claim_jobs()``, the statement turns
synchronous_commit off for itself. Its one row holds the jobs claimed (arrays by position) and
says whether the claim is the slow kind (the tasks have limits, which another deploy may have
added, or a suspect is claimable): then, and while the connection is busy with a concurrent
claim, ``claim_jobs()`` runs through the pool.

Scheduled jobs (a future ``run_at``, a retry's backoff) are out of the claim's path until
``promote_due_jobs()`` makes them claimable (sql/functions/claim.sql). Each plain claim says when
the earliest scheduled job of its tasks falls due; the claimer promotes when that time has come:
before its next claim, or at once when the claim says one is due already, and claims again if the
first claim took nothing. So promoting costs a round trip only when a job is due, and a due job
waits for no backlog of claimable ones. (``claim_jobs()`` promotes for itself.)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from .dedicated import Dedicated
from .pool import Connect, Pool
from .sql import Catalogue

__all__ = ("CLAIMED", "Claimed", "Claimer")

logger = logging.getLogger(__name__)

#: A claimed job, as both claims return it: its columns are CLAIMED.
Claimed = dict[str, Any]
CLAIMED = ("job_id", "task_id", "priority", "arguments", "attempts", "tries", "trace_context")


class Claimer:
    def __init__(
        self,
        sql: Catalogue,
        connect: Connect,
        pool: Callable[[], Awaitable[Pool]],
        timeout: float | None = None,
    ) -> None:
        self.sql = sql
        self._pool = pool
        self.timeout = timeout  # each round trip's deadline
        self._connection = Dedicated(connect, sql.claim_session_settings, timeout)
        self._lock = self._connection.lock
        #: seconds until the earliest waiting job falls due, as the last fast claim that took fewer
        #: jobs than asked for saw it (None: none waiting); unknown after any other claim
        self.due_in: float | None = None
        self.due_in_known = False
        #: when (time.monotonic()) the earliest scheduled job of the last plain claim's tasks falls
        #: due, as that claim said (None: none, or unknown)
        self._scheduled_due: float | None = None

    async def claim(self, worker_id: uuid.UUID, task_ids: list[int], limit: int, units: int) -> list[Claimed]:
        """The claimed jobs (job_id, task_id, priority, arguments, attempts, tries, trace_context)."""
        self.due_in_known = False
        if not self._lock.locked():
            async with self._lock:
                if self._scheduled_is_due():
                    await self._promote()
                rows = await self._claim_fast(worker_id, task_ids, limit, units)
                if rows is not None and self._scheduled_is_due():
                    # a scheduled job was due already: claimable from now on
                    await self._promote()
                    if not rows:
                        rows = await self._claim_fast(worker_id, task_ids, limit, units)
            if rows is not None:
                return rows
        pool = await self._pool()
        rows = await pool.fetch(self.sql["claim_jobs"], worker_id, task_ids, limit, units, timeout=self.timeout)
        return [dict(row) for row in rows]

    def _scheduled_is_due(self) -> bool:
        return self._scheduled_due is not None and time.monotonic() >= self._scheduled_due

    async def _claim_fast(
        self, worker_id: uuid.UUID, task_ids: list[int], limit: int, units: int
    ) -> list[Claimed] | None:
        """The jobs claimed by the plain statement, or None when the claim is the slow kind."""
        row: asyncpg.Record = await self._run("fetchrow", "claim_jobs_fast", worker_id, task_ids, limit, units)
        scheduled_in = row["scheduled_in"]
        self._scheduled_due = None if scheduled_in is None else time.monotonic() + scheduled_in
        if row["slow"]:
            return None
        claimed = [
            dict(zip(CLAIMED, values, strict=True))
            for values in zip(
                row["job_ids"],
                row["task_ids"],
                row["priorities"],
                row["arguments"],
                row["attempts"],
                row["tries"],
                row["trace_contexts"],
                strict=True,
            )
        ]
        if len(claimed) < limit:
            self.due_in, self.due_in_known = row["due_in"], True
        return claimed

    async def _promote(self) -> None:
        """Makes the scheduled jobs that fell due claimable (and wakes the workers)."""
        self._scheduled_due = None  # the next plain claim says when the next one falls due
        await self._run("fetchval", "promote_due_jobs")

    async def _run(self, method: str, name: str, *args: object) -> Any:
        """A statement on the claim connection (with the claim's session settings)."""
        return await self._connection.run(method, self.sql[name], *args)

    def discard_idle(self) -> None:
        """Closes the claim connection unless a claim is using it (after a fault, it is suspect)."""
        self._connection.discard_idle()

    async def close(self) -> None:
        await self._connection.close()
