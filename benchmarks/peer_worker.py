"""A worker process of one system: ``python -m benchmarks.peer_worker SYSTEM DSN KIND CONCURRENCY``.

Runs until SIGTERM; logs warnings only; uvloop when installed, for every system alike."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any


def _probe(i: int) -> None:
    with open(os.environ["BENCH_PROBE_FILE"], "a") as f:
        f.write(f"{i} {time.time()}\n")


def procrastinate_app(dsn: str) -> Any:
    import procrastinate

    connector = procrastinate.PsycopgConnector(conninfo=dsn, kwargs={"options": "-c search_path=procrastinate"})
    app = procrastinate.App(connector=connector)

    @app.task(name="noop_async")
    async def noop_async(i: int) -> None:
        return None

    @app.task(name="noop_sync")
    def noop_sync(i: int) -> None:
        return None

    @app.task(name="probe")
    async def probe(i: int) -> None:
        _probe(i)

    return app


async def run_jobmaster(dsn: str, concurrency: int, stop: asyncio.Event) -> None:
    import benchmarks.bench_tasks  # noqa: F401
    from jobmaster_async import JobMaster

    async with JobMaster(dsn, schema="bench") as jm:
        worker = asyncio.create_task(jm.run_forever(concurrency, grace_period=5))
        await stop.wait()
        await jm.stop()
        await worker


async def run_pgqueuer(dsn: str, concurrency: int, stop: asyncio.Event) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("noop_async")
    async def noop_async(job: Any) -> None:
        return None

    def blocking() -> None:
        return None

    @qm.entrypoint("noop_sync")
    async def noop_sync(job: Any) -> None:
        await asyncio.to_thread(blocking)  # pgqueuer's advice for blocking code

    @qm.entrypoint("probe")
    async def probe(job: Any) -> None:
        import json

        _probe(json.loads(job.payload)["i"])

    async def stopper() -> None:
        await stop.wait()
        qm.shutdown.set()

    stopping = asyncio.create_task(stopper())
    # batch_size 100: pgqueuer's fastest setting here (its docs: larger batches for throughput)
    await qm.run(batch_size=100)
    await stopping
    await conn.close()


async def run_procrastinate(dsn: str, concurrency: int, stop: asyncio.Event) -> None:
    app = procrastinate_app(dsn)
    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(concurrency=concurrency, wait=True, install_signal_handlers=False)
        )
        await stop.wait()
        worker.cancel()
        try:
            await worker
        except asyncio.CancelledError:
            pass


RUNNERS = {"jobmaster_async": run_jobmaster, "pgqueuer": run_pgqueuer, "procrastinate": run_procrastinate}


async def main(system: str, dsn: str, concurrency: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await RUNNERS[system](dsn, concurrency, stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    system, dsn, _kind, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    try:
        import uvloop

        uvloop.run(main(system, dsn, concurrency))
    except ImportError:
        asyncio.run(main(system, dsn, concurrency))
