"""jobmaster_async against pgqueuer and procrastinate, in one run on one PostgreSQL.

    python -m benchmarks compare [--dsn DSN] [--only jobmaster_async,pgqueuer] [--rounds 3] [--quick]
                                 [--json FILE] [--out benchmarks/results]

Needs the ``bench`` extra. Systems run alternately (A B C A B C ...); every figure is the median of
the rounds with its min-max; every run first checks its own work (each job executed exactly once).
Writes a markdown table (ratios against each peer), JSON and PNG charts to ``--out``
(compare_report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from benchmarks.cli import Server, alias
from benchmarks.common import ROOT
from benchmarks.compare_report import charts, markdown, summarise
from benchmarks.systems import SYSTEMS, System


@contextmanager
def worker(
    system: System, dsn: str, concurrency: int, probe_file: str, usage: dict[str, float] | None = None
) -> Iterator[psutil.Process]:
    """A worker process, stopped with SIGTERM on exit; ``usage`` gets its peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_PROBE_FILE": probe_file}
    process = subprocess.Popen(system.worker_argv(dsn, "any", concurrency), cwd=ROOT, env=env)
    watched = psutil.Process(process.pid)
    _workers.append(watched)
    try:
        yield watched
    finally:
        _workers.remove(watched)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while (waited := os.wait4(process.pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if waited[0] == 0:
            process.kill()
            waited = os.wait4(process.pid, 0)
        process.returncode = 0  # reaped here
        if usage is not None:
            # sampled while waiting (ru_maxrss would count the fork of this harness before exec)
            usage["peak_rss_mb"] = _peak_rss.pop(process.pid, 0) / 2**20


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


_workers: list[psutil.Process] = []
_peak_rss: dict[int, int] = {}  # pid -> the largest RSS seen while waiting


POLL = 0.005  # seconds between checks while waiting for a step


async def _until(check: Callable[[], Any], limit: float = 300, pause: Callable[[], float] = lambda: POLL) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish")
        for process in _workers:
            if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                raise RuntimeError("the worker process died (its error is above)")
            _peak_rss[process.pid] = max(_peak_rss.get(process.pid, 0), process.memory_info().rss)
        await asyncio.sleep(pause())


async def measure_enqueue(system: System, dsn: str, one: int, bulk: int) -> dict[str, float]:
    await system.reset(dsn)
    await system.open(dsn)
    try:
        started = time.perf_counter()
        await system.enqueue_each("async", range(one))
        one_rate = one / (time.perf_counter() - started)
        started = time.perf_counter()
        await system.enqueue_bulk("async", range(one, one + bulk))
        bulk_rate = bulk / (time.perf_counter() - started)
    finally:
        await system.close()
    return {"enqueue_one_per_call": one_rate, "enqueue_bulk": bulk_rate}


async def _below(system: System, conn: asyncpg.Connection, count: int) -> bool:
    return await system.remaining(conn) < count


async def _until_drained(system: System, conn: asyncpg.Connection, jobs: int, started: float) -> None:
    """Waits until no job is left. Each count competes with the worker for the same cores (a count
    of a 20,000-job queue took 7 ms on jobmaster_async and 1 ms on pgqueuer; every 5 ms, they were
    most of the server's work in a drain), so the pause is half the time the rest should take at
    the rate so far, and 5 ms near the end. It is at most 100 ms and a twentieth of the time
    elapsed, so a drain that speeds up is overshot by no more than 5 %."""
    left = jobs

    async def drained() -> bool:
        nonlocal left
        left = await system.remaining(conn)
        return left == 0

    def pause() -> float:
        elapsed = time.perf_counter() - started
        rate = (jobs - left) / elapsed
        return max(POLL, min(0.1, elapsed / 20, left / rate / 2)) if rate > 0 else POLL

    await _until(drained, pause=pause)


async def measure_drain(system: System, dsn: str, kind: str, jobs: int, concurrency: int) -> dict[str, float]:
    """Pre-inserted jobs drained by one worker process: from the first job taken to the last."""
    await system.reset(dsn)
    await system.open(dsn)
    try:
        await system.enqueue_bulk(kind, range(jobs))
    finally:
        await system.close()
    conn = await asyncpg.connect(dsn)
    usage: dict[str, float] = {}
    try:
        with worker(system, dsn, concurrency, os.devnull, usage) as process:
            await _until(lambda: _below(system, conn, jobs))
            started, cpu0 = time.perf_counter(), _cpu(process)
            await _until_drained(system, conn, jobs, started)
            seconds, cpu = time.perf_counter() - started, _cpu(process) - cpu0
        await system.verify(conn, jobs)
    finally:
        await conn.close()
    return {
        f"drain_{kind}": jobs / seconds,
        f"cpu_s_per_1000_{kind}": cpu / jobs * 1000,
        f"peak_rss_mb_{kind}": usage["peak_rss_mb"],
    }


STEADY_BACKLOG = 1000


async def measure_steady(system: System, dsn: str, seconds: float, concurrency: int) -> dict[str, float]:
    """A producer inserting batches of 100 while one worker drains, keeping at most
    STEADY_BACKLOG jobs queued (a steady state, not a growing backlog)."""
    await system.reset(dsn)
    conn = await asyncpg.connect(dsn)
    await system.open(dsn)
    produced = 0
    try:
        with worker(system, dsn, concurrency, os.devnull):
            await asyncio.sleep(1.0)  # let the worker start: a warm-up, not a synchronisation point
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                if await system.remaining(conn) < STEADY_BACKLOG:
                    await system.enqueue_bulk("async", range(produced, produced + 100))
                    produced += 100
                else:
                    await asyncio.sleep(0.001)
            elapsed = time.perf_counter() - started
            left = await system.remaining(conn)
            await _until(lambda: _below(system, conn, 1))
        await system.verify(conn, produced)
    finally:
        await system.close()
        await conn.close()
    return {"steady_done_per_s": (produced - left) / elapsed, "steady_inserted_per_s": produced / elapsed}


async def measure_latency(system: System, dsn: str, jobs: int, per_second: float = 200) -> dict[str, Any]:
    """Jobs inserted one at a time (~per_second) into an idle worker: insert -> start."""
    await system.reset(dsn)
    with tempfile.NamedTemporaryFile(prefix="bench-probe-", delete=False) as probe:
        probe_file = probe.name
    sent: dict[int, float] = {}
    conn = await asyncpg.connect(dsn)
    await system.open(dsn)
    try:
        with worker(system, dsn, 8, probe_file):
            await asyncio.sleep(1.5)  # let the worker start and go idle: a warm-up
            next_at = time.monotonic()
            for i in range(jobs):
                sent[i] = time.time()
                await system.enqueue_each("probe", range(i, i + 1))
                next_at += 1 / per_second
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await _until(lambda: _below(system, conn, 1))
        await system.verify(conn, jobs)
        started = _read_probe(probe_file)
    finally:
        await system.close()
        await conn.close()
        os.unlink(probe_file)
    delays = sorted((started[i] - sent[i]) * 1000 for i in sent)
    return {
        "latency_p50_ms": statistics.median(delays),
        "latency_p95_ms": delays[int(len(delays) * 0.95) - 1],
        "latency_p99_ms": delays[int(len(delays) * 0.99) - 1],
        "latencies_ms": delays,
    }


def _read_probe(path: str) -> dict[int, float]:
    lines = Path(path).read_text().splitlines()
    return {int(i): float(at) for i, at in (line.split() for line in lines)}


async def measure_raw_ceiling(dsn: str, jobs: int, batch: int = 100) -> dict[str, float]:
    """PostgreSQL's own ceiling for the pattern: batched claim (UPDATE ... FOR UPDATE SKIP LOCKED
    RETURNING) and completion, one connection, no Python work per job."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS raw_jobs; CREATE TABLE raw_jobs (id bigserial PRIMARY KEY, payload jsonb,"
            " status text NOT NULL DEFAULT 'waiting');"
            " CREATE INDEX ON raw_jobs (id) WHERE status = 'waiting';"
            f" INSERT INTO raw_jobs (payload) SELECT jsonb_build_object('i', i) FROM generate_series(1, {jobs}) i;"
            " ANALYZE raw_jobs"
        )
        claim = await conn.prepare(
            "UPDATE raw_jobs SET status = 'running' WHERE id IN (SELECT id FROM raw_jobs WHERE status = 'waiting'"
            " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, payload"
        )
        complete = await conn.prepare("UPDATE raw_jobs SET status = 'complete' WHERE id = ANY ($1::bigint[])")
        started = time.perf_counter()
        done = 0
        while rows := await claim.fetch(batch):
            await complete.fetch([r["id"] for r in rows])
            done += len(rows)
        seconds = time.perf_counter() - started
        await conn.execute("DROP TABLE raw_jobs")
    finally:
        await conn.close()
    return {"raw_ceiling": done / seconds}


async def measure_dependencies(dsn: str) -> dict[str, float]:
    from benchmarks.dependencies import run_all

    results = await run_all(dsn)
    return {f"deps_{name}_{what}": value[what] for name, value in results.items() for what in ("insert_ms", "run_ms")}


async def run_round(system: System, dsn: str, sizes: dict[str, Any], concurrency: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    figures.update(await measure_enqueue(system, dsn, sizes["one"], sizes["bulk"]))
    for kind in ("async", "sync"):
        figures.update(await measure_drain(system, dsn, kind, sizes["drain"], concurrency))
    figures.update(await measure_steady(system, dsn, sizes["steady_s"], concurrency))
    figures.update(await measure_latency(system, dsn, sizes["latency"]))
    if system.name == "jobmaster_async":
        figures.update(await measure_dependencies(dsn))
    return figures


async def run_systems(
    dsn: str, names: list[str], rounds: int, sizes: dict[str, Any], concurrency: int
) -> dict[str, Any]:
    systems = [SYSTEMS[n]() for n in names]
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(rounds):
        for system in systems:
            print(f"round {r + 1}/{rounds}: {system.name}", flush=True)
            results[system.name].append(await run_round(system, dsn, sizes, concurrency))
    raw = statistics.median([(await measure_raw_ceiling(dsn, sizes["drain"]))["raw_ceiling"] for _ in range(rounds)])
    return {"rounds": results, "raw_ceiling": raw}


QUICK = {"one": 200, "bulk": 2000, "drain": 2000, "steady_s": 2.0, "latency": 50}
FULL = {"one": 2000, "bulk": 20000, "drain": 20000, "steady_s": 15.0, "latency": 500}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", help="comma-separated systems: " + ", ".join(SYSTEMS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke run")
    parser.add_argument("--concurrency", type=int, default=100)


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    """The rounds; writes results.json and results.md to ``--out`` (the charts: ``draw``)."""
    names = args.only.split(",") if args.only else list(SYSTEMS)
    for n in names:
        if n not in SYSTEMS:
            raise SystemExit(f"unknown system {n!r}: one of {', '.join(SYSTEMS)}")
    sizes: dict[str, Any] = QUICK if args.quick else FULL
    rounds = 1 if args.quick else args.rounds
    results = await run_systems(server.dsn, names, rounds, sizes, args.concurrency)
    settings = server.describe() if server.started else {}
    summary = summarise(results["rounds"])
    latencies = {n: runs[-1].pop("latencies_ms") for n, runs in results["rounds"].items()}
    for runs in results["rounds"].values():
        for r in runs:
            r.pop("latencies_ms", None)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    figures = {
        "machine": machine,
        "server_settings": settings,
        "sizes": sizes,
        "rounds": rounds,
        "concurrency": args.concurrency,
        "summary": summary,
        "raw_ceiling": results["raw_ceiling"],
        "runs": results["rounds"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(figures, indent=2))
    (args.out / "results.md").write_text(
        f"Machine: {machine}; server settings: {settings or 'as given'}; sizes: {sizes}; rounds: {rounds}.\n\n"
        f"{report(figures)}\n"
    )
    return {**figures, "latencies_ms_last_round": latencies}


def report(results: dict[str, Any]) -> str:
    return markdown(results["summary"], results["raw_ceiling"])


def draw(results: dict[str, Any], args: argparse.Namespace) -> None:
    paths = charts(results["summary"], results["latencies_ms_last_round"], args.out)
    print("wrote", args.out / "results.json", args.out / "results.md", *paths)


if __name__ == "__main__":
    alias("compare")
