"""One schema, however it was reached: schema.sql (a new schema) and the migrations (an existing
one) produce the same tables, indexes, constraints, triggers and functions, compared from the
catalogs (tests/catalog.py), on whichever PostgreSQL the tests run against. And the SQL texts:
fragments all used and substituted, every CTE commented."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.db.sql import FUNCTIONS, Catalogue, _fragments, _frozen, _read, quote_identifier
from tests.catalog import describe
from tests.conftest import drop_schema

#: a task no process here registers (another service's), as it would have been deployed before
PARAMETERS = [
    {"name": "n", "type": "integer", "required": True, "nullable": False},
    {"name": "path", "type": "string", "required": False, "nullable": False, "default": "out/a.txt"},
    {"name": "mode", "type": "any", "required": False, "nullable": False, "default": "a", "options": ["a", 3]},
]
DERIVED = "parameter_names, defaults, arguments_path::text, has_integers, non_integer_names"


@pytest.fixture
async def schemas(dsn: str) -> AsyncIterator[list[str]]:
    """Names for scratch schemas, dropped afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        await drop_schema(dsn, name)


def new_schema(names: list[str]) -> str:
    names.append(f"jm_schema_{uuid.uuid4().hex[:10]}")
    return names[-1]


async def migrated_to(conn: asyncpg.Connection, schema: str, version: int) -> Catalogue:
    """A schema brought to ``version`` by its migrations alone, one by one, as deploy() did in
    the release that version came with (recorded the same way); no functions."""
    sql = Catalogue(schema)
    async with conn.transaction():
        await conn.execute(f"SET LOCAL search_path = pg_catalog, {sql.quoted_schema}, pg_temp")
        await conn.execute(sql["create_schema"])
        await conn.execute(sql["create_version_table"])
        for migration in sql.migrations[:version]:
            await conn.execute(sql["record_migration"], migration.version, migration.name)
            await conn.execute(migration.sql)
    return sql


async def versions(conn: asyncpg.Connection, sql: Catalogue) -> list[tuple[int, str]]:
    rows = await conn.fetch(f"SELECT version, name FROM {sql.quoted_schema}.schema_version ORDER BY version")
    return [(r["version"], r["name"]) for r in rows]


async def test_schema_sql_is_what_the_migrations_produce(conn: asyncpg.Connection, schemas: list[str]) -> None:
    """schema.sql, as deploy() applies it to a new schema, against every migration from 0001 on."""
    fresh = Catalogue(new_schema(schemas))
    async with conn.transaction():
        await conn.execute(f"SET LOCAL search_path = pg_catalog, {fresh.quoted_schema}, pg_temp")
        await conn.execute(fresh["create_schema"])
        await conn.execute(fresh["create_version_table"])
        await conn.execute(fresh.schema_sql)
    migrated = await migrated_to(conn, new_schema(schemas), fresh.latest_version)
    expected = await describe(conn, migrated.schema)
    assert await describe(conn, fresh.schema) == expected
    # what the comparison covers: tables, the derivation trigger and its functions, the type
    assert "trigger: CREATE TRIGGER tasks_derive_checks BEFORE INSERT OR UPDATE ON <schema>.tasks " in " ".join(
        expected
    )
    assert sum(line.startswith("column: jobs ") for line in expected) > 20
    assert any(line.startswith("function: _arguments_path(p_parameters jsonb) jsonpath") for line in expected)
    assert "relation: plan_step c" in expected


