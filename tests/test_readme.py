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
        assert "100 jobs inserted in one round trip; {'complete': 101}" in done.stdout
    finally:
        import asyncio

        asyncio.run(drop_schema(dsn, "quickstart"))


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
