"""The scheduler's statements (periodic tasks), on a connection of its own with a lock_timeout.

Firing a tick inserts a job, which may wait for locks: the schedule's row while another worker
fires the same tick (short), or an identical job a client is inserting in a transaction still
open (as long as that transaction). The lock_timeout bounds every such wait, so that the
scheduler never hangs behind a client; the tick is tried again (worker/scheduler.py). Its own
connection keeps the setting off the pool's connections and the scheduler off the hot path's.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from .dedicated import Dedicated
from .pool import Connect
from .sql import Catalogue

__all__ = ("LOCK_TIMEOUT", "Ticks")

#: Seconds a tick's statement waits for a lock at most.
LOCK_TIMEOUT = 5.0


class Ticks:
    def __init__(self, sql: Catalogue, connect: Connect, timeout: float | None = None) -> None:
        self.sql = sql
        self._connection = Dedicated(connect, f"SET lock_timeout = '{int(LOCK_TIMEOUT * 1000)}ms'", timeout)

    async def load(self, task_ids: list[int]) -> list[asyncpg.Record]:
        """The schedules of these tasks (schedule_id, type_key, task_key, expression, timezone,
        arguments, priority, created_at, last_tick), each row with the server's clock (now)."""
        rows: list[asyncpg.Record] = await self._run("fetch", "load_schedules", task_ids)
        return rows

    async def fire(self, schedule_id: int, tick: datetime) -> uuid.UUID | None:
        """The job of that tick (or its active twin); None when it was fired already or the
        schedule is gone."""
        job_id: uuid.UUID | None = await self._run("fetchval", "fire_schedule", schedule_id, tick)
        return job_id

    async def _run(self, method: str, name: str, *args: object) -> Any:
        async with self._connection.lock:
            return await self._connection.run(method, self.sql[name], *args)

    def discard_idle(self) -> None:
        """Closes the connection unless a statement is using it (after a fault, it is suspect)."""
        self._connection.discard_idle()

    async def close(self) -> None:
        await self._connection.close()