async def test_every_version_upgrades_to_what_a_new_schema_gets(
    dsn: str, conn: asyncpg.Connection, schemas: list[str]
) -> None:
    """deploy() on a schema left at each earlier version (holding a task of another service and a
    job) runs the migrations it lacks, one by one, and ends where deploy() on a new schema does:
    the same catalog description, functions and triggers included, the same versions recorded,
    the other service's task derived as if it had just been deployed, the job kept."""
    fresh = JobMaster(dsn, schema=new_schema(schemas))
    try:
        await fresh.deploy()
    finally:
        await fresh.close()
    expected = await describe(conn, fresh.schema)
    expected_versions = await versions(conn, fresh.sql)
    # every migration (by number: one may be numbered after a gap left for another branch's)
    assert [v for v, _ in expected_versions] == [m.version for m in fresh.sql.migrations]
    await conn.execute(
        f"INSERT INTO {fresh.sql.quoted_schema}.tasks (type_key, task_key, parameters) "
        "VALUES ('elsewhere', 'thing', $1::text::jsonb)",
        json.dumps(PARAMETERS),
    )
    derived = await conn.fetchrow(f"SELECT {DERIVED} FROM {fresh.sql.quoted_schema}.tasks WHERE type_key = 'elsewhere'")
    assert derived["non_integer_names"] == ["path", "mode"] and derived["arguments_path"] is not None

    for version in range(1, fresh.sql.latest_version):
        sql = await migrated_to(conn, new_schema(schemas), version)
        task_id = await conn.fetchval(
            f"INSERT INTO {sql.quoted_schema}.tasks (type_key, task_key, parameters) "
            "VALUES ('elsewhere', 'thing', $1::text::jsonb) RETURNING task_id",
            json.dumps(PARAMETERS),
        )
        job_id = await conn.fetchval(
            f"INSERT INTO {sql.quoted_schema}.jobs (task_id, arguments, args_hash, status) "
            """VALUES ($1, '{"n": 1}', md5('{"n": 1}')::uuid, 'waiting') RETURNING job_id""",
            task_id,
        )
        upgraded = JobMaster(dsn, schema=sql.schema)
        try:
            await upgraded.deploy()
            job = await upgraded.get_job(job_id)
        finally:
            await upgraded.close()
        assert await describe(conn, sql.schema) == expected, f"upgraded from version {version}"
        assert await versions(conn, sql) == expected_versions, f"upgraded from version {version}"
        assert (
            await conn.fetchrow(f"SELECT {DERIVED} FROM {sql.quoted_schema}.tasks WHERE type_key = 'elsewhere'")
            == derived
        ), f"upgraded from version {version}"
        assert job is not None and job.status == "waiting" and job.arguments == {"n": 1}


def sources() -> list[tuple[str, str]]:
    """The SQL files with placeholders, as written: (path under sql/, text)."""
    names = ["queries.sql", "fragments.sql", *(f"functions/{name}.sql" for name in FUNCTIONS)]
    return [(name, _read(name)) for name in names]


def test_fragments_are_all_used_and_all_substituted() -> None:
    for name, _ in _fragments():
        assert any(f"{{fragment:{name}}}" in text for _, text in sources()), f"fragment {name} is never used"
    sql = Catalogue("jm")
    for text in [sql.functions, *sql.queries.values()]:
        assert "{fragment:" not in text and "{schema}" not in text


def test_migrations_and_schema_sql_take_no_fragment() -> None:
    with pytest.raises(ValueError, match=r"0099_x\.sql uses a fragment"):
        _frozen("0099_x.sql", "UPDATE t SET x = 1 WHERE {fragment:held}")
    sql = Catalogue("jm")
    assert sql.schema_sql and sql.migrations  # their texts pass


def test_the_claim_settings_have_one_source() -> None:
    sql = Catalogue("jm")
    claim_jobs = sql.functions[sql.functions.index(f"FUNCTION {quote_identifier('jm')}.claim_jobs(") :]
    clauses = claim_jobs[: claim_jobs.index(" AS $")]
    for statement in sql.claim_session_settings.split("; "):
        assert statement.startswith("SET ") and statement in clauses
    assert "enable_bitmapscan = off" in sql.claim_session_settings


#: a CTE: "name AS (" alone at the end of a line, after WITH or a comma
_CTE = re.compile(r"^\s*(?:WITH\s+(?:RECURSIVE\s+)?)?(\w+) AS \(\s*$")


def test_every_cte_says_what_it_is() -> None:
    found = 0
    for name, text in sources():
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if match := _CTE.match(line):
                found += 1
                assert lines[number - 1].strip().startswith("--"), f"{name}:{number + 1}: CTE {match.group(1)}"
    assert found > 30


