"""What tools for people (the CLI) read of a schema besides jobs: whether it
is deployed and at which version, the tasks deployed in it, and the active jobs of each task.
Plain statements on ``jm.connection()``: built-ins qualified with ``pg_catalog.``, the schema
quoted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import JobMaster

__all__ = ("TaskActivity", "active_jobs_by_task", "deployed_tasks", "schema_version")

_DEPLOYED_TASKS = "SELECT type_key, task_key FROM {schema}.tasks ORDER BY type_key, task_key"

# Waiting, blocked and running jobs of each task, read from the partial indexes of the active
# statuses (dedupe, task claim, running), as active_counts() does for the whole queue: cheap
# however many finished jobs the table keeps.
_ACTIVE_BY_TASK = """
WITH active AS (SELECT task_id, pg_catalog.count(*) AS n FROM {schema}.jobs
                 WHERE status IN ('waiting', 'blocked', 'running') GROUP BY task_id),
     waiting AS (SELECT task_id, pg_catalog.count(*) AS n FROM {schema}.jobs
                  WHERE status = 'waiting' GROUP BY task_id),
     running AS (SELECT task_id, pg_catalog.count(*) AS n FROM {schema}.jobs
                  WHERE status = 'running' GROUP BY task_id)
SELECT t.type_key, t.task_key, COALESCE(w.n, 0)::int AS waiting,
       (a.n - COALESCE(w.n, 0) - COALESCE(r.n, 0))::int AS blocked, COALESCE(r.n, 0)::int AS running
  FROM active AS a
  JOIN {schema}.tasks AS t ON t.task_id = a.task_id
  LEFT JOIN waiting AS w ON w.task_id = a.task_id
  LEFT JOIN running AS r ON r.task_id = a.task_id
"""


async def schema_version(jm: JobMaster) -> int | None:
    """The version the schema was last deployed at (migrations applied), or None when it was
    never deployed."""
    async with jm.connection() as conn:
        table = f"{jm.sql.quoted_schema}.schema_version"
        if not await conn.fetchval("SELECT pg_catalog.to_regclass($1) IS NOT NULL", table):
            return None
        version: int = await conn.fetchval(jm.sql["current_version"])
        return version


async def deployed_tasks(jm: JobMaster) -> list[tuple[str, str]]:
    """(type_key, task_key) of every task deployed in the schema, in order."""
    async with jm.connection() as conn:
        rows = await conn.fetch(jm.sql.render(_DEPLOYED_TASKS))
    return [(row["type_key"], row["task_key"]) for row in rows]


@dataclass(frozen=True)
class TaskActivity:
    """The active jobs of one task, in the whole schema."""

    type_key: str
    task_key: str
    waiting: int
    blocked: int
    running: int

    @property
    def key(self) -> str:
        return f"{self.type_key}.{self.task_key}"


async def active_jobs_by_task(jm: JobMaster) -> list[TaskActivity]:
    """Waiting, blocked and running jobs per task (tasks without any left out)."""
    async with jm.connection() as conn, conn.transaction():
        # as active_counts(): index scans of the partial indexes, never a read of the whole table
        await conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        rows = await conn.fetch(jm.sql.render(_ACTIVE_BY_TASK))
    return sorted((TaskActivity(**dict(row)) for row in rows), key=lambda a: a.key)
