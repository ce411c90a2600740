"""deploy(): schema migrations, functions, and the task definitions of this process."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Protocol

import asyncpg

from ..errors import SchemaVersionError, TaskDefinitionError
from .sql import Catalogue

__all__ = ("TaskRows", "deploy_schema")

logger = logging.getLogger(__name__)


class TaskRows(Protocol):
    """The task definitions to write, as the tasks side hands them over (the registry)."""

    def rows_to_deploy(
        self, deployed: Mapping[tuple[str, str], Mapping[str, Any]], retention: timedelta | None
    ) -> list[dict[str, Any]]:
        """The tasks-table rows as JSON values by column name, once checked against the tasks
        already deployed (by key); ``retention`` is the JobMaster's, for tasks that set none."""
        ...

    def schedules_to_deploy(self) -> list[dict[str, Any]]:
        """Each registered task's schedules: [{"type_key", "task_key", "schedules": [{"key",
        "expression", "timezone", "arguments", "priority"}]}]."""
        ...


async def deploy_schema(
    conn: asyncpg.Connection,
    sql: Catalogue,
    definitions: TaskRows,
    *,
    reset: bool = False,
    prune: bool = False,
    retention: timedelta | None = None,
) -> None:
    """Creates or migrates the schema and upserts the task definitions, in one transaction
    under an advisory lock, so several processes may deploy at once."""
    async with conn.transaction():
        # the DDL resolves names as the functions it creates do: pg_catalog first, then this
        # schema, never a schema another role can create objects in (DESIGN 9.1 "search_path")
        await conn.execute(f"SET LOCAL search_path = pg_catalog, {sql.quoted_schema}, pg_temp")
        await conn.execute("SELECT pg_catalog.pg_advisory_xact_lock($1)", sql.deploy_lock)
        if reset:
            logger.warning("deploy(_reset=True): dropping schema %s and every job in it", sql.schema)
            await conn.execute(sql["drop_schema"])
        await conn.execute(sql["create_schema"])
        await conn.execute(sql["create_version_table"])
        current = await conn.fetchval(sql["current_version"])
        if current > sql.latest_version:
            raise SchemaVersionError(
                f"schema {sql.schema} is at version {current}, newer than this jobmaster_async "
                f"(which knows up to {sql.latest_version}): upgrade jobmaster_async"
            )
        await _migrate(conn, sql, current)
        await conn.execute(sql["lock_schedules"])
        await conn.execute(sql.functions)

        deployed = {(r["type_key"], r["task_key"]): r for r in await conn.fetch(sql["deployed_tasks"])}
        rows = definitions.rows_to_deploy(deployed, retention)
        if rows:
            await conn.execute(sql["upsert_task"], json.dumps(rows))
        if prune:
            pruned = await conn.fetch(sql["prune_tasks"], [r["type_key"] for r in rows], [r["task_key"] for r in rows])
            for row in pruned:
                logger.info("deploy(prune=True): removed task %s.%s", row["type_key"], row["task_key"])
        await conn.execute(sql["mark_dependency_targets"])
        await _deploy_schedules(conn, sql, definitions)
    logger.info("deployed schema %s with %d task definitions", sql.schema, len(rows))


async def _deploy_schedules(conn: asyncpg.Connection, sql: Catalogue, definitions: TaskRows) -> None:
    """The registered tasks' schedules, once their arguments are known to fit (a Cron whose
    arguments a task refuses is a definition mistake, said at deploy, not at every tick)."""
    try:
        schedules = json.dumps(definitions.schedules_to_deploy())
    except (TypeError, ValueError) as exc:
        raise TaskDefinitionError(f"a Cron's arguments are not JSON: {exc}") from None
    refused = await conn.fetch(sql["schedule_refusals"], schedules)
    if refused:
        row = refused[0]
        raise TaskDefinitionError(
            f"task {row['type_key']}.{row['task_key']}: cron {row['expression']!r}: {row['refusal']}"
        )
    await conn.execute(sql["sync_schedules"], schedules)


async def _migrate(conn: asyncpg.Connection, sql: Catalogue, current: int) -> None:
    """Brings the schema's tables to the latest version: a new schema (version 0) at once from
    schema.sql, recording every migration as applied; an existing one by the migrations it lacks,
    in order. Each version is recorded before it is applied (the advisory lock serialises
    deploys; the primary key would stop a second one anyway)."""
    if current == 0:
        logger.info("creating schema %s at version %d", sql.schema, sql.latest_version)
        await conn.executemany(sql["record_migration"], [(m.version, m.name) for m in sql.migrations])
        await conn.execute(sql.schema_sql)
        return
    for migration in sql.migrations:
        if migration.version > current:
            logger.info("applying migration %s to schema %s", migration.name, sql.schema)
            await conn.execute(sql["record_migration"], migration.version, migration.name)
            await conn.execute(migration.sql)
