"""The soak benchmark's worker process:
``python -m benchmarks.soak_worker DSN SCHEMA CONCURRENCY STATS_FILE``.

Runs ``benchmarks.soak_tasks`` with a one-minute retention, background pruning every ~15 s
(``PRUNE_INTERVAL``, jittered by the library to 7.5-15 s) and a 0.1 s retry backoff. Every
second, and once more when it stops, it writes its counts as JSON to STATS_FILE (replaced
atomically): what the tasks did (``soak_tasks.COUNTS``), jobs claimed and outcomes recorded by
the dispatcher, jobs pruned, and each background pruning that deleted jobs (wall-clock start and
end, jobs deleted, batches). Logs at WARNING only (ERROR for outcomes: not a line per planned
failure); uses uvloop when installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.soak_tasks import COUNTS, RETENTION
from jobmaster_async import JobMaster
from jobmaster_async.events import Claimed, JobFinished, Pruned

#: seconds between two background prunings (the library waits 0.5 to 1 times this)
PRUNE_INTERVAL = 15.0
#: seconds before a failed attempt's retry
RETRY_BACKOFF = 0.1


class Stats:
    def __init__(self, jm: JobMaster, path: Path) -> None:
        self.jm = jm
        self.path = path
        #: [first batch's start, last batch's end, jobs deleted, batches], wall clock
        self.pruned = 0
        jm.events.subscribe(Pruned, self._pruned)

    def _pruned(self, event: Pruned) -> None:
        self.pruned += event.deleted

    def write(self) -> None:
        data: dict[str, Any] = {
            "pid": os.getpid(),
            "counts": dict(COUNTS),
            "claimed": self.jm.events.count(Claimed),
            "recorded": self.jm.events.count(JobFinished),
            "pruned": self.pruned,
            "prunings": [[p.started, p.ended, p.deleted, p.batches] for p in self.jm._worker.pruner.prunings],
        }
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        temporary.replace(self.path)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.write()


async def main(dsn: str, schema: str, concurrency: int, stats_path: Path) -> None:
    async with JobMaster(
        dsn,
        schema=schema,
        poll_interval=5.0,
        retention=RETENTION,
        prune_interval=PRUNE_INTERVAL,
        retry_backoff=RETRY_BACKOFF,
    ) as jm:
        stats = Stats(jm, stats_path)
        writer = asyncio.create_task(stats.run())
        try:
            await jm.run_forever(concurrency, handle_signals=True, grace_period=5)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            stats.write()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    # a warning per planned failure (200 a second) would be most of what the worker does
    logging.getLogger("jobmaster_async.worker.outcomes").setLevel(logging.ERROR)
    dsn, schema, concurrency, stats_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    try:
        import uvloop
    except ImportError:  # only the import is guarded: an ImportError from main() must not re-run it
        asyncio.run(main(dsn, schema, concurrency, stats_file))
    else:
        uvloop.run(main(dsn, schema, concurrency, stats_file))
