"""One command for every benchmark: ``python -m benchmarks SCENARIO [options]``.

    python -m benchmarks                       # the scenarios, one line each
    python -m benchmarks SCENARIO --help       # what it measures, its options
    python -m benchmarks throughput --jobs 200 --json out.json

Shared by every scenario:

- ``--dsn DSN``: an existing server; else a temporary embedded PostgreSQL with the scenario's
  settings (durable, room for clients: ``common.SERVER_SETTINGS``), started when first needed.
  ``chaos`` and ``failover`` start servers of their own and refuse ``--dsn``.
- ``--json [FILE]``: the result as JSON (below), written to FILE; without FILE, printed on one
  line to stdout instead of the table (what the scenario prints while it runs goes to stderr).
- ``--out DIR``: where scenarios that draw charts or write reports put them (``compare``,
  ``soak``); ``benchmarks/results`` by default.

The result: ``{"scenario", "command", "started", "seconds", "machine", "server", "options",
"results"}``, ``results`` being the scenario's own figures; without ``--json``, a Markdown table.
``python -m benchmarks.NAME ...`` is the same as ``python -m benchmarks NAME ...``, and options
without a scenario run ``compare`` (``python -m benchmarks --quick``).

A scenario is a module of this package with ``add_arguments(parser)``, ``async run(args,
server) -> dict`` and ``report(results) -> str`` (Markdown); optionally ``SERVER_SETTINGS`` (for
the embedded server), ``OWN_SERVERS = True`` (it starts its own) and ``draw(results, args)``
(charts, drawn after the JSON is written so that a failing chart does not lose a run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

# no import of benchmarks.common here: run as a file, insert_arguments must work against any
# version of jobmaster_async (common imports the current one's internals)
RESULTS = Path(__file__).parent / "results"

#: name -> what it measures, in one line (the modules are imported only when run: some need extras)
SCENARIOS: dict[str, str] = {
    "compare": "jobmaster_async against pgqueuer and procrastinate, in one run on one PostgreSQL",
    "throughput": "drain by 1 and 2 worker processes (async and sync), insert -> start latency",
    "processes": "drain by `jobmaster-async worker --processes N` for N = 1, 2, 4",
    "dependencies": "chains and fan-in against the same number of independent jobs",
    "insert_arguments": "single inserts with realistic arguments against the plainest ones",
    "scheduled": "scheduled jobs: run_at -> start, an idle worker's statements, claims with future jobs",
    "retention": "listings with many finished jobs, and pruning beside claims",
    "dashboard": "the dashboard's pages with a large table",
    "soak": "minutes of steady load with retention and pruning, watched for drift",
    "chaos": "the chaos suite's faults at scale (its own server)",
    "failover": "a promoted standby at scale (its own primary and standby)",
}


class Server:
    """The PostgreSQL a scenario runs on: ``--dsn``, else a temporary embedded server with the
    scenario's settings, started on first use and removed when the run ends."""

    def __init__(self, dsn: str | None, settings: Mapping[str, str], stack: contextlib.ExitStack) -> None:
        self._dsn = dsn
        self._settings = dict(settings)
        self._stack = stack
        self._pgdata: Path | None = None
        self.started = False

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            from jobmaster_async.cli.embedded import temporary_server

            server = self._stack.enter_context(temporary_server(self._settings))
            self._dsn, self._pgdata, self.started = server.dsn, server.pgdata, True
        return self._dsn

    @property
    def pid(self) -> int | None:
        """The embedded server's postmaster (None with ``--dsn``)."""
        self.dsn  # noqa: B018  (started if not yet)
        return int((self._pgdata / "postmaster.pid").read_text().split()[0]) if self._pgdata else None

    def describe(self) -> str | dict[str, str]:
        """For the result: the embedded server's settings, or that it was given."""
        if self.started:
            return self._settings
        return "given (--dsn)" if self._dsn else "none"


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    shared = common.add_argument_group("shared by every scenario")
    shared.add_argument("--dsn", help="an existing server (default: start a temporary embedded one)")
    shared.add_argument(
        "--json", nargs="?", const="-", metavar="FILE", help="write the result as JSON to FILE (no FILE: to stdout)"
    )
    shared.add_argument("--out", type=Path, default=RESULTS, help="where charts and reports go (%(default)s)")
    return common


