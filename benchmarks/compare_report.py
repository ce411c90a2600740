"""The comparison's report (``python -m benchmarks compare``): the medians and ranges of the
rounds, a markdown table with jobmaster_async's ratio against each peer, and the charts."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

ROWS = [  # (key, label, higher is better, format)
    ("enqueue_one_per_call", "enqueue, one job per call (jobs/s)", True, "{:,.0f}"),
    ("enqueue_bulk", "enqueue, bulk API (jobs/s)", True, "{:,.0f}"),
    ("drain_async", "drain no-op async jobs, 1 worker process (jobs/s)", True, "{:,.0f}"),
    ("drain_sync", "drain no-op sync jobs, 1 worker process (jobs/s)", True, "{:,.0f}"),
    ("steady_done_per_s", "steady state: producer + worker (jobs/s done)", True, "{:,.0f}"),
    ("latency_p50_ms", "insert -> start latency p50 (ms)", False, "{:.2f}"),
    ("latency_p95_ms", "insert -> start latency p95 (ms)", False, "{:.2f}"),
    ("latency_p99_ms", "insert -> start latency p99 (ms)", False, "{:.2f}"),
    ("cpu_s_per_1000_async", "worker CPU s per 1,000 async jobs", False, "{:.3f}"),
    ("peak_rss_mb_async", "worker peak RSS, async drain (MB)", False, "{:.0f}"),
]


def summarise(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, runs in rounds.items():
        keys = [k for k in runs[0] if isinstance(runs[0][k], int | float)]
        summary[name] = {
            k: {
                "median": statistics.median(r[k] for r in runs),
                "min": min(r[k] for r in runs),
                "max": max(r[k] for r in runs),
            }
            for k in keys
        }
    return summary


def markdown(summary: dict[str, dict[str, dict[str, float]]], raw: float | None) -> str:
    names = list(summary)
    ours = "jobmaster_async"
    peers = [n for n in names if n != ours]
    head = "| measure | " + " | ".join(names) + "".join(f" | vs {p}" for p in peers if ours in names) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, label, higher, fmt in ROWS:
        if not all(key in summary[n] for n in names):
            continue
        cells = []
        for n in names:
            s = summary[n][key]
            cells.append(f"{fmt.format(s['median'])} ({fmt.format(s['min'])} to {fmt.format(s['max'])})")
        ratios = []
        if ours in names:
            for p in peers:
                a, b = summary[ours][key]["median"], summary[p][key]["median"]
                ratio = (a / b) if higher else (b / a)
                ratios.append(f"{ratio:.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + "".join(f" | {r}" for r in ratios) + " |")
    if raw is not None:
        lines.append("")
        lines.append(
            "PostgreSQL's raw ceiling for the pattern (batched claim + complete, one connection, "
            f"no Python work): {raw:,.0f} jobs/s."
        )
    lines.append("")
    lines.append(
        "Ratios are jobmaster_async's advantage: > 1 means better (for latency, CPU and memory: "
        "the peer's figure over ours)."
    )
    if ours in summary:
        deps = {k: v["median"] for k, v in summary[ours].items() if k.startswith("deps_")}
        if deps:
            lines.append("")
            lines.append(
                "jobmaster_async dependencies (median ms): " + ", ".join(f"{k[5:]} {v:.1f}" for k, v in deps.items())
            )
    return "\n".join(lines)


def charts(summary: dict[str, dict[str, dict[str, float]]], latencies: dict[str, list[float]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    keys = [
        k
        for k in ("enqueue_one_per_call", "enqueue_bulk", "drain_async", "drain_sync", "steady_done_per_s")
        if all(k in summary[n] for n in names)
    ]
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar([x + i * width for x in range(len(keys))], [summary[n][k]["median"] for k in keys], width, label=n)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([k.replace("_", " ") for k in keys], rotation=15)
    ax.set_ylabel("jobs/s (median of rounds)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("throughput")
    fig.tight_layout()
    bars = out / "throughput.png"
    fig.savefig(bars, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 5))
    for n, values in latencies.items():
        ax.plot(sorted(values), [i / len(values) for i in range(len(values))], label=n)
    ax.set_xscale("log")
    ax.set_xlabel("insert -> start latency (ms, log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("latency distribution (last round)")
    ax.legend()
    fig.tight_layout()
    dist = out / "latency.png"
    fig.savefig(dist, dpi=110)
    plt.close(fig)
    return [bars, dist]
