"""Single inserts with realistic arguments against the plainest ones.

    python -m benchmarks insert_arguments [--dsn DSN] [--jobs 600] [--label NAME] [--json]
    python benchmarks/insert_arguments.py ...   # the same

Inserts ``--jobs`` jobs one ``insert_job`` call at a time (each its own round trip) for two
tasks: ``path(file_path: str, a: int, b: int)`` given ``{"file_path": "out/sum-N.txt", "a": N,
"b": 2}`` and ``plain(i: int)`` given ``{"i": N}``, each in a fresh schema after a warm-up:
inserts per second and microseconds per insert for each (``--json``: on one line). Without
``--dsn`` it starts an embedded PostgreSQL (``fsync`` off). It uses only the public API, so run as
a file it measures any version of the package on ``PYTHONPATH`` (how benchmarks/README.md
compares two versions).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobmaster_async import JobMaster, task

if TYPE_CHECKING:
    from benchmarks.cli import Server

#: The embedded server: not durable (single round trips, the commit's flush left out)
SERVER_SETTINGS = {"fsync": "off"}


@task(type_key="bench_arguments")
def path(file_path: str, a: int, b: int) -> None:
    """A task with an integer parameter and a string holding a dot."""


@task(type_key="bench_arguments")
def plain(i: int) -> None:
    """The plainest task."""


KINDS: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "path": ("path", lambda n: {"file_path": f"out/sum-{n}.txt", "a": n, "b": 2}),
    "plain": ("plain", lambda n: {"i": n}),
}
WARM_UP = 50


async def measure(dsn: str, jobs: int) -> dict[str, dict[str, float]]:
    figures = {}
    for kind, (task_key, arguments) in KINDS.items():
        jm = JobMaster(dsn, schema=f"bench_{uuid.uuid4().hex[:8]}")
        try:
            await jm.deploy()
            for n in range(WARM_UP):
                await jm.insert_job("bench_arguments", task_key, 0, arguments(-1 - n))
            start = time.perf_counter()
            for n in range(jobs):
                await jm.insert_job("bench_arguments", task_key, 0, arguments(n))
            elapsed = time.perf_counter() - start
            await jm.deploy(_reset=True)
        finally:
            await jm.close()
        figures[kind] = {"inserts_per_s": round(jobs / elapsed), "us_per_insert": round(elapsed / jobs * 1e6, 1)}
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--label", default="", help="a name for this run, copied into the output")


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    return {"label": args.label, "jobs": args.jobs, **await measure(server.dsn, args.jobs)}


def report(results: dict[str, Any]) -> str:
    lines = [f"{results['label'] or 'this version'}, {results['jobs']} single inserts each", ""]
    lines += ["| arguments | inserts/s | µs per insert |", "|---|---|---|"]
    for kind in KINDS:
        lines.append(f"| {kind} | {results[kind]['inserts_per_s']:,} | {results[kind]['us_per_insert']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if not __package__:  # run as a file: this package after PYTHONPATH's, whose jobmaster_async is measured
        sys.path.append(str(Path(__file__).resolve().parent.parent))
    from benchmarks.cli import alias

    alias("insert_arguments")