def _parser(name: str | None) -> tuple[argparse.ArgumentParser, ModuleType | None]:
    """The whole parser; only the chosen scenario's module is imported and adds its options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    scenarios = parser.add_subparsers(dest="scenario", metavar="SCENARIO", title="scenarios")
    common = _common_options()
    chosen = None
    for scenario, summary in SCENARIOS.items():
        if scenario != name:
            scenarios.add_parser(scenario, help=summary)
            continue
        chosen = importlib.import_module(f"benchmarks.{scenario}")
        sub = scenarios.add_parser(
            scenario,
            help=summary,
            description=chosen.__doc__,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        chosen.add_arguments(sub)
    return parser, chosen


def _without_dsn(argv: list[str]) -> list[str]:
    """``argv`` with the DSN's value (which may hold a password) replaced by ``DSN``."""
    shown = []
    for i, arg in enumerate(argv):
        after_option = i > 0 and argv[i - 1] == "--dsn"
        shown.append("DSN" if after_option else "--dsn=DSN" if arg.startswith("--dsn=") else arg)
    return shown


def _settings(module: ModuleType) -> Mapping[str, str]:
    """The scenario's embedded server settings, else the benchmarks' (``common.SERVER_SETTINGS``)."""
    if hasattr(module, "SERVER_SETTINGS"):
        settings: Mapping[str, str] = module.SERVER_SETTINGS
        return settings
    from benchmarks.common import SERVER_SETTINGS

    return SERVER_SETTINGS


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "compare")  # `python -m benchmarks --quick`, as before the scenarios
    parser, module = _parser(argv[0] if argv and argv[0] in SCENARIOS else None)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return
    if args.dsn and getattr(module, "OWN_SERVERS", False):
        parser.error(f"{args.scenario} starts servers of its own: --dsn is not supported")
    args.command = shlex.join(["python", "-m", "benchmarks", *_without_dsn(argv)])  # as run, for reports
    to_stdout = args.json == "-"
    began, started = dt.datetime.now(dt.UTC), time.monotonic()
    with contextlib.ExitStack() as stack:
        if to_stdout:  # stdout holds the JSON alone
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        server = Server(args.dsn, _settings(module), stack)
        results: dict[str, Any] = asyncio.run(module.run(args, server))
    shared = {"scenario", "dsn", "json", "out", "command"}
    report = {
        "scenario": args.scenario,
        "command": args.command,
        "started": f"{began:%Y-%m-%d %H:%M:%S} UTC",
        "seconds": round(time.monotonic() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "server": server.describe(),
        "options": {k: v for k, v in vars(args).items() if k not in shared},
        "results": results,
    }
    if args.json and not to_stdout:  # first: a failing chart must not lose the run
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    with contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext():
        if hasattr(module, "draw"):
            module.draw(results, args)
    if to_stdout:
        print(json.dumps(report, default=str))
    else:
        print(module.report(results))


def alias(name: str) -> None:
    """``python -m benchmarks.NAME ARGS``: the same as ``python -m benchmarks NAME ARGS``. The
    module running as ``__main__`` stands for ``benchmarks.NAME`` (not imported a second time:
    its tasks would be registered twice)."""
    sys.modules.setdefault(f"benchmarks.{name}", sys.modules["__main__"])
    main([name, *sys.argv[1:]])


def results_of(data: dict[str, Any]) -> dict[str, Any]:
    """A scenario's results from a JSON file that ``--json`` wrote (or that held them alone)."""
    inner: dict[str, Any] = data["results"] if "scenario" in data and "results" in data else data
    return inner
