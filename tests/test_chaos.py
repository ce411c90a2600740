"""The chaos suite: two worker processes (``python -m jobmaster_async worker``) drain jobs while
a fault strikes: every client backend terminated 20 times, a server crash, a worker killed, the
network black-holed for 10 s, a worker stopped, a poison job that kills each worker that runs it
(tests/chaos.py; ``python -m benchmarks.chaos`` runs the same with 20,000 jobs). Afterwards every
job is complete (but the poison job, which fails alone: the only job failed by a rescue), none
lost, none left running, the other worker alive, and doubles only where a claim may be lost: at
most ``concurrency`` per worker concerned after a crash or a killed worker, none otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobmaster_async.cli.embedded import TemporaryServer
from tests.chaos import SCENARIOS, Scenario, chaos_server, run_scenario

JOBS = 2000


@pytest.fixture(scope="module")
def server() -> Iterator[TemporaryServer]:
    with chaos_server() as chaos:
        yield chaos


def worker_logs(directory: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(directory.glob("*.log")))


@pytest.mark.timeout(900)  # 2,000 jobs through two worker processes and a fault that lasts up to 10 s
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.key)
async def test_chaos(server: TemporaryServer, scenario: Scenario, tmp_path: Path) -> None:
    result = await run_scenario(server, scenario, JOBS, tmp_path)
    logs = worker_logs(tmp_path)
    assert result.dead_survivors == 0, logs
    assert result.left_running == 0, (result.statuses, logs)
    assert result.doubled <= scenario.doubles_allowed, logs
    expected = {"complete": JOBS, "failed": scenario.failed} if scenario.failed else {"complete": JOBS}
    assert result.statuses == expected, logs
    assert result.rescue_failures == scenario.failed  # a poison job alone: not its neighbours
    assert result.lost == 0
