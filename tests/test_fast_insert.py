"""The fast way of making arguments canonical (_fast_canonical): realistic arguments take it, and
whichever way they take, the stored arguments and the refusals are the same."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from jobmaster_async import JobMaster
from tests.conftest import q

#: tasks_for_tests.every_kind: n int, x float, s str, flag bool, mode "a"|"b"|3, maybe int|None,
#: anything, obj dict|None
DEFAULTS = {"x": 1.5, "s": "s", "flag": False, "mode": "a", "maybe": None, "anything": None, "obj": None}

#: arguments -> what is stored
CANONICAL: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"n": 1, "s": "out/sum.txt"}, {"n": 1, "s": "out/sum.txt"}),
    ({"n": 1, "s": "someone@example.org", "x": 2.5}, {"n": 1, "s": "someone@example.org", "x": 2.5}),
    (
        {"n": 1, "x": 1.0, "obj": {"ratio": 0.5, "url": "https://example.org/a.b"}},
        {"n": 1, "x": 1.0, "obj": {"ratio": 0.5, "url": "https://example.org/a.b"}},
    ),
    ({"n": 1.0}, {"n": 1}),
    ({"n": -0.0}, {"n": 0}),
    ({"n": 1, "maybe": 3.0}, {"n": 1, "maybe": 3}),
    ({"n": 1, "maybe": None}, {"n": 1, "maybe": None}),
    ({"n": 1, "mode": 3.0}, {"n": 1, "mode": 3.0}),
    ({"n": 1, "anything": 2.0}, {"n": 1, "anything": 2.0}),
]


async def slow_canonical_calls(conn: asyncpg.Connection, jm: JobMaster, statement: str, *args: object) -> int:
    """How many times _canonical_of ran for one statement (in a transaction rolled back after)."""
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("track_functions needs a superuser")
    async with conn.transaction():
        await conn.execute("SET LOCAL track_functions = 'all'")
        assert await conn.fetchval(statement, *args) is not None
        calls = await conn.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions "
            "WHERE schemaname = $1 AND funcname = '_canonical_of'",
            jm.schema,
        )
        # leave nothing behind: the test is about the path taken
        await conn.execute(f"DELETE FROM {q(jm)}.jobs")
    return int(calls)


@pytest.mark.parametrize(
    "arguments",
    [
        {"n": 1, "s": "out/sum.txt"},
        {"n": 1, "s": "a.b@example.org", "x": 0.25},
        {"n": 2, "obj": {"nested": {"deeper": 1.5}, "path": "a/b.c"}, "maybe": 7},
    ],
)
async def test_realistic_arguments_take_the_fast_way(
    jm: JobMaster, conn: asyncpg.Connection, arguments: dict[str, Any]
) -> None:
    args = ("tasks_for_tests", "every_kind", 1, json.dumps(arguments), None, None, None, None)
    assert await slow_canonical_calls(conn, jm, jm.sql["insert_job_fast"], *args) == 0


async def test_an_integer_written_with_a_dot_takes_the_slow_way(jm: JobMaster, conn: asyncpg.Connection) -> None:
    args = ("tasks_for_tests", "every_kind", 1, json.dumps({"n": 2.0, "s": "x"}), None, None, None, None)
    assert await slow_canonical_calls(conn, jm, jm.sql["insert_job_fast"], *args) == 1


@pytest.mark.parametrize(("arguments", "stored"), CANONICAL)
async def test_every_way_stores_the_same_canonical_arguments(
    jm: JobMaster, conn: asyncpg.Connection, arguments: dict[str, Any], stored: dict[str, Any]
) -> None:
    text = json.dumps(arguments)
    expected = json.dumps({**DEFAULTS, **stored}, sort_keys=True)
    fast = await conn.fetchval(
        jm.sql["insert_job_fast"], "tasks_for_tests", "every_kind", 1, text, None, None, None, None
    )
    assert fast is not None
    ids = {
        fast,
        await conn.fetchval(f"SELECT {q(jm)}.add_job('tasks_for_tests', 'every_kind', 1, $1::json)", text),
        await conn.fetchval(
            f"SELECT ({q(jm)}.insert_jobs('tasks_for_tests', 'every_kind', 1, ARRAY[$1::jsonb]))[1]", text
        ),
    }
    assert len(ids) == 1  # one canonical form, so one active job
    row = await conn.fetchval(f"SELECT arguments::text FROM {q(jm)}.jobs WHERE job_id = $1", fast)
    assert json.dumps(json.loads(row), sort_keys=True) == expected
    # and each value's text: 1, not 1.0, for an integer parameter; 1.0 for a float one
    for name, value in stored.items():
        text = await conn.fetchval(f"SELECT (arguments->$2)::text FROM {q(jm)}.jobs WHERE job_id = $1", fast, name)
        assert json.loads(text) == value if isinstance(value, dict) else text == json.dumps(value)


async def test_a_task_not_derived_again_still_stores_canonical_integers(
    jm: JobMaster, conn: asyncpg.Connection
) -> None:
    """Before migration 0010 derived it, non_integer_names is '{}': every value is looked at."""
    await conn.execute(f"""
        ALTER TABLE {q(jm)}.tasks DISABLE TRIGGER tasks_derive_checks;
        UPDATE {q(jm)}.tasks SET non_integer_names = '{{}}';
        ALTER TABLE {q(jm)}.tasks ENABLE TRIGGER tasks_derive_checks;
    """)
    job_id = await conn.fetchval(
        jm.sql["insert_job_fast"],
        "tasks_for_tests",
        "every_kind",
        1,
        json.dumps({"n": 4.0, "s": "a.b"}),
        None,
        None,
        None,
        None,
    )
    assert await conn.fetchval(f"SELECT arguments->>'n' FROM {q(jm)}.jobs WHERE job_id = $1", job_id) == "4"


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"n": 1.5, "s": "out/sum.txt"}, 'argument "n" must be an integer, got 1.5'),
        ({"n": 1, "maybe": 2.5}, 'argument "maybe" must be an integer, got 2.5'),
        ({"n": "1.0"}, 'argument "n" must be an integer, got "1.0"'),
    ],
)
async def test_refusals_are_unchanged(
    jm: JobMaster, conn: asyncpg.Connection, arguments: dict[str, Any], says: str
) -> None:
    text = json.dumps(arguments)
    assert (
        await conn.fetchval(jm.sql["insert_job_fast"], "tasks_for_tests", "every_kind", 1, text, None, None, None, None)
        is None
    )
    with pytest.raises(asyncpg.PostgresError) as refused:
        await conn.fetchval(f"SELECT {q(jm)}.add_job('tasks_for_tests', 'every_kind', 1, $1::json)", text)
    assert refused.value.sqlstate == "JM400"
    assert refused.value.message == f"tasks_for_tests.every_kind: {says}"
