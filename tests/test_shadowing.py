"""Name resolution under attack (DESIGN 9.1 "search_path"): a role that may create objects in
``public`` (every role could, before PostgreSQL 15) plants functions, aggregates and operators
there that are better matches than pg_catalog's for the library's call sites (an exact type where
the built-in is polymorphic or needs an implicit cast: ``public.array_position(uuid[], uuid)``,
``public.set_bit(bytea, integer, integer)``, ``public.@>(text[], text[])``). None of them may ever
run when the library is used, even by a superuser: pinned search paths and pg_catalog-qualified
built-ins must leave them unreachable.

The shadows are generated from the library's own SQL: every name called in it that pg_catalog
has, and every operator symbol in it, each pg_catalog overload re-created in ``public`` with its
polymorphic types made concrete and its arguments narrowed to the types that cast to them
implicitly. Each shadow records its call twice: a row in ``public.shadow_hits`` (which names it)
and a ``nextval`` of ``public.shadow_calls`` (which a rollback does not undo). The test runs in a
database of its own, dropped afterwards."""

from __future__ import annotations

import ast
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

import jobmaster_async
from jobmaster_async import JobMaster
from jobmaster_async.db.sql import quote_identifier
from jobmaster_async.errors import InvalidArguments, NotRetryable, TaskNotFound
from tests.conftest import q, worker
from tests.polling import until
from tests.statements import claim_statements, plain_claims

# -- the library's SQL -------------------------------------------------------------------------

#: A Python string that is SQL (a statement the library sends from Python).
_SQL_HINT = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|SET|CREATE|CALL|WITH|LISTEN)\b")
_CALLED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_OPERATOR = re.compile(r"[-+*/<>=~!@#%^&|`?]+")
_COMMENT = re.compile(r"--[^\n]*")
_STRING = re.compile(r"'(?:[^']|'')*'")


