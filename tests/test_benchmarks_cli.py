"""``python -m benchmarks SCENARIO``: one parser, one result format (benchmarks/cli.py). The
scenarios run in their own processes (their tasks stay out of this one's registry), on tiny sizes:
what is checked is the command and its result, not a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.cli import SCENARIOS, _without_dsn

ROOT = Path(__file__).parent.parent


def benchmarks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )


def test_the_command_lists_every_scenario() -> None:
    listed = {line.split()[0] for line in benchmarks("benchmarks").stdout.splitlines() if line.startswith("    ")}
    assert set(SCENARIOS) <= listed


def test_a_scenario_prints_its_table_and_writes_the_result(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = benchmarks("benchmarks", "dependencies", "--dsn", dsn, "--json", str(out))
    assert "| chain_20 | 20 |" in run.stdout
    result = json.loads(out.read_text())
    assert result["scenario"] == "dependencies"
    assert result["command"] == f"python -m benchmarks dependencies --dsn DSN --json {out}"
    assert dsn not in out.read_text()
    assert result["server"] == "given (--dsn)"
    figures = result["results"]
    assert {name: r["jobs"] for name, r in figures.items()} == {
        "chain_20": 20,
        "independent_20": 20,
        "fan_in_1000": 1001,
        "independent_1001": 1001,
    }


def _one_json_line(stdout: str) -> dict[str, Any]:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    result: dict[str, Any] = json.loads(lines[0])
    return result


def test_the_json_alone_on_stdout_and_the_module_alias(dsn: str) -> None:
    for command in (("benchmarks", "insert_arguments"), ("benchmarks.insert_arguments",)):
        run = benchmarks(*command, f"--dsn={dsn}", "--jobs", "3", "--label", "x", "--json")
        result = _one_json_line(run.stdout)
        assert result["scenario"] == "insert_arguments"
        assert result["options"] == {"jobs": 3, "label": "x"}
        assert result["command"].endswith("insert_arguments --dsn=DSN --jobs 3 --label x --json")
        assert result["results"]["jobs"] == 3
        assert set(result["results"]) == {"label", "jobs", "path", "plain"}


def test_the_dsn_is_left_out_of_the_command() -> None:
    given = ["soak", "--dsn", "postgresql://u:secret@h/db", "--rate", "10", "--dsn=postgresql://u:pw@h/db"]
    assert _without_dsn(given) == ["soak", "--dsn", "DSN", "--rate", "10", "--dsn=DSN"]


def test_scenarios_with_servers_of_their_own_refuse_a_dsn() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "chaos", "--dsn", "postgresql://h/db"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "chaos starts servers of its own: --dsn is not supported" in run.stderr
