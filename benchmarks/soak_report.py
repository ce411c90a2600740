"""The soak's samples and their report: the table, the goals and the chart
(``python -m benchmarks soak``; what is measured: ``benchmarks/soak.py``)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.soak_tasks import RETENTION
from benchmarks.soak_worker import PRUNE_INTERVAL

#: latency buckets within a window (seconds), to compare prunings with the rest
BUCKET = 5.0
MB = 2**20


@dataclass
class Sample:
    phase: str  # load, drain (the producer has stopped) or tail (the last, partial window)
    t: float  # seconds from the start of the load to this sample
    window: float  # seconds of server time the window covers
    elapsed: float  # seconds since the sample before (inserted/s is over these)
    completed: int
    failed: int
    retried: int
    inserted: int  # by the producer in the interval
    started: int  # first attempts started in the window (dependents left out)
    p50_ms: float | None
    p99_ms: float | None
    buckets: list[list[float]]  # [start (epoch s), jobs, p50 ms, p99 ms], BUCKET s each
    jobs_table: int
    jobs_index: int
    events_table: int
    events_index: int
    jobs_dead: int
    events_dead: int
    jobs_rows: int  # live rows (the statistics' count)
    events_rows: int
    jobs_autovacuums: int
    events_autovacuums: int
    waiting: int
    blocked: int
    running: int
    worker_rss: int
    worker_cpu: float  # % of one core over the interval
    harness_cpu: float  # this process: the producer and the measuring
    server_cpu: float | None  # the server's processes (when it runs on this machine), % of one core
    system_cpu: float  # the whole machine, % of all cores
    load1: float
    pruned: int  # by the worker so far
    measure_ms: float  # what measuring took
    measure_parts: dict[str, float]  # ms of each of its statements

    @property
    def backlog(self) -> int:
        return self.waiting + self.blocked + self.running


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(samples: list[Sample]) -> str:
    lines = [
        "| t (s) | phase | inserted/s | completed/s | backlog | p50 / p99 ms | jobs MB (table + idx) "
        "| history MB (table + idx) | dead tuples jobs / history | live rows jobs / history "
        "| autovacuums jobs / history | worker RSS MB | CPU % worker / harness / server / machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in samples:
        server = "-" if s.server_cpu is None else f"{s.server_cpu:.0f}"
        lines.append(
            f"| {s.t:.0f} | {s.phase} | {s.inserted / s.elapsed:,.0f} | {s.completed / s.window:,.0f} | {s.backlog:,} "
            f"| {_ms(s.p50_ms)} / {_ms(s.p99_ms)} "
            f"| {s.jobs_table / MB:.1f} + {s.jobs_index / MB:.1f} "
            f"| {s.events_table / MB:.1f} + {s.events_index / MB:.1f} "
            f"| {s.jobs_dead:,} / {s.events_dead:,} | {s.jobs_rows:,} / {s.events_rows:,} "
            f"| {s.jobs_autovacuums} / {s.events_autovacuums} | {s.worker_rss / MB:.1f} "
            f"| {s.worker_cpu:.0f} / {s.harness_cpu:.0f} / {server} / {s.system_cpu:.0f} |"
        )
    return "\n".join(lines)


def _growth(before: float, after: float) -> float:
    return (after - before) / before * 100 if before else float("nan")


def goals(result: dict[str, Any], samples: list[Sample]) -> list[str]:
    """The goals, evaluated on the load's full intervals, and the count of lost jobs."""
    load = [s for s in samples if s.phase == "load"]
    full = [s for s in load if s.window > result["interval"] * 0.9]
    lines: list[str] = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    rate, seconds = result["rate"], result["produced_for"]
    producer = result["producer"]
    done = sum(s.completed for s in load)
    window = sum(s.window for s in load)
    backlogs = [s.backlog for s in full]
    sustained = done / window >= 0.97 * rate and (not backlogs or backlogs[-1] <= rate)
    lines.append(
        f"- Throughput: inserted {producer['inserted']:,} jobs in {seconds:.0f} s "
        f"({producer['inserted'] / seconds:,.0f}/s; a tick fell behind its schedule by {producer['max_behind']:.2f} s "
        f"at most); completed {done / window:,.0f}/s over the load (base jobs included), backlog at the load's "
        f"end {backlogs[-1] if backlogs else 0:,} (largest {max(backlogs, default=0):,}); drained in "
        f"{result['drained_in']:.1f} s: {'sustained' if sustained else 'NOT sustained'} at {rate:,.0f} jobs/s"
    )
    if len(full) >= 2 and full[0].p99_ms and full[-1].p99_ms:
        first, last = full[0].p99_ms, full[-1].p99_ms
        lines.append(
            f"- p99 of the last interval within 1.5x the first's: {last:.1f} ms against {first:.1f} ms "
            f"({last / first:.2f}x): {verdict(last <= 1.5 * first)}"
        )
    else:
        lines.append("- p99 of the last interval within 1.5x the first's: n/a (fewer than two full intervals)")

    settled_at = 2 * (RETENTION.total_seconds() + PRUNE_INTERVAL)
    settled = next((s for s in load if s.t >= settled_at - 1), None)
    if settled is not None and settled is not load[-1]:
        last_s = load[-1]
        parts = {
            "jobs table": (settled.jobs_table, last_s.jobs_table),
            "jobs indexes": (settled.jobs_index, last_s.jobs_index),
            "history table": (settled.events_table, last_s.events_table),
            "history indexes": (settled.events_index, last_s.events_index),
        }
        before = sum(b for b, _ in parts.values())
        after = sum(a for _, a in parts.values())
        detail = ", ".join(
            f"{name} {b / MB:.1f} -> {a / MB:.1f} MB ({_growth(b, a):+.0f} %)" for name, (b, a) in parts.items()
        )
        lines.append(
            f"- Sizes flat after the first retention (t = {settled.t:.0f} s against the end, t = {last_s.t:.0f} s): "
            f"{before / MB:.1f} -> {after / MB:.1f} MB in all ({_growth(before, after):+.1f} %; {detail}): "
            f"{verdict(_growth(before, after) <= 10)} (flat: at most +10 %)"
        )
    else:
        lines.append(f"- Sizes flat after the first retention: n/a (the load ended before t = {settled_at:.0f} s)")
    if len(full) >= 2:
        # finished jobs still in the table: about retention + the time since the last pruning's worth
        last_s = load[-1]
        finished = max(0, last_s.jobs_rows - last_s.backlog)
        per_second = last_s.completed / last_s.window
        kept = f", about {finished / per_second:.0f} s of completions" if per_second else ""
        lines.append(
            f"- Pruning keeping up: at the load's end the jobs table held about {last_s.jobs_rows:,} live rows "
            f"(the statistics' estimate), {last_s.backlog:,} of them queued and about {finished:,} finished{kept} "
            f"(retention {RETENTION.total_seconds():.0f} s, "
            f"pruning every {PRUNE_INTERVAL / 2:.1f}-{PRUNE_INTERVAL:.0f} s)"
        )

    if len(load) >= 2:
        first_rss, last_rss = load[0].worker_rss, load[-1].worker_rss
        growth = _growth(first_rss, last_rss)
        lines.append(
            f"- Worker RSS growth at most 10 % (end of the first interval to the end): {first_rss / MB:.1f} -> "
            f"{last_rss / MB:.1f} MB ({growth:+.1f} %; peak {max(s.worker_rss for s in samples) / MB:.1f} MB): "
            f"{verdict(growth <= 10)}"
        )

    worker, end = result["worker"], result["end"]
    counts = worker.get("counts", {})
    ran = counts.get("work", 0) + counts.get("dependent", 0)
    failed = sum(s.failed for s in samples)
    lost = producer["inserted"] - ran - failed - end["active"]
    lines.append(
        f"- Jobs lost: {lost:,} ({verdict(lost == 0)}): inserted {producer['inserted']:,}; the worker completed "
        f"{ran:,} of them ({counts.get('work', 0):,} work, {counts.get('dependent', 0):,} dependent); failed for "
        f"good {failed:,} (history); still active {end['active']:,}"
        + (f"; {-lost:,} runs more than once" if lost < 0 else "")
    )
    history_done = sum(s.completed for s in samples)
    worker_done = ran + counts.get("base", 0)
    retried = sum(s.retried for s in samples)
    base_jobs = counts.get("base", 0) + end["active_base"]
    rows_ok = end["ever"] == producer["inserted"] + base_jobs and end["ever"] - end["deleted"] == end["rows"]
    lines.append(
        f"- Cross-checks: completions in the history {history_done:,}, run by the worker {worker_done:,} "
        f"({counts.get('base', 0):,} base jobs its dependents created); first attempts that raised "
        f"{counts.get('raised', 0):,} of {producer['fail_once']:,} planned, retries in the history {retried:,}; "
        f"jobs table (statistics' counters): {end['ever']:,} rows inserted (= inserted + base jobs: "
        f"{'yes' if end['ever'] == producer['inserted'] + base_jobs else 'NO'}), {end['deleted']:,} deleted by "
        f"pruning, {end['rows']:,} left ({'consistent' if rows_ok else 'INCONSISTENT'})"
    )
    calls = producer.get("calls", {})
    if calls.get("work"):
        lines.append(
            "- Producer: insert_jobs round trips (p50 / p99 / max ms): "
            + "; ".join(
                f"{task} {len(v) and statistics.median(v) * 1000:.1f} / {_percentile(v, 0.99) * 1000:.1f} / "
                f"{max(v) * 1000:.1f} ({len(v):,} calls)"
                for task, v in calls.items()
                if v
            )
        )
    prunings = worker.get("prunings", [])
    if prunings:
        took = [p[1] - p[0] for p in prunings]
        lines.append(
            f"- Background pruning: {len(prunings)} prunings deleted {sum(int(p[2]) for p in prunings):,} jobs, "
            f"{statistics.median(int(p[2]) for p in prunings):,.0f} each (median) in "
            f"{statistics.median(took):.2f} s (median; longest {max(took):.2f} s)"
        )
        during, outside = prune_buckets(samples, prunings)
        if during and outside:
            lines.append(
                f"- p99 of {BUCKET:.0f} s buckets overlapping a pruning against the others (median of the buckets' "
                f"p99): {statistics.median(during):.1f} ms ({len(during)} buckets) against "
                f"{statistics.median(outside):.1f} ms ({len(outside)})"
            )
    measuring = [s.measure_ms for s in samples]
    lines.append(
        f"- Measuring took {statistics.median(measuring):.0f} ms per interval (median; longest {max(measuring):.0f} ms)"
    )
    return lines


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def prune_buckets(samples: list[Sample], prunings: list[list[float]]) -> tuple[list[float], list[float]]:
    """The p99s of the load's latency buckets that overlap a pruning, and of the others."""
    during: list[float] = []
    outside: list[float] = []
    for s in samples:
        if s.phase != "load":
            continue
        for start, n, _p50, p99 in s.buckets:
            if n < 50 or p99 is None:
                continue
            overlaps = any(p[0] < start + BUCKET and p[1] > start for p in prunings)
            (during if overlaps else outside).append(p99)
    return during, outside


