"""The README's examples run as written, and its commands are the ones CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import drop_schema

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_quickstart_example_runs(dsn: str, tmp_path: Path) -> None:
    marker = "<!-- README example: tests/test_readme.py saves this block as quickstart.py and runs it -->"
    block = README.split(marker, 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.DOTALL)
    assert code is not None
    script = tmp_path / "quickstart.py"
    script.write_text(code.group(1))
    env = {**os.environ, "JOBMASTER_DSN": dsn, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "100 jobs inserted in one round trip; {'complete': 102}" in done.stdout
    finally:
        import asyncio

        asyncio.run(drop_schema(dsn, "quickstart"))


def test_blocking_facade_example_runs(dsn: str, tmp_path: Path) -> None:
    """The cron script as written, in a database of its own (it uses the default schema), with
    the URL of a pg8000 engine in DATABASE_URL."""
    import asyncio
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    from jobmaster_async import JobMaster

    marker = "<!-- README example: tests/test_readme.py saves this block as cron.py and runs it -->"
    code = re.search(r"```python\n(.*?)```", README.split(marker, 1)[1], re.DOTALL)
    assert code is not None and "pip install pg8000" in code.group(1)
    script = tmp_path / "cron.py"
    script.write_text(code.group(1))
    database = f"readme_cron_{uuid.uuid4().hex[:8]}"
    own = urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))
    out = tmp_path / "sum.txt"

    async def prepare() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"CREATE DATABASE {database}")
        finally:
            await conn.close()
        async with JobMaster(own, task_modules=["jobmaster_async.examples.my_tasks"]) as jm:
            await jm.deploy()
            await jm.insert_job("my_tasks", "task1", 10, {"file_path": str(out), "a": 1, "b": 2})

    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        finally:
            await conn.close()

    asyncio.run(prepare())
    try:
        url = urlunsplit(urlsplit(own)._replace(scheme="postgresql+pg8000"))
        env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert out.read_text() == "3"
    finally:
        asyncio.run(drop())


def test_ci_runs_the_readme_test_command() -> None:
    command = "python -m pytest -q"
    assert f"\n{command}" in README.split("\n\n", 3)[2] or command in README[:1500]
    assert command in (ROOT / ".ci" / "run").read_text()


def test_every_cli_command_in_the_readme_exists() -> None:
    from click.testing import CliRunner

    from jobmaster_async.cli import main

    commands = set(re.findall(r"^jobmaster-async (?:--schema \S+ )?([a-z]+(?: (?:url|stop))?)", README, re.MULTILINE))
    table = README.split("| command | what it does |", 1)[1].split("\n\n", 1)[0]
    commands |= set(re.findall(r"`([a-z]+(?: (?:url|stop))?)(?: [^`]*)?`", table))
    assert {"demo", "deploy", "worker", "jobs", "show", "insert", "sql", "db url", "db stop"} <= commands
    runner = CliRunner()
    for command in commands:
        result = runner.invoke(main, [*command.split(), "--help"])
        assert result.exit_code == 0, command


def test_readme_sql_grants_match_the_cli() -> None:
    from click.testing import CliRunner

    from jobmaster_async.cli import main

    printed = CliRunner().invoke(main, ["sql"]).output
    for line in re.findall(r"^\s*(GRANT EXECUTE ON .*;)$", README, re.MULTILINE):
        assert line.replace("jobmaster.", '"jobmaster".') in printed, line