async def test_the_upgrade_to_run_at_keeps_the_grants(dsn: str, conn: asyncpg.Connection, schemas: list[str]) -> None:
    """Migration 0012 replaces add_job, insert_job and insert_jobs by versions taking run_at (a
    parameter more is another function): every role granted EXECUTE on the old ones keeps it on the
    new ones (with its grant option), and the old signatures are gone (else calls would be
    ambiguous). The schema is left at version 11 with the interface as version 11 declared it
    (stand-in bodies: the migration looks at signatures and privileges only) and the README's
    grants to a web role."""
    sql = await migrated_to(conn, new_schema(schemas), 11)
    s = sql.quoted_schema
    web, reporting = f"web_{uuid.uuid4().hex[:8]}", f"reporting_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"""
        CREATE ROLE {web} LOGIN;
        CREATE ROLE {reporting};
        CREATE PROCEDURE {s}.insert_job(type_key text, task_key text, priority int, arguments json,
                                        INOUT job_id uuid DEFAULT NULL)
            LANGUAGE plpgsql AS 'BEGIN END';
        CREATE FUNCTION {s}.add_job(type_key text, task_key text, priority int, arguments json)
            RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid';
        CREATE FUNCTION {s}.insert_jobs(p_type_key text, p_task_key text, p_priority int, p_arguments jsonb[])
            RETURNS uuid[] LANGUAGE sql AS 'SELECT NULL::uuid[]';
        REVOKE ALL ON ALL ROUTINES IN SCHEMA {s} FROM PUBLIC;
        GRANT USAGE ON SCHEMA {s} TO {web};
        GRANT EXECUTE ON PROCEDURE {s}.insert_job(text, text, int, json, uuid) TO {web};
        GRANT EXECUTE ON FUNCTION {s}.add_job(text, text, int, json) TO {web} WITH GRANT OPTION;
        GRANT EXECUTE ON FUNCTION {s}.insert_jobs(text, text, int, jsonb[]) TO {reporting};
    """)
    try:
        upgraded = JobMaster(dsn, schema=sql.schema)
        try:
            await upgraded.deploy()
        finally:
            await upgraded.close()
        signatures = await conn.fetch(
            "SELECT p.oid::regprocedure::text AS signature FROM pg_proc AS p "
            "WHERE p.pronamespace = $1::regnamespace AND p.proname IN ('add_job', 'insert_job', 'insert_jobs') "
            "ORDER BY p.proname",
            sql.schema,
        )
        assert [r["signature"].split(".", 1)[1] for r in signatures] == [
            "add_job(text,text,integer,json,timestamp with time zone)",
            "insert_job(text,text,integer,json,uuid,timestamp with time zone)",
            "insert_jobs(text,text,integer,jsonb[],timestamp with time zone)",
        ]
        privileges = await conn.fetch(
            "SELECT p.proname, pg_get_userbyid(a.grantee) AS grantee, a.is_grantable "
            "FROM pg_proc AS p, aclexplode(p.proacl) AS a "
            "WHERE p.pronamespace = $1::regnamespace AND a.grantee <> p.proowner "
            "AND p.proname IN ('add_job', 'insert_job', 'insert_jobs') ORDER BY p.proname",
            sql.schema,
        )
        assert [tuple(r) for r in privileges] == [
            ("add_job", web, True),
            ("insert_job", web, False),
            ("insert_jobs", reporting, False),
        ]
        client = await asyncpg.connect(dsn, user=web)
        try:
            task = "'tasks_for_tests', 'add', 1"
            ids = [
                (await client.fetchrow(f"""CALL {s}.insert_job({task}, '{{"a": 1}}'::json)"""))["job_id"],
                (await client.fetchrow(f"""CALL {s}.insert_job({task}, '{{"a": 2}}'::json, NULL)"""))["job_id"],
                (
                    await client.fetchrow(
                        f"""CALL {s}.insert_job({task}, '{{"a": 3}}'::json, run_at => now() + interval '1 hour')"""
                    )
                )["job_id"],
                await client.fetchval(f"""SELECT {s}.add_job({task}, '{{"a": 4}}')"""),
                await client.fetchval(f"""SELECT {s}.add_job({task}, '{{"a": 5}}', now() + interval '1 hour')"""),
            ]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await client.fetchval(f"SELECT {s}.insert_jobs({task}, ARRAY['{{}}'::jsonb])")
        finally:
            await client.close()
        scheduled = await conn.fetch(
            f"SELECT job_id, run_at IS NOT NULL AS later FROM {s}.jobs WHERE job_id = ANY ($1::uuid[]) ORDER BY seq",
            ids,
        )
        assert [r["later"] for r in scheduled] == [False, False, True, False, True]
    finally:
        await drop_schema(dsn, sql.schema)
        await conn.execute(f"DROP ROLE {web}; DROP ROLE {reporting}")


async def test_every_function_that_runs_statements_pins_jit_off(jm: JobMaster, conn: asyncpg.Connection) -> None:
    """No statement of the library is JIT-compiled, whatever the client's settings: every
    function with settings of its own (entry points and trigger functions) turns jit off. On a
    server built with LLVM a recursive CTE's estimate (the dependency plan) passed
    jit_above_cost, and each insert of a dependent spent ~100 ms compiling."""
    rows = await conn.fetch(
        "SELECT p.proname, p.proconfig FROM pg_catalog.pg_proc AS p WHERE p.pronamespace = $1::regnamespace",
        jm.schema,
    )
    pinned = {r["proname"]: r["proconfig"] for r in rows if r["proconfig"]}
    assert "insert_jobs" in pinned and "add_job" in pinned  # the entry points are among them
    assert [name for name, config in pinned.items() if "jit=off" not in config] == []
    assert [name for name, config in pinned.items() if not any(c.startswith("search_path=") for c in config)] == []