def chart(result: dict[str, Any], samples: list[Sample], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load = [s for s in samples if s.phase != "tail"]
    minutes = [s.t / 60 for s in load]
    fig, axes = plt.subplots(5, 1, figsize=(10, 15), sharex=True)
    ax = axes[0]
    ax.plot(minutes, [s.completed / s.window for s in load], marker="o", label="completed/s")
    ax.plot(minutes, [s.inserted / s.elapsed for s in load], linestyle="--", label="inserted/s")
    ax.set_ylabel("jobs/s")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(minutes, [s.backlog for s in load], color="grey", alpha=0.6, label="backlog (right)")
    twin.set_ylabel("backlog (jobs)")
    twin.set_ylim(bottom=0)
    ax.legend(loc="lower left")
    twin.legend(loc="lower right")
    ax.set_title(f"soak: {result['rate']:,.0f} jobs/s offered, 1 worker, retention 1 min, pruning every ~15 s")

    ax = axes[1]
    ax.plot(minutes, [s.p50_ms for s in load], marker="o", label="p50 (interval)")
    ax.plot(minutes, [s.p99_ms for s in load], marker="o", label="p99 (interval)")
    origin = result["wall_start"]  # buckets and prunings are in wall-clock time
    buckets = [b for s in load for b in s.buckets if b[3] is not None]
    ax.plot(
        [(b[0] + BUCKET / 2 - origin) / 60 for b in buckets],
        [b[3] for b in buckets],
        color="tab:orange",
        alpha=0.3,
        linewidth=0.8,
        label=f"p99 per {BUCKET:.0f} s",
    )
    for start, end, *_ in result["worker"].get("prunings", []):
        ax.axvspan((start - origin) / 60, (end - origin) / 60, color="tab:red", alpha=0.15, linewidth=0)
    ax.set_ylabel("insert -> start (ms)")
    ax.set_yscale("log")
    ax.legend(loc="upper left", title="red: background prunings", fontsize="small")

    ax = axes[2]
    for name, key in (
        ("jobs table", "jobs_table"),
        ("jobs indexes", "jobs_index"),
        ("history table", "events_table"),
        ("history indexes", "events_index"),
    ):
        ax.plot(minutes, [getattr(s, key) / MB for s in load], marker=".", label=name)
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small")

    ax = axes[3]
    ax.plot(minutes, [s.jobs_dead for s in load], marker=".", label="jobs")
    ax.plot(minutes, [s.events_dead for s in load], marker=".", label="job_events")
    ax.set_ylabel("dead tuples")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small")

    ax = axes[4]
    ax.plot(minutes, [s.worker_rss / MB for s in load], marker="o")
    ax.set_ylabel("worker RSS (MB)")
    ax.set_xlabel("minutes")
    ax.set_ylim(bottom=0)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.axvline(result["produced_for"] / 60, color="black", linestyle=":", linewidth=1)
    axes[0].annotate(
        "producer stops", (result["produced_for"] / 60, 0), xytext=(4, 4), textcoords="offset points", fontsize="small"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def report(result: dict[str, Any]) -> str:
    """The table and the goals."""
    samples = [Sample(**s) for s in result["samples"]]
    header = [result["header"], ""] if result.get("header") else []
    return "\n".join([*header, table(samples), "", *goals(result, samples)])
