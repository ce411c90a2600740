"""``/metrics``: the queue in Prometheus' text format, in a registry of its own (DESIGN 9.1
"Metrics names"):

- ``jobmaster_jobs{type_key,task_key,status}``: a gauge of the active jobs (waiting, blocked,
  running; scheduled jobs count as waiting), read at each scrape along the active statuses'
  partial indexes.
- ``jobmaster_job_outcomes_total{type_key,task_key,outcome}``: completed, failed, retried,
  rescued, cancelled, counted from the reasons of the history (job_events), so this process
  reports them whether or not it runs jobs.
- ``jobmaster_job_run_seconds{type_key,task_key}``: a histogram of runs that ended (claim to
  completed, failed or retried).
- ``jobmaster_job_start_delay_seconds{type_key,task_key}``: a histogram of starts, from the due
  time (when the job last became waiting, or its run_at/backoff if later) to its claim.

How the history is read: each scrape reads the events of a window of time, from where the last
one stopped to the server's clock less ``lag`` (10 s), by ``at`` alone, which the index on
job_events (at) serves; event_id has no index of its own, and a sequence's order is not commit
order anyway. The lag is for commits: an event's ``at`` is taken when its row is written, and the
transaction may commit a little later, so a window that ended at "now" would miss events that
were still uncommitted; the library's transactions that record outcomes are single statements of
milliseconds. An event committed more than ``lag`` after its ``at`` (a client cancelling inside
a long transaction), or one pruned before a scrape read it, is not counted. The counters start at
zero with the first scrape (as any Prometheus counter of a process that starts) and count
events from then on; each process serving the dashboard counts on its own, so scrape each of them
(not a load balancer in front of them).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..jobs import ACTIVE_STATUSES, JobStatus

if TYPE_CHECKING:
    from ..app import JobMaster

__all__ = ("CONTENT_TYPE", "DELAY_BUCKETS", "OUTCOMES", "RUN_BUCKETS", "JobMetrics")

#: The exposition format's content type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The history reasons counted, as the outcome label says them.
OUTCOMES = ("completed", "failed", "retried", "rescued", "cancelled")
ACTIVE = tuple(status.value for status in JobStatus if status in ACTIVE_STATUSES)

#: Upper bounds of the histograms' buckets, in seconds.
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

#: How far behind the server's clock each window ends (see the module's docstring).
LAG = timedelta(seconds=10)

TaskKey = tuple[str, str]


class _Histogram:
    """Observations in buckets (not cumulative), their sum and count."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, values: Iterable[float]) -> None:
        for value in values:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: value <= bound
            self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class JobMetrics(Collector):
    """The dashboard's metrics: ``await refresh()`` reads the database, ``exposition()`` writes
    them out. One per app; scrapes are read one at a time."""

    def __init__(self, jm: JobMaster, lag: timedelta = LAG) -> None:
        self.jm = jm
        self.lag = lag
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = asyncio.Lock()
        self._since: datetime | None = None
        self._tasks: dict[int, TaskKey] = {}
        self._jobs: dict[tuple[str, str, str], int] = {}
        self._outcomes: dict[tuple[str, str, str], int] = {}
        self._runs: dict[TaskKey, _Histogram] = {}
        self._delays: dict[TaskKey, _Histogram] = {}
        self.registry.register(self)

    async def refresh(self) -> None:
        """Reads the active jobs, and the history since the last scrape."""
        async with self._lock:
            tasks = await self.jm.deployed_tasks()
            self._tasks = {row["task_id"]: (row["type_key"], row["task_key"]) for row in tasks}
            jobs: dict[tuple[str, str, str], int] = {
                (type_key, task_key, status): 0 for type_key, task_key in self._tasks.values() for status in ACTIVE
            }
            for depth in await self.jm.queue_depth():  # scheduled jobs count as waiting
                waiting = depth.waiting + depth.scheduled
                for status, n in (("waiting", waiting), ("blocked", depth.blocked), ("running", depth.running)):
                    key = (depth.type_key, depth.task_key, status)
                    if n or key in jobs:
                        jobs[key] = jobs.get(key, 0) + n
            self._jobs = jobs
            for type_key, task_key in self._tasks.values():
                for outcome in OUTCOMES:
                    self._outcomes.setdefault((type_key, task_key, outcome), 0)
            if self._since is None:
                self._since = await self.jm.clock(self.lag)
                return
            for row in await self.jm.history_window(self._since, self.lag):
                if row["kind"] == "window":
                    self._since = row["upto"]
                    continue
                task = self._tasks.get(row["task_id"])
                if task is None:  # a task deployed since the task list was read
                    continue
                if row["kind"] == "outcome":
                    key = (*task, row["label"])
                    self._outcomes[key] = self._outcomes.get(key, 0) + row["n"]
                elif row["kind"] == "run":
                    self._runs.setdefault(task, _Histogram(RUN_BUCKETS)).observe(row["seconds"])
                elif row["kind"] == "start_delay":
                    self._delays.setdefault(task, _Histogram(DELAY_BUCKETS)).observe(row["seconds"])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        labels = ["type_key", "task_key"]
        jobs = GaugeMetricFamily("jobmaster_jobs", "Active jobs by task and status.", labels=[*labels, "status"])
        for key, value in sorted(self._jobs.items()):
            jobs.add_metric(list(key), value)
        yield jobs
        outcomes = CounterMetricFamily(
            "jobmaster_job_outcomes_total",
            "Job outcomes recorded in the history since this process started counting.",
            labels=[*labels, "outcome"],
        )
        for key, value in sorted(self._outcomes.items()):
            outcomes.add_metric(list(key), value)
        yield outcomes
        for name, doc, found in (
            ("jobmaster_job_run_seconds", "How long runs took, claim to outcome.", self._runs),
            ("jobmaster_job_start_delay_seconds", "From a job's due time to its start.", self._delays),
        ):
            histogram = HistogramMetricFamily(name, doc, labels=labels)
            for task, observed in sorted(found.items()):
                histogram.add_metric(list(task), observed.cumulative(), observed.sum)
            yield histogram
