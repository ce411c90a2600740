"""deploy(): schema migrations, functions, and the task definitions of this process."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

import asyncpg

from ..errors import SchemaVersionError, TaskDefinitionError
from ..tasks import TaskDefinition, check_dependency_arguments
from .sql import Catalogue

__all__ = ("deploy_schema", "validate_definitions")

logger = logging.getLogger(__name__)


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"jobmaster_async:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def deploy_schema(
    conn: asyncpg.Connection,
    sql: Catalogue,
    definitions: Iterable[TaskDefinition],
    *,
    reset: bool = False,
    prune: bool = False,
) -> None:
    """Creates or migrates the schema and upserts the task definitions, in one transaction
    under an advisory lock, so several processes may deploy at once."""
    definitions = list(definitions)
    async with conn.transaction():
        # the DDL resolves names as the functions it creates do: pg_catalog first, then this
        # schema, never a schema another role can create objects in (DESIGN 9.1 "search_path")
        await conn.execute(f"SET LOCAL search_path = pg_catalog, {sql.quoted_schema}, pg_temp")
        await conn.execute("SELECT pg_catalog.pg_advisory_xact_lock($1)", _lock_key(sql.schema))
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
        await conn.execute(sql.functions)

        deployed = {(r["type_key"], r["task_key"]): r for r in await conn.fetch(sql["deployed_tasks"])}
        validate_definitions(definitions, deployed)
        rows = [definition.to_row() for definition in definitions]
        if rows:
            await conn.executemany(
                sql["upsert_task"],
                [
                    (
                        r["type_key"],
                        r["task_key"],
                        r["parameters"],
                        r["write_all"],
                        r["dependencies"],
                        r["process_units"],
                        r["process_limit"],
                        r["retries"],
                        r["timeout"],
                        r["executor"],
                        r["description"],
                        r["rescues"],
                    )
                    for r in rows
                ],
            )
        if prune:
            pruned = await conn.fetch(
                sql["prune_tasks"], [d.type_key for d in definitions], [d.task_key for d in definitions]
            )
            for row in pruned:
                logger.info("deploy(prune=True): removed task %s.%s", row["type_key"], row["task_key"])
        await conn.execute(sql["mark_dependency_targets"])
    logger.info("deployed schema %s with %d task definitions", sql.schema, len(rows))


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


def validate_definitions(definitions: list[TaskDefinition], deployed: dict[tuple[str, str], Any]) -> None:
    """Checks what only the whole set of tasks shows: unknown dependencies, arguments a dependency
    does not take, cycles; warns about dependencies whose required arguments stay unknown."""
    local = {(d.type_key, d.task_key): d for d in definitions}
    # (type_key, task_key) -> parameters as JSON dicts, for tasks defined here or elsewhere
    parameters: dict[tuple[str, str], list[dict[str, Any]]] = {
        key: _json(row["parameters"]) for key, row in deployed.items()
    }
    edges: dict[tuple[str, str], list[tuple[str, str]]] = {
        key: [(d["type_key"], d["task_key"]) for d in _json(row["dependencies"])] for key, row in deployed.items()
    }
    for key, definition in local.items():
        parameters[key] = [p.to_json() for p in definition.parameters]
        edges[key] = [dep.key for dep in definition.dependencies]

    for definition in definitions:
        for dep in definition.dependencies:
            target_key = dep.key
            if target_key not in parameters:
                raise TaskDefinitionError(
                    f"task {definition.key}: {dep!r}: unknown dependency {'.'.join(target_key)} "
                    "(neither registered in this process nor deployed)"
                )
            target = local.get(target_key)
            if target is not None:
                check_dependency_arguments(definition.key, dep, target)
            else:
                names = {p["name"] for p in parameters[target_key]}
                for arg in dep.arguments:
                    if arg not in names:
                        raise TaskDefinitionError(
                            f"task {definition.key}: {dep!r}: {'.'.join(target_key)} takes no argument {arg!r}"
                        )
            own = {p.name for p in definition.parameters}
            for param in parameters[target_key]:
                name = param["name"]
                if param.get("required") and name not in dep.arguments and name not in own:
                    logger.warning(
                        "task %s: %r: required argument %r of %s is neither specified nor an argument "
                        "of %s; jobs that need to create this dependency will fail",
                        definition.key,
                        dep,
                        name,
                        ".".join(target_key),
                        definition.key,
                    )
    _check_cycles(edges)


def _check_cycles(edges: dict[tuple[str, str], list[tuple[str, str]]]) -> None:
    state: dict[tuple[str, str], int] = {}  # 1 = on the current path, 2 = done

    def visit(node: tuple[str, str], path: list[tuple[str, str]]) -> None:
        state[node] = 1
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
                raise TaskDefinitionError("dependency cycle: " + " -> ".join(".".join(k) for k in cycle))
            if state.get(nxt) is None:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in list(edges):
        if state.get(node) is None:
            visit(node, [node])


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
