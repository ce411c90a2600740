"""A failover at scale (tests/replication.py): two worker processes drain jobs from a primary
with a streaming standby, given both hosts with ``target_session_attrs=read-write``, while a
client inserts a job every 20 ms; at 30 % drained the primary crashes, a third worker starts, and
the standby is promoted some seconds later. Prints a Markdown table.

    python -m benchmarks failover [--jobs 20000] [--promote-after 10] [--lag 3]
    python -m benchmarks failover --claim-cost   # a claim's latency, asynchronous vs synchronous standby

never run: acknowledged jobs never executed to the end; run twice: executions beyond the first;
lost inserts: acknowledged inserts the new primary does not have; back to work: seconds from the
promotion until each worker running at the crash started a job again, and (late) until the
worker started during the failover started its first.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.cli import Server, alias
from tests.replication import FailoverResult, run_failover

#: tests/replication.py starts the primary and its standby
OWN_SERVERS = True
HEADER = (
    "| replication | jobs | never run | run twice | lost inserts | workers died | back to work after promotion |\n"
    "|---|---|---|---|---|---|---|"
)
CLAIM_HEADER = "| standby | pop_job median ms | p99 ms |\n|---|---|---|"


def row(result: FailoverResult) -> str:
    back = " / ".join(f"{b:.1f}" for b in sorted(result.back_to_work)) or "-"
    late = "-" if result.late_worker is None else f"{result.late_worker:.1f}"
    cells = (
        result.replication,
        f"{result.jobs:,}",
        f"{result.never_run:,}",
        f"{result.run_twice:,} (concurrency {result.concurrency})",
        f"{result.lost_inserts:,}",
        str(result.workers_died),
        f"{back} s; late worker {late} s",
    )
    return "| " + " | ".join(cells) + " |"


async def claim_cost(pops: int = 2000) -> list[dict[str, Any]]:
    """Median and p99 of pop_job() (a claim of one job, its commit waiting for the standby or
    not) with an asynchronous and a synchronous standby on this machine."""
    import statistics
    import time

    import tests.tasks_for_tests  # noqa: F401  (registers the task)
    from jobmaster_async import JobMaster
    from tests.replication import replicated

    print(CLAIM_HEADER)
    rows = []
    for synchronous in (False, True):
        with replicated(synchronous) as pair:
            async with JobMaster(pair.primary.dsn, schema="claims") as jm:
                await jm.deploy()
                await jm.insert_jobs("tasks_for_tests", "add", 0, [{"a": i} for i in range(pops)])
                times = []
                for _ in range(pops):
                    began = time.perf_counter()
                    job = await jm.pop_job()
                    times.append(time.perf_counter() - began)
                    assert job is not None
                    await job.execute()
            times.sort()
            median, p99 = statistics.median(times) * 1000, times[int(len(times) * 0.99)] * 1000
            standby = "synchronous" if synchronous else "asynchronous"
            rows.append({"standby": standby, "median_ms": median, "p99_ms": p99})
            print(f"| {standby} | {median:.2f} | {p99:.2f} |", flush=True)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--task-seconds", type=float, default=0.1)
    parser.add_argument("--promote-after", type=float, default=10.0)
    parser.add_argument("--lag", type=float, default=3.0, help="seconds the standby receives nothing before the crash")
    parser.add_argument("--claim-cost", action="store_true", help="measure a claim's latency instead")


async def run(options: argparse.Namespace, server: Server) -> dict[str, Any]:
    logging.basicConfig(level=logging.ERROR)
    if options.claim_cost:
        return {"claim_cost": await claim_cost()}
    print(HEADER)
    results = []
    for synchronous in (False, True):
        for lag in (0.0, options.lag):
            with tempfile.TemporaryDirectory() as directory:
                result = await run_failover(
                    Path(directory),
                    synchronous=synchronous,
                    jobs=options.jobs,
                    concurrency=options.concurrency,
                    task_seconds=options.task_seconds,
                    promote_after=options.promote_after,
                    lag=lag,
                    time_limit=3600,
                )
            print(row(result), flush=True)
            results.append(dataclasses.asdict(result))
    return {"failovers": results}


def report(results: dict[str, Any]) -> str:
    if "claim_cost" in results:
        lines = [f"| {r['standby']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} |" for r in results["claim_cost"]]
        return "\n".join([CLAIM_HEADER, *lines])
    return "\n".join([HEADER, *(row(FailoverResult(**r)) for r in results["failovers"])])


if __name__ == "__main__":
    alias("failover")
