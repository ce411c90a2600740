"""A worker process for the benchmarks: ``python -m benchmarks.worker DSN SCHEMA CONCURRENCY
[PRUNE_INTERVAL]`` (seconds between background prunings; default 60, 0: none).

Logs at WARNING only (the CLI worker logs a line per job), uses uvloop when installed."""

from __future__ import annotations

import asyncio
import logging
import sys

import benchmarks.bench_tasks  # noqa: F401
from jobmaster_async import JobMaster


async def main(dsn: str, schema: str, concurrency: int, prune_interval: float = 60.0) -> None:
    async with JobMaster(dsn, schema=schema, poll_interval=5.0, prune_interval=prune_interval) as jm:
        await jm.run_forever(concurrency, handle_signals=True, grace_period=5)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    dsn, schema, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prune_interval = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
    try:
        import uvloop
    except ImportError:  # only the import is guarded: an ImportError from main() must not re-run it
        asyncio.run(main(dsn, schema, concurrency, prune_interval))
    else:
        uvloop.run(main(dsn, schema, concurrency, prune_interval))
