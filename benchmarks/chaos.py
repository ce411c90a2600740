"""The chaos suite's scenarios (tests/chaos.py) at scale: two worker processes drain 20,000 jobs
while a fault strikes; prints what became of the jobs, as a Markdown table.

    python -m benchmarks chaos [--jobs 20000] [--only terminate,crash,sigkill,blackhole,sigterm,poison]

lost: jobs never executed to the end; doubled: executions beyond the first (each execution
appends a line to a file); recovery: seconds from the end of the fault until every surviving
worker started jobs again (SIGKILL: until the killed worker's jobs were rescued; SIGTERM: until
the stopped worker had exited).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.cli import Server, alias
from tests.chaos import CONCURRENCY, SCENARIOS, TASK_SECONDS, WORKERS, ChaosResult, chaos_server, run_scenario


def row(result: ChaosResult) -> str:
    recovery = "-" if result.recovery is None else f"{result.recovery:.1f}"
    others = {status: n for status, n in result.statuses.items() if status != "complete"}
    notes = []
    if others:
        notes.append(", ".join(f"{n} {status}" for status, n in sorted(others.items())))
    if result.rescue_failures:
        notes.append(f"{result.rescue_failures} failed when rescued (their worker lost more often than rescues allows)")
    if result.dead_survivors:
        notes.append(f"{result.dead_survivors} surviving workers died")
    cells = (
        result.scenario.fault,
        f"{result.jobs:,}",
        str(result.lost),
        f"{result.doubled} (≤ {result.scenario.doubles_allowed})",
        recovery,
        f"{result.seconds:.0f}",
        "; ".join(notes) or "ok",
    )
    return "| " + " | ".join(cells) + " |"


#: the chaos server is tests/chaos.py's (its settings), started per run
OWN_SERVERS = True
HEADER = "| fault | jobs | lost | doubled (allowed) | recovery s | drain s | notes |\n|---|---|---|---|---|---|---|"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--only", default=",".join(s.key for s in SCENARIOS), help="scenarios, comma-separated")


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    logging.basicConfig(level=logging.ERROR)  # deploy's warnings about the test tasks' definitions
    keys = args.only.split(",")
    print(
        f"{WORKERS} worker processes at concurrency {CONCURRENCY}, jobs of asyncio.sleep({TASK_SECONDS}); "
        "the fault strikes once a tenth of the jobs ran\n"
    )
    print(HEADER, flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="jobmaster-chaos-") as directory, chaos_server() as chaos:
        for scenario in SCENARIOS:
            if scenario.key in keys:
                results.append(await run_scenario(chaos, scenario, args.jobs, Path(directory), time_limit=900))
                print(row(results[-1]), flush=True)
    faults = [
        {
            "fault": r.scenario.fault,
            "jobs": r.jobs,
            "lost": r.lost,
            "doubled": r.doubled,
            "doubles_allowed": r.scenario.doubles_allowed,
            "recovery_s": r.recovery,
            "statuses": r.statuses,
            "rescue_failures": r.rescue_failures,
            "dead_survivors": r.dead_survivors,
            "seconds": r.seconds,
            "row": row(r),
        }
        for r in results
    ]
    return {"workers": WORKERS, "concurrency": CONCURRENCY, "task_seconds": TASK_SECONDS, "faults": faults}


def report(results: dict[str, Any]) -> str:
    return "\n".join([HEADER, *(fault["row"] for fault in results["faults"])])


if __name__ == "__main__":
    alias("chaos")