def library_sql() -> list[str]:
    """Every SQL text of the package: the .sql files and the SQL strings in its Python modules."""
    texts = []
    folder = Path(str(resources.files("jobmaster_async").joinpath("sql")))
    texts += [file.read_text(encoding="utf-8") for file in sorted(folder.rglob("*.sql"))]
    for module in sorted(Path(jobmaster_async.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL_HINT.search(node.value):
                texts.append(node.value)
    return texts


def called_names(texts: Iterable[str]) -> set[str]:
    """Every identifier followed by "(" (comments included: a name too many costs nothing)."""
    return {m.group(1).lower() for text in texts for m in _CALLED.finditer(text)}


def operator_symbols(texts: Iterable[str]) -> set[str]:
    """Every operator symbol in the code (comments and string literals left out), and those that
    the syntax uses without writing them: IN, ANY, CASE x WHEN and IS DISTINCT FROM compare with
    =, LIKE is ~~, NOT IN and <> are <>."""
    found = {"=", "<>", "~~", "<", "<=", ">", ">="}
    for text in texts:
        code = _STRING.sub(" ", _COMMENT.sub(" ", text))
        found.update(m.group(0) for m in _OPERATOR.finditer(code))
    return found


# -- the shadows -------------------------------------------------------------------------------

#: The types the library's SQL works with, most used first (preferred when a cap applies).
SCALARS = (
    "text",
    "jsonb",
    "uuid",
    "integer",
    "bigint",
    "boolean",
    "numeric",
    "timestamp with time zone",
    "interval",
    "double precision",
    "json",
    "bytea",
    "jsonpath",
)
OURS = frozenset(SCALARS) | {f"{t}[]" for t in SCALARS}
#: polymorphic types made concrete from an element type, by family
FAMILIES = {
    "anyelement": ("any", "{}"),
    "anynonarray": ("any", "{}"),
    "anyarray": ("any", "{}[]"),
    "anycompatible": ("compatible", "{}"),
    "anycompatiblenonarray": ("compatible", "{}"),
    "anycompatiblearray": ("compatible", "{}[]"),
}
#: signatures tried per pg_catalog overload at most (those of the most used types first)
CAP = 40
#: how many arguments a VARIADIC "any" (format, jsonb_build_object, ...) is given
VARIADIC_ANY = (1, 2, 3)


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Shadow:
    label: str  # name(argument types), or "operator" symbol(argument types)
    kind: str  # function | aggregate | operator
    ddl: tuple[str, ...]


@dataclass
class Signature:
    """A pg_catalog routine (or an operator's), its types as format_type writes them."""

    name: str
    inputs: list[str]  # argument types in order; "VARIADIC t" for a variadic array
    outputs: list[str]  # OUT / TABLE columns
    result: str
    returns_set: bool


class Concretizer:
    """Concrete signatures for a pg_catalog one: polymorphic types from our element types,
    every other type as declared or narrowed to one of ours that casts to it implicitly."""

    def __init__(self, implicit_casts: Iterable[tuple[str, str]]) -> None:
        self.narrower: dict[str, list[str]] = {}
        for source, target in implicit_casts:
            if source in OURS:
                self.narrower.setdefault(target, []).append(source)
        for target, sources in list(self.narrower.items()):
            arrays = [f"{s}[]" for s in sources if f"{s}[]" in OURS]
            if arrays and not target.endswith("[]"):
                self.narrower.setdefault(f"{target}[]", arrays)

    def candidates(self, declared: str) -> list[str] | None:
        """The types a call site of ours may pass where ``declared`` is (not a polymorphic family's)."""
        if declared == '"any"':
            return list(SCALARS)
        if declared.startswith("any") or declared in {"internal", "cstring", "trigger", "record"}:
            return None  # a pseudo-type no call site of ours passes (anyenum, anyrange, ...)
        return [declared, *sorted(self.narrower.get(declared, []), key=_rank)]

    def concretize(self, signature: Signature) -> Iterable[tuple[list[str], list[str], str]]:
        """(inputs, outputs, result), those of the most used types first, at most CAP of them."""
        declared = [*signature.inputs, *signature.outputs, signature.result]
        n, m = len(signature.inputs), len(signature.outputs)
        families = sorted({FAMILIES[_bare(t)][0] for t in declared if _bare(t) in FAMILIES})
        options: list[list[str]] = []
        for position, t in enumerate(declared):
            bare = _bare(t)
            if bare in FAMILIES:
                options.append([t])  # from its family's element type, below
            elif position >= n:
                if bare.startswith("any"):
                    return
                options.append([t])  # outputs and result: as declared
            else:
                found = self.candidates(bare)
                if found is None:
                    return
                options.append([t.replace(bare, c) for c in found])
        scored: list[tuple[int, list[str]]] = []
        for elements in itertools.product(range(len(SCALARS)), repeat=len(families)):
            element_of = {f: SCALARS[i] for f, i in zip(families, elements, strict=True)}
            for picks in itertools.product(*(range(len(o)) for o in options)):
                types = [_fill(option[pick], element_of) for option, pick in zip(options, picks, strict=True)]
                scored.append((sum(elements) + sum(picks), types))
        scored.sort(key=lambda c: c[0])
        for _, types in scored[:CAP]:
            yield types[:n], types[n : n + m], types[n + m]


def _bare(t: str) -> str:
    return t.removeprefix("VARIADIC ")


def _fill(t: str, element_of: dict[str, str]) -> str:
    """A family's polymorphic type made concrete (VARIADIC kept)."""
    bare = _bare(t)
    if bare not in FAMILIES:
        return t
    family, pattern = FAMILIES[bare]
    return t.replace(bare, pattern.format(element_of[family]))


def _rank(t: str) -> int:
    bare = t.removesuffix("[]")
    return SCALARS.index(bare) if bare in SCALARS else len(SCALARS)


def _expand_variadic_any(signature: Signature) -> list[Signature]:
    """format(text, VARIADIC "any") -> format(text, t), format(text, t, t), ... as plain arguments."""
    if not signature.inputs or signature.inputs[-1] != 'VARIADIC "any"':
        return [signature]
    fixed = signature.inputs[:-1]
    return [
        Signature(signature.name, [*fixed, *['"any"'] * k], signature.outputs, signature.result, signature.returns_set)
        for k in VARIADIC_ANY
    ]


def _record(label: str) -> str:
    """The shadow's first statements: its call counted (even if rolled back) and named."""
    return (
        "PERFORM pg_catalog.nextval('public.shadow_calls');\n"
        f"    INSERT INTO public.shadow_hits (name) VALUES ({literal(label)});\n"
    )


def _arguments(inputs: Sequence[str]) -> tuple[str, str]:
    """The parameter list of a shadow, and the pass-through argument list of its call."""
    params = ", ".join(
        f"VARIADIC a{i} {_bare(t)}" if t.startswith("VARIADIC ") else f"a{i} {t}" for i, t in enumerate(inputs, 1)
    )
    call = ", ".join(f"VARIADIC ${i}" if t.startswith("VARIADIC ") else f"${i}" for i, t in enumerate(inputs, 1))
    return params, call


def function_shadow(signature: Signature, inputs: list[str], outputs: list[str], result: str) -> Shadow:
    """public.<name>(inputs): records its call, then does what pg_catalog's does."""
    label = f"{signature.name}({', '.join(inputs)})"
    params, call = _arguments(inputs)
    original = f"pg_catalog.{quote_identifier(signature.name)}({call})"
    if outputs:
        columns = ", ".join(f"o{i} {t}" for i, t in enumerate(outputs, 1))
        if signature.returns_set:
            returns, tail = f"TABLE ({columns})", f"RETURN QUERY SELECT * FROM {original};"
        else:
            params = ", ".join(filter(None, [params, ", ".join(f"OUT o{i} {t}" for i, t in enumerate(outputs, 1))]))
            outs = ", ".join(f"o{i}" for i in range(1, len(outputs) + 1))
            returns, tail = "", f"SELECT * INTO {outs} FROM {original}; RETURN;"
    elif signature.returns_set:
        returns, tail = f"SETOF {result}", f"RETURN QUERY SELECT * FROM {original};"
    elif result == "void":
        returns, tail = "void", f"PERFORM {original}; RETURN;"
    else:
        returns, tail = result, f"RETURN {original};"
    ddl = (
        f"CREATE FUNCTION public.{quote_identifier(signature.name)}({params})"
        f"{f' RETURNS {returns}' if returns else ''} LANGUAGE plpgsql AS $shadow$\n"
        f"BEGIN\n    {_record(label)}    {tail}\nEND $shadow$"
    )
    return Shadow(label, "function", (ddl,))


def aggregate_shadow(signature: Signature, inputs: list[str], result: str, n: int) -> Shadow:
    """public.<name>(inputs) as an aggregate whose transition function records its call."""
    label = f"{signature.name}({', '.join(inputs) or '*'})"
    step = f"public.jm_shadow_step_{n}"
    params = ", ".join([f"s {result}", *(f"a{i} {t}" for i, t in enumerate(inputs, 1))])
    return Shadow(
        label,
        "aggregate",
        (
            f"CREATE FUNCTION {step}({params}) RETURNS {result} LANGUAGE plpgsql AS $shadow$\n"
            f"BEGIN\n    {_record(label)}    RETURN s;\nEND $shadow$",
            f"CREATE AGGREGATE public.{quote_identifier(signature.name)}({', '.join(inputs) or '*'}) "
            f"(SFUNC = {step}, STYPE = {result})",
        ),
    )


def operator_shadow(symbol: str, function: str, inputs: list[str], result: str, n: int) -> Shadow:
    """public.<symbol> on these types, backed by a function that records its call and then does
    what pg_catalog's operator does."""
    label = f"operator {symbol}({', '.join(inputs)})"
    backing = f"public.jm_shadow_operator_{n}"
    params, call = _arguments(inputs)
    sides = f"LEFTARG = {inputs[0]}, RIGHTARG = {inputs[1]}" if len(inputs) == 2 else f"RIGHTARG = {inputs[0]}"
    return Shadow(
        label,
        "operator",
        (
            f"CREATE FUNCTION {backing}({params}) RETURNS {result} LANGUAGE plpgsql AS $shadow$\n"
            f"BEGIN\n    {_record(label)}    RETURN pg_catalog.{quote_identifier(function)}({call});\nEND $shadow$",
            f"CREATE OPERATOR public.{symbol} ({sides}, FUNCTION = {backing})",
        ),
    )


async def plan_shadows(conn: asyncpg.Connection, texts: list[str]) -> list[Shadow]:
    """The shadows of every pg_catalog routine the library calls by name and of every operator
    it writes (``conn``: a search_path of pg_catalog alone)."""
    casts = await conn.fetch(
        "SELECT format_type(castsource, NULL) AS source, format_type(casttarget, NULL) AS target"
        "  FROM pg_cast WHERE castcontext = 'i'"
    )
    concretizer = Concretizer((r["source"], r["target"]) for r in casts)
    routines = await conn.fetch(
        """
        SELECT p.proname, p.prokind::text, p.proretset, format_type(p.prorettype, NULL) AS result,
               ARRAY(SELECT format_type(a.t, NULL) FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]))
                                                       WITH ORDINALITY AS a(t, i) ORDER BY a.i) AS types,
               coalesce(p.proargmodes::text[], array_fill('i'::text, ARRAY[p.pronargs])) AS modes,
               g.aggkind::text
          FROM pg_proc AS p LEFT JOIN pg_aggregate AS g ON g.aggfnoid = p.oid
         WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY ($1::text[])
           AND p.prokind IN ('f', 'a')
         ORDER BY p.proname, p.oid
        """,
        sorted(called_names(texts)),
    )
    shadows: list[Shadow] = []
    labels: set[str] = set()

    def add(shadow: Shadow) -> None:
        if shadow.label not in labels:
            labels.add(shadow.label)
            shadows.append(shadow)

    for row in routines:
        if row["prokind"] == "a" and row["aggkind"] != "n":
            continue  # ordered-set and hypothetical-set aggregates: WITHIN GROUP, not ours
        inputs = [
            f"VARIADIC {t}" if m == "v" else t for t, m in zip(row["types"], row["modes"], strict=True) if m in "ivb"
        ]
        outputs = [t for t, m in zip(row["types"], row["modes"], strict=True) if m in "otb"]
        signature = Signature(row["proname"], inputs, outputs, row["result"], row["proretset"])
        for expanded in _expand_variadic_any(signature):
            for concrete_inputs, concrete_outputs, result in concretizer.concretize(expanded):
                if row["prokind"] == "a":
                    if not any(t.startswith("VARIADIC ") for t in concrete_inputs):
                        add(aggregate_shadow(expanded, concrete_inputs, result, len(shadows)))
                else:
                    add(function_shadow(expanded, concrete_inputs, concrete_outputs, result))

    operators = await conn.fetch(
        """
        SELECT o.oprname, o.oprkind::text, format_type(o.oprleft, NULL) AS l, format_type(o.oprright, NULL) AS r,
               format_type(o.oprresult, NULL) AS result, p.proname AS function
          FROM pg_operator AS o JOIN pg_proc AS p ON p.oid = o.oprcode
         WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprname = ANY ($1::text[])
         ORDER BY o.oprname, o.oid
        """,
        sorted(operator_symbols(texts)),
    )
    for row in operators:
        inputs = [row["l"], row["r"]] if row["oprkind"] == "b" else [row["r"]]
        signature = Signature(row["oprname"], inputs, [], row["result"], False)
        for concrete_inputs, _, result in concretizer.concretize(signature):
            if all(t in OURS for t in concrete_inputs):  # only the types our SQL works with
                add(operator_shadow(row["oprname"], row["function"], concrete_inputs, result, len(shadows)))
    return shadows


_PLANT = """
DO $plant$
DECLARE
    v_item record;
    v_ddl  text;
BEGIN
    FOR v_item IN SELECT * FROM pg_temp.shadow_ddl ORDER BY n LOOP
        BEGIN
            FOREACH v_ddl IN ARRAY v_item.ddl LOOP
                EXECUTE v_ddl;
            END LOOP;
            UPDATE pg_temp.shadow_ddl SET made = true WHERE n = v_item.n;
        EXCEPTION WHEN OTHERS THEN
            UPDATE pg_temp.shadow_ddl SET error = SQLERRM WHERE n = v_item.n;
        END;
    END LOOP;
END $plant$
"""


async def plant(conn: asyncpg.Connection, shadows: list[Shadow]) -> dict[str, int]:
    """Creates the shadows (those PostgreSQL refuses are skipped); how many of each kind exist."""
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE shadow_ddl (n int, kind text, ddl text[], made boolean, error text)")
        await conn.copy_records_to_table(
            "shadow_ddl",
            schema_name="pg_temp",
            records=[(n, s.kind, list(s.ddl), False, None) for n, s in enumerate(shadows)],
        )
        await conn.execute(_PLANT)
        rows = await conn.fetch(
            "SELECT kind, count(*) FILTER (WHERE made) AS made FROM pg_temp.shadow_ddl GROUP BY kind"
        )
        await conn.execute("DROP TABLE pg_temp.shadow_ddl")
    return {r["kind"]: r["made"] for r in rows}


# -- the hostile database ----------------------------------------------------------------------


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass
class Hostile:
    """A database where ``public`` is full of shadows planted by a role of no privilege."""

    dsn: str
    admin: asyncpg.Connection  # a superuser whose search_path is pg_catalog alone: no shadow in sight
    planted: dict[str, int]

    async def hits(self) -> list[str]:
        rows = await self.admin.fetch("SELECT name FROM public.shadow_hits")
        return sorted({r["name"] for r in rows})

    async def calls(self) -> int:
        row = await self.admin.fetchrow("SELECT last_value, is_called FROM public.shadow_calls")
        assert row is not None
        return int(row["last_value"]) if row["is_called"] else 0

    async def clear(self) -> None:
        await self.admin.execute("TRUNCATE public.shadow_hits; SELECT setval('public.shadow_calls', 1, false)")


@pytest.fixture(scope="module")
async def hostile(dsn: str) -> AsyncIterator[Hostile]:
    suffix = uuid.uuid4().hex[:12]
    database, attacker = f"jm_shadow_{suffix}", f"jm_attacker_{suffix}"
    server = await asyncpg.connect(dsn)
    try:
        await server.execute(f"CREATE DATABASE {database}")
        await server.execute(f"CREATE ROLE {attacker} NOLOGIN")
        target = with_database(dsn, database)
        admin = await asyncpg.connect(target, server_settings={"search_path": "pg_catalog"})
        try:
            await admin.execute(f"""
                GRANT CREATE ON SCHEMA public TO PUBLIC;  -- the default before PostgreSQL 15
                CREATE TABLE public.shadow_hits (name text);
                GRANT INSERT, SELECT ON public.shadow_hits TO PUBLIC;
                CREATE SEQUENCE public.shadow_calls;
                GRANT USAGE, SELECT, UPDATE ON SEQUENCE public.shadow_calls TO PUBLIC;
                SET ROLE {attacker};
            """)
            planted = await plant(admin, await plan_shadows(admin, library_sql()))
            await admin.execute("RESET ROLE")
            yield Hostile(target, admin, planted)
        finally:
            await admin.close()
    finally:
        try:
            await server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            await server.execute(f"DROP ROLE IF EXISTS {attacker}")
        finally:
            await server.close()


# -- the tests ---------------------------------------------------------------------------------


async def test_the_shadows_are_planted_and_would_run(hostile: Hostile) -> None:
    """The positive control: a client with the default search_path that calls the built-ins
    unqualified gets the shadows (so a clean run below means something)."""
    assert hostile.planted.get("function", 0) >= 300, hostile.planted
    assert hostile.planted.get("aggregate", 0) >= 100, hostile.planted
    assert hostile.planted.get("operator", 0) >= 300, hostile.planted
    await hostile.clear()
    client = await asyncpg.connect(hostile.dsn)  # "$user", public: PostgreSQL's default
    try:
        some = uuid.uuid4()
        assert await client.fetchval("SELECT array_position(ARRAY[$1::uuid], $1::uuid)", some) == 1
        assert await client.fetchval("SELECT cardinality(ARRAY['a', 'b']::text[])") == 2
        assert await client.fetchval("SELECT ARRAY['a', 'b']::text[] @> ARRAY['a']::text[]") is True
        assert await client.fetchval("SELECT count(x) FROM unnest(ARRAY[$1::uuid]) AS x", some) is None
        assert await client.fetchval("SELECT set_bit('\\x00'::bytea, 1, 1)") == b"\x02"
    finally:
        await client.close()
    assert await hostile.hits() == [
        "array_position(uuid[], uuid)",
        "cardinality(text[])",
        "count(uuid)",
        "operator @>(text[], text[])",
        "set_bit(bytea, integer, integer)",
        "unnest(uuid[])",
    ]
    assert await hostile.calls() >= 6
    await hostile.clear()


async def test_no_shadow_runs_whatever_the_library_does(
    hostile: Hostile, schema_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await hostile.clear()
    admin = hostile.admin
    # a worker as superuser, the default search_path; lapses short enough to rescue within the test
    jm = JobMaster(
        hostile.dsn,
        schema=schema_name,
        retry_backoff=0.0,
        heartbeat_interval=0.2,
        heartbeat_lapse=2.0,
        connection_timeout=10.0,
        poll_interval=0.5,
    )
    client = await asyncpg.connect(hostile.dsn)  # an application's connection: the default search_path
    s = q(jm)
    others: list[JobMaster] = []
    try:
        await jm.deploy()  # after the planting, as an upgrade would be
        await jm.deploy()  # again: upserts, the tasks trigger, mark_dependency_targets
        await workload(jm, client, admin, tmp_path, monkeypatch, others)
        await jm.deploy(prune=True)
    finally:
        for other in others:
            await other.close()
        await jm.close()
        await client.close()
        await admin.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    assert await hostile.hits() == []
    assert await hostile.calls() == 0


async def workload(
    jm: JobMaster,
    client: asyncpg.Connection,
    admin: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    others: list[JobMaster],
) -> None:
    """Every entry point of the library, in Python and in SQL."""
    s = q(jm)
    t = "tasks_for_tests"

    async def add_job(task_key: str, arguments: object, priority: int = 1) -> uuid.UUID:
        job_id: uuid.UUID = await client.fetchval(
            f"SELECT {s}.add_job($1, $2, $3, $4::json)", t, task_key, priority, json.dumps(arguments)
        )
        return job_id

    async def status(job_id: uuid.UUID) -> str:
        job = await jm.get_job(job_id)
        assert job is not None
        return job.status

    # -- links to dependencies that exist: running, finishing before the link commits, waiting
    base = await jm.insert_job(t, "base", 1, {"n": 40})
    popped = await jm.pop_job()
    assert popped is not None and popped.job_id == base
    on_running = await add_job("doubled", {"n": 20})  # linked to the running base(40), checked at commit
    await popped.execute()
    assert await status(on_running) == "waiting"
    assert await jm.run() == 1

    base = await jm.insert_job(t, "base", 1, {"n": 50})
    popped = await jm.pop_job()
    assert popped is not None and popped.job_id == base
    async with client.transaction():
        finished_meanwhile = await add_job("doubled", {"n": 25})
        await popped.execute()  # completes before the link's transaction commits
    assert await status(finished_meanwhile) == "waiting"
    assert await jm.run() == 1

    waiting_base = await jm.insert_job(t, "base", 1, {"n": 60})
    on_waiting = await add_job("doubled", {"n": 30}, priority=5)  # raises base(60)'s priority at commit
    assert (await jm.get_job(waiting_base)).priority == 6  # type: ignore[union-attr]
    assert [d["job_id"] for d in await jm.dependencies(on_waiting)] == [waiting_base]
    assert await jm.run() == 2

    # -- inserts from Python: the plain statement, its fallbacks, refusals, batches, "ALL"
    first = await jm.insert_job(t, "add", 1, {"a": 1})
    assert await jm.insert_job(t, "add", 1, {"a": 1}) == first  # its twin
    await jm.insert_job(t, "every_kind", 2, {"n": 3.0, "mode": "b", "maybe": None, "obj": {"k": [1, 2.5]}})
    await jm.insert_job(t, "every_kind", 2, {"n": 4, "x": 2, "anything": [[{"deep": True}]] * 50})
    await jm.insert_job(t, "untyped", 0, {"thing": "x"})
    await jm.insert_job(t, "multiply", 0, {"x": 2, "y": 0.5})
    bad_arguments: list[tuple[str, dict[str, Any]]] = [
        ("add", {"a": "one"}),
        ("add", {"b": 2}),
        ("add", {"a": 1, "c": 3}),
        ("every_kind", {"n": 1, "mode": "z"}),
        ("every_kind", {"n": 1, "anything": json.loads("[" * 100 + "]" * 100)}),
        ("every_kind", {"n": 1, "anything": 10**4400}),
    ]
    for task_key, arguments in bad_arguments:
        with pytest.raises(InvalidArguments):
            await jm.insert_job(t, task_key, 0, arguments)
    with pytest.raises(TaskNotFound):
        await jm.insert_job(t, "no_such_task", 0, {})
    batch = await jm.insert_jobs(t, "add", 1, [{"a": i} for i in range(2, 12)] + [{"a": 1}, {"a": 2}])
    assert batch[-2] == first and batch[-1] == batch[0]
    await jm.insert_jobs(t, "every_kind", 0, [{"n": 5.0}, {"n": 6, "s": "x"}])
    with pytest.raises(InvalidArguments):
        await jm.insert_jobs(t, "add", 0, [{"a": 1}, {"a": "two"}])
    painted = await jm.insert_jobs(t, "paint", 1, [{"item": "a", "colour": "ALL"}, {"item": "b", "colour": "red"}])
    every_size = await jm.insert_job(t, "paint", 1, {"item": "c", "colour": "ALL", "size": "ALL"})
    assert len(await jm.dependencies(every_size)) == 6
    flaky = await jm.insert_job(t, "flaky", 0, {"key": "k"})
    exploded = await jm.insert_job(t, "explode", 0, {"reason": "r"})
    await jm.insert_jobs(t, "limited", 0, [{"n": i} for i in range(4)])
    await jm.insert_job(t, "heavy", 0, {"n": 1})
    await jm.insert_job(t, "steady", 0, {"a": 1})

    # -- dependencies: created, shared, arithmetic, chains, failing, "ALL", satisfied
    f = str(tmp_path / "f.txt")
    bar = await jm.insert_job("nice_tasks", "bar", 1, {"file_path": f, "number": 5})
    assert await status(bar) == "blocked"
    await jm.insert_job(t, "doubled", 1, {"n": 3})
    await jm.insert_job(t, "halved", 1, {"n": 4})
    await jm.insert_jobs(t, "fan", 1, [{"i": i, "key": f"k{i % 3}"} for i in range(9)])
    broken_top = await jm.insert_job(t, "top_of_broken", 1, {"key": "z"})
    in_every_colour = await jm.insert_job(t, "painted_in_every_colour", 1, {"item": "car"})
    assert await status(await jm.insert_job(t, "all_tiles", 1, {})) == "failed"
    await jm.insert_job(t, "link_19", 0, {"run": "r"})

    # -- inserts from SQL, the documented interface, as an application does
    row = await client.fetchrow(f"""CALL {s}.insert_job('{t}', 'add', 3, '{{"a": 100}}'::json)""")
    assert row is not None and isinstance(row["job_id"], uuid.UUID)
    row = await client.fetchrow(f"""CALL {s}.insert_job('{t}', 'add', 3, '{{"a": 101}}'::json, NULL)""")
    assert row is not None and isinstance(row["job_id"], uuid.UUID)
    await client.execute(f"""
        DO $$
        DECLARE
            v_id uuid;
        BEGIN
            CALL {s}.insert_job('{t}', 'add', 3, '{{"a": 102}}'::json, v_id);
        END $$""")
    await add_job("multiply", {"x": 3, "y": 1.5})
    await add_job("paint", {"item": "d", "colour": "ALL"})
    await add_job("doubled", {"n": 10})
    for task_key, bad in [
        ("add", '{"a": "\\u0000"}'),
        ("add", '{"a": 1e1000000}'),
        ("add", '{"zz": 1}'),
        ("add", "[1]"),
        ("every_kind", '{"n": 1, "anything": ' + "[" * 100 + "]" * 100 + "}"),
        ("every_kind", '{"n": 1, "anything": 1' + "0" * 4400 + "}"),
        ("paint", '{"item": "e", "colour": "blue"}'),
    ]:
        with pytest.raises(asyncpg.PostgresError) as refused:
            await client.fetchval(f"SELECT {s}.add_job('{t}', $1, 0, $2::json)", task_key, bad)
        assert refused.value.sqlstate == "JM400"

    # -- cancel and retry, from Python and SQL
    waiting_add = await jm.insert_job(t, "add", 0, {"a": 900})
    assert await jm.cancel(waiting_add) is True
    assert await jm.cancel(waiting_add) is False
    assert await client.fetchval(f"SELECT {s}.cancel_job($1)", painted[0]) == "blocked"  # "ALL" parent and children
    assert await jm.retry(painted[0]) == painted[0]
    assert await jm.retry(waiting_add) == waiting_add
    with pytest.raises(NotRetryable):
        await jm.retry(waiting_add)
    assert await client.fetchval(f"SELECT {s}.cancel_job($1)", waiting_add) == "waiting"
    assert await client.fetchval(f"SELECT {s}.retry_job($1)", waiting_add) == waiting_add
    [foo] = await jm.dependencies(bar)
    assert await jm.cancel(foo["job_id"]) is True  # bar fails with it
    assert await status(bar) == "failed"
    assert await jm.retry(bar) == bar  # plans its dependency again
    assert await status(bar) == "blocked"

    # -- the plain claim (tasks without process_limit) and pop_job/run
    fast = JobMaster(jm.dsn, schema=jm.schema, retry_backoff=0.0)
    others.append(fast)
    unlimited = {r["task_id"] for r in await admin.fetch(f"SELECT task_id FROM {s}.tasks WHERE process_limit IS NULL")}
    claimable = fast._worker.claimable_task_ids

    async def only_unlimited() -> list[int]:
        return [i for i in await claimable() if i in unlimited]

    monkeypatch.setattr(fast._worker, "claimable_task_ids", only_unlimited)
    statements = claim_statements(fast, monkeypatch)
    assert await fast.run() > 20
    assert plain_claims(statements) > 0
    assert await status(flaky) == "failed" and await status(exploded) == "failed"
    assert await status(broken_top) == "failed"
    assert await status(in_every_colour) == "complete"

    # -- lost workers: a rescue called from SQL, one the last time (the job fails)
    lost = JobMaster(jm.dsn, schema=jm.schema, retry_backoff=0.0)
    others.append(lost)
    await jm.insert_jobs(t, "add", 50, [{"a": 1000}, {"a": 1001}])
    lost_ids = [job.job_id for job in [await lost.pop_job(), await lost.pop_job()] if job is not None]
    assert len(lost_ids) == 2
    await lost.close()  # gone without a word: its jobs stay running
    # its rescues used up, and the one suspect it ran (of a worker lost before): charged, it fails
    suspected = f"UPDATE {s}.jobs SET rescues = 3, suspect_of = $2 WHERE job_id = $1"
    await admin.execute(suspected, lost_ids[0], uuid.uuid4())
    await lapse(admin, s, lost)
    assert await client.fetchval(f"SELECT {s}.rescue_jobs()") == 2
    assert await status(lost_ids[0]) == "failed" and await status(lost_ids[1]) == "waiting"
    assert await jm.retry(lost_ids[0]) == lost_ids[0]
    # and one that run_forever's rescuer finds
    gone = JobMaster(jm.dsn, schema=jm.schema, retry_backoff=0.0)
    others.append(gone)
    late = await jm.insert_job(t, "add", 100, {"a": 2000})
    popped = await gone.pop_job()
    assert popped is not None and popped.job_id == late
    await gone.close()
    await lapse(admin, s, gone)

    # -- run_forever: claims that respect limits, outcomes, retries, NOTIFY, rescue, cancel
    baz = await jm.insert_job("nice_tasks", "baz", 1, {"file_path": f})  # bar(f) is fresh: satisfied
    await jm.insert_job("nice_tasks", "bar", 1, {"file_path": f, "number": 2})
    sleeper = await jm.insert_job(t, "sleepy", 0, {"seconds": 60})
    threaded = await jm.insert_job(t, "thread_until_cancelled", 0, {"limit": 30})
    async with worker(jm, concurrency=4):
        await until(lambda: running(jm, sleeper, threaded), "the long jobs to start", seconds=30)
        assert await jm.cancel(sleeper) is True
        assert await client.fetchval(f"SELECT {s}.cancel_job($1)", threaded) == "running"
        await until(lambda: quiet(jm), "the queue to drain", seconds=30)
    job = await jm.get_job(late)
    assert job is not None and job.status == "complete" and job.rescues == 1
    assert await status(baz) == "complete"
    assert await status(sleeper) == "cancelled" and await status(threaded) == "cancelled"

    # -- a graceful stop whose grace period runs out: the job goes back (release_jobs)
    held = await jm.insert_job(t, "sleepy", 0, {"seconds": 60})
    async with worker(jm, concurrency=2, grace_period=0.1):
        await until(lambda: running(jm, held), "the job to start")
    assert await status(held) == "waiting"
    assert await jm.cancel(held) is True

    # -- scheduled jobs: run_at from Python (both insert statements) and SQL, a twin moved earlier
    # and one not moved later, a scheduled dependent, "ALL", a limited task; promoted by the plain
    # claim's claimer, by claim_jobs(), and the dispatcher's wait for the earliest one
    soon = timedelta(seconds=0.3)
    timed = [
        await jm.insert_job(t, "add", 1, {"a": 3000}, run_at=soon),
        *await jm.insert_jobs(t, "add", 1, [{"a": 3001}, {"a": 3002}], run_at=datetime.now(UTC) + soon),
        await client.fetchval(f"""SELECT {s}.add_job('{t}', 'add', 1, '{{"a": 3003}}', now() + interval '0.3 s')"""),
        (
            await client.fetchrow(
                f"""CALL {s}.insert_job('{t}', 'add', 1, '{{"a": 3004}}'::json, run_at => now() + interval '1 hour')"""
            )
        )["job_id"],
        await jm.insert_job("nice_tasks", "bar", 1, {"file_path": str(tmp_path / "g.txt"), "number": 1}, run_at=soon),
        await jm.insert_job(t, "paint", 1, {"item": "s", "colour": "ALL"}, run_at=soon),
        await jm.insert_job(t, "limited", 1, {"n": 3000}, run_at=soon),
    ]
    assert await jm.insert_job(t, "add", 1, {"a": 3000}, run_at=timedelta(hours=1)) == timed[0]
    assert await add_job("add", {"a": 3004}) == timed[4]  # now: moved earlier
    # periodic tasks: a schedule's tick fired as the scheduler fires it (once), listed; the deploy
    # at the end removes the schedule (its task has none here)
    schedule_id = await admin.fetchval(
        f"INSERT INTO {s}.schedules (task_id, cron_key, expression, timezone, arguments, priority) "
        f"""SELECT task_id, 'k', '0 0 1 1 *', 'UTC', '{{"a": 4000}}', 1 FROM {s}.tasks WHERE task_key = 'add' """
        "RETURNING schedule_id"
    )
    loaded = await jm._store.ticks.load(await jm._worker.registered_task_ids())
    assert schedule_id in [row["schedule_id"] for row in loaded]
    tick = datetime.now(UTC)
    timed.append(await jm._store.ticks.fire(schedule_id, tick))
    assert await jm._store.ticks.fire(schedule_id, tick) is None
    assert timed[-1] in [row["last_job_id"] for row in await jm.schedules()]
    await until(lambda: due(jm, client, timed), "the scheduled jobs' time to come")
    assert await fast.run() > 0
    async with worker(jm, concurrency=4):
        await until(lambda: quiet(jm), "the scheduled jobs to run", seconds=30)
    assert {await status(job_id) for job_id in timed} == {"complete"}

    # -- looking: every listing, from Python and SQL
    assert (await jm.get_job(first)) is not None
    assert await jm.get_job(uuid.uuid4()) is None
    assert len(await jm.jobs(limit=1000)) > 50
    assert await jm.jobs(status="failed", type_key=t, task_key="explode")
    counts = await jm.counts()
    assert counts["complete"] > 50 and counts["failed"] > 0
    assert await jm.active_counts() == {"waiting": 0, "blocked": 0, "running": 0}
    assert [e["status"] for e in await jm.history(flaky)] == ["waiting", "running"] * 3 + ["failed"]
    assert await jm.dependencies(bar)
    assert await client.fetch(f"SELECT * FROM {s}.job_list LIMIT 20")
    assert await client.fetchrow(f"SELECT * FROM {s}.active_counts()") is not None
    assert await jm._store.held_jobs(jm.worker_id) == []

    # -- the dashboard's reads (sql/dashboard.sql), as its pages, live view and /metrics run them
    insights = jm._store.insights
    overview = await insights.overview()
    assert overview.depth == [] and overview.history_mark is not None
    assert (await insights.chart(True))[0] and (await insights.chart(False))[0]
    for listed in (None, "failed", "waiting"):
        await insights.jobs_page(before=None, status=listed, task_id=None, pattern="%a%", limit=51, scan=1000, cut=99)
    assert (await insights.scan_end(None, 10)).more
    assert (await insights.dependency_tree(bar, 8, 300))[0]
    await insights.worker_of(flaky, jm.worker_id)
    assert await insights.metrics_window(await insights.clock(timedelta(hours=1)), timedelta(0))

    # -- retention: counted, pruned from Python, from SQL, and by a worker's background batch
    await admin.execute(f"UPDATE {s}.jobs SET finished_at = finished_at - interval '31 days'")
    prunable = await jm.prune(dry_run=True)
    assert prunable > 10
    assert await client.fetchval(f"SELECT {s}.prune_jobs(NULL, 5)") == 5
    assert await jm._store.prune_jobs_if_free(5) == 5
    assert await jm.prune() == prunable - 10


async def due(jm: JobMaster, conn: asyncpg.Connection, job_ids: list[uuid.UUID]) -> bool:
    """Has the database's clock passed the jobs' run_at?"""
    now = await conn.fetchval("SELECT pg_catalog.clock_timestamp()")
    for job_id in job_ids:
        job = await jm.get_job(job_id)
        if job is not None and job.run_at is not None and job.run_at > now:
            return False
    return True


async def running(jm: JobMaster, *job_ids: uuid.UUID) -> bool:
    for job_id in job_ids:
        job = await jm.get_job(job_id)
        if job is None or job.status != "running":
            return False
    return True


async def lapse(admin: asyncpg.Connection, s: str, master: JobMaster) -> None:
    """The heartbeat of ``master``'s worker, an hour old."""
    await admin.execute(
        f"UPDATE {s}.workers SET heartbeat_at = now() - interval '1 hour' WHERE worker_id = $1", master.worker_id
    )


async def quiet(jm: JobMaster) -> bool:
    return await jm.active_counts() == {"waiting": 0, "blocked": 0, "running": 0}
