"""Single inserts with realistic arguments against the plainest ones.

    python benchmarks/insert_arguments.py [--dsn DSN] [--jobs 600] [--label NAME]

Inserts ``--jobs`` jobs one ``insert_job`` call at a time (each its own round trip) for two
tasks: ``path(file_path: str, a: int, b: int)`` given ``{"file_path": "out/sum-N.txt", "a": N,
"b": 2}`` and ``plain(i: int)`` given ``{"i": N}``, each in a fresh schema after a warm-up, and
prints one JSON line: inserts per second and microseconds per insert for each. Without ``--dsn``
it starts an embedded PostgreSQL. It uses only the public API, so it runs against any version of
the package on ``PYTHONPATH`` (how benchmarks/README.md compares two versions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from jobmaster_async import JobMaster, task
from jobmaster_async.cli.embedded import temporary_server


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="a PostgreSQL to use (default: an embedded one)")
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--label", default="", help="a name for this run, copied into the output")
    args = parser.parse_args(argv)
    if args.dsn:
        figures = asyncio.run(measure(args.dsn, args.jobs))
    else:
        with temporary_server({"fsync": "off"}) as server:
            figures = asyncio.run(measure(server.dsn, args.jobs))
    json.dump({"label": args.label, "jobs": args.jobs, **figures}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
