"""Worker processes (``python -m jobmaster_async worker``) of the tests' tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

ROOT = Path(__file__).parent.parent


@contextmanager
def worker_process(
    dsn: str, schema: str, *options: str, log: IO[bytes] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process (its output to ``log`` when given); killed on exit if still alive."""
    command = [
        sys.executable, "-m", "jobmaster_async", "--dsn", dsn, "--schema", schema,
        "worker", "--app", "tests.tasks_for_tests", *options,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
