"""``jobmaster-async worker --processes N``: one supervisor, N worker processes.

The supervisor starts N children (the same worker command with ``--processes 1``), each in a
process group of its own, so that a terminal's Ctrl-C reaches the supervisor alone: it forwards
exactly one signal to every child per signal it receives (the first stops them gracefully, a
second skips the grace period). A child that dies is started again with backoff, and its death
is logged with its exit code or signal; five children in a row that die before their first
connection to the database end the supervisor with exit code 1 (a wrong DSN will not fix
itself). Children stop if the supervisor dies (they watch their parent). ``--deploy`` runs once,
in the supervisor; with ``--until-empty`` children are not restarted. After a clean stop the
supervisor exits 0.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..db.waiting import ReconnectDelay

__all__ = ("READY_FD", "SUPERVISOR_PID", "Supervisor", "child_arguments")

logger = logging.getLogger(__name__)

#: Environment variables a child reads: the pipe it writes to once connected, and its supervisor.
READY_FD = "JOBMASTER_READY_FD"
SUPERVISOR_PID = "JOBMASTER_SUPERVISOR_PID"

#: Children in a row that die before connecting, after which the supervisor gives up.
EARLY_DEATHS = 5

#: Options of the worker command a child must not repeat (the supervisor handles them).
_OWN_FLAGS = ("--deploy", "--progress")


def child_arguments(argv: Sequence[str]) -> list[str]:
    """The worker command line for a child: ``argv`` (the supervisor's arguments, without the
    program) less --processes, --deploy and --progress, plus --processes 1."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes=") or arg in _OWN_FLAGS:
            continue
        out.append(arg)
    return [sys.executable, "-m", "jobmaster_async", *out, "--processes", "1"]


@dataclass
class _Child:
    slot: int
    process: subprocess.Popen[bytes]
    ready_pipe: int
    ready: bool = False
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, command: list[str], processes: int, *, restart: bool) -> None:
        self.command = command
        self.processes = processes
        self.restart = restart
        self.children: dict[int, _Child] = {}
        self.backoffs = {slot: ReconnectDelay(first=0.5, cap=30.0) for slot in range(processes)}
        self.due: dict[int, float] = {}  # slot -> when to start its next child
        self.signals: list[int] = []  # received, in order
        self.forwarded = 0
        self.early_deaths = 0
        self.failed = False

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in range(self.processes):
                self._start(slot)
            while self.children or (self.due and not self.signals and not self.failed):
                self._forward_signals()
                self._read_ready()
                self._reap()
                self._start_due()
                time.sleep(0.05)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.failed:
            return 1
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def _forward_signals(self) -> None:
        """One signal to every child per signal received."""
        while self.forwarded < len(self.signals):
            signum = self.signals[self.forwarded]
            self.forwarded += 1
            logger.info(
                "%s received: forwarded to %d worker processes", signal.Signals(signum).name, len(self.children)
            )
            for child in self.children.values():
                if child.process.poll() is None:
                    os.kill(child.process.pid, signum)
            self.due.clear()

    def _start(self, slot: int) -> None:
        read_end, write_end = os.pipe()
        env = {**os.environ, READY_FD: str(write_end), SUPERVISOR_PID: str(os.getpid())}
        process = subprocess.Popen(self.command, env=env, pass_fds=(write_end,), process_group=0)
        os.close(write_end)
        self.children[slot] = _Child(slot, process, read_end)
        logger.info("worker process %d started (pid %d)", slot + 1, process.pid)

    def _read_ready(self) -> None:
        waiting = [c for c in self.children.values() if not c.ready]
        if not waiting:
            return
        readable, _, _ = select.select([c.ready_pipe for c in waiting], [], [], 0)
        for child in waiting:
            if child.ready_pipe in readable and os.read(child.ready_pipe, 1):
                child.ready = True
                self.early_deaths = 0
                self.backoffs[child.slot].reset()

    def _reap(self) -> None:
        for slot, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            self._read_ready()
            del self.children[slot]
            os.close(child.ready_pipe)
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            if self.signals:
                logger.info("worker process %d (pid %d) stopped (%s)", slot + 1, child.process.pid, how)
                self.failed = self.failed or code != 0
                continue
            if not self.restart:
                logger.info("worker process %d (pid %d) ended (%s)", slot + 1, child.process.pid, how)
                self.failed = self.failed or code != 0
                continue
            if not child.ready:
                self.early_deaths += 1
            delay = self.backoffs[slot].delay()
            logger.warning(
                "worker process %d (pid %d) died (%s)%s; starting another in %.1fs",
                slot + 1,
                child.process.pid,
                how,
                "" if child.ready else " before connecting to the database",
                delay,
            )
            if self.early_deaths >= EARLY_DEATHS:
                logger.error("%d worker processes in a row died before connecting: giving up", self.early_deaths)
                self.failed = True
                self.due.clear()
                for other in self.children.values():
                    os.kill(other.process.pid, signal.SIGTERM)
                return
            self.due[slot] = time.monotonic() + delay

    def _start_due(self) -> None:
        if self.signals or self.failed:
            return
        now = time.monotonic()
        for slot, when in list(self.due.items()):
            if when <= now:
                del self.due[slot]
                self._start(slot)
