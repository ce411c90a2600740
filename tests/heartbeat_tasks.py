"""Tasks of the heartbeat tests (type key ``heartbeat_tasks``): sync in a process, one line per
execution that ran to its end (as tasks_for_tests.chaos_run and record_after do for async)."""

from __future__ import annotations

import os
import time

from jobmaster_async import task


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


@task(executor="process")
def record_after_in_process(path: str, key: int, seconds: float) -> None:
    time.sleep(seconds)
    _append(path, str(key))


@task(executor="process")
def chaos_run_in_process(path: str, key: int, seconds: float) -> None:
    started = time.time()
    time.sleep(seconds)
    _append(path, f"{key} {os.getpid()} {started:.6f} {time.time():.6f}")
