"""Start-up: a worker waits for a read-write server (DESIGN 10 "Failover").

During a failover no server takes writes for a while: the old primary is gone (connections
refused, or unanswered), the standby is not promoted yet (read-only). A worker starting then
waits, up to ``wait_for_database`` seconds, trying again every PROBE_INTERVAL, with one line
saying so; an error that waiting will not fix (a wrong password, database name or host name)
ends it at once. When the time is up, the error names every host of the DSN and why each failed
(asyncpg reports only the last one's).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from asyncpg.exceptions import TargetServerAttributeNotMatched

from ..errors import DatabaseUnavailable
from .connection import database_hosts, host_list, opener, read_only
from .faults import read_only_server, server_not_ready
from .pool import Connect, close_connection

__all__ = ("PROBE_INTERVAL", "describe", "host_probes", "not_yet", "probe", "wait_for_server")

logger = logging.getLogger(__name__)

#: Seconds between two tries of a server that is not there yet (jittered by ±20 %).
PROBE_INTERVAL = 0.5

#: Network errors of a host that is down or being moved (a failover), as opposed to a wrong name.
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ETIMEDOUT}

Probe = Callable[[], Awaitable[None]]


def not_yet(exc: BaseException) -> bool:
    """Is ``exc`` a server that is not there yet, or not writable yet (worth waiting for), rather
    than a mistake (a wrong address, password or database name)?"""
    return (
        server_not_ready(exc)
        or read_only_server(exc)
        or isinstance(exc, TimeoutError | ConnectionError | asyncpg.ConnectionDoesNotExistError)
        or (isinstance(exc, OSError) and exc.errno in _UNREACHABLE)
    )


def describe(exc: BaseException) -> str:
    """Why a connection failed, in a few words."""
    if read_only_server(exc):
        return "server is read-only (a standby?)"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionError) and exc.errno:  # the same words on asyncio's loop and uvloop
        return f"[Errno {exc.errno}] {os.strerror(exc.errno)}"
    text = str(exc)
    if isinstance(exc, OSError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def probe(connect: Connect, deadline: float | None = None) -> None:
    """Opens a connection with ``connect`` and closes it: raises unless a read-write server
    answered (a standby raises TargetServerAttributeNotMatched: db.faults.read_only_server)."""
    conn = await connect()
    try:
        if await read_only(conn, deadline):
            raise TargetServerAttributeNotMatched("server is read-only (a standby?)")
    finally:
        await close_connection(conn)


def host_probes(dsn: str, connect_kwargs: dict[str, Any], timeout: float | None) -> list[tuple[str, Probe]]:
    """A probe of each host of ``dsn`` alone (the same user, database and options)."""
    probes: list[tuple[str, Probe]] = []
    for (host, port), name in zip(host_list(dsn), database_hosts(dsn), strict=True):
        connect = opener(dsn, {**connect_kwargs, "host": host, "port": port}, timeout)
        probes.append((name, functools.partial(probe, connect, timeout)))
    return probes


async def wait_for_server(probe: Probe, wait: float, hosts: list[tuple[str, Probe]] | None = None) -> None:
    """Returns once ``probe()`` succeeds (a read-write server answered). A failure that waiting
    will not fix is raised at once; a server not there yet is tried again for ``wait`` seconds,
    then DatabaseUnavailable names each of ``hosts`` (name, its own probe) and why it failed."""
    began = time.monotonic()
    waiting = False
    while True:
        try:
            await probe()
        except Exception as exc:
            if not not_yet(exc):
                raise
            delay = PROBE_INTERVAL * random.uniform(0.8, 1.2)
            if time.monotonic() + delay - began > wait:
                raise DatabaseUnavailable(await _why(exc, wait, hosts or [])) from exc
            if not waiting:
                logger.warning(
                    "no read-write database server yet (%s); waiting up to %gs for one (wait_for_database, "
                    "--wait-for-database)",
                    describe(exc),
                    wait,
                )
                waiting = True
            else:
                logger.debug("still no read-write database server: %s", describe(exc))
            await asyncio.sleep(delay)
            continue
        if waiting:
            logger.warning("a read-write database server answered after %.1fs", time.monotonic() - began)
        return


async def _why(exc: BaseException, wait: float, hosts: list[tuple[str, Probe]]) -> str:
    """The final error: each host and why it failed (asked once more, one by one)."""
    waited = f"waited {wait:g}s" if wait else "not waited for"
    if len(hosts) <= 1:
        at = f" at {hosts[0][0]}" if hosts else ""
        return f"cannot reach a read-write database{at} ({waited}): {describe(exc)}"
    reasons = []
    for name, probe in hosts:
        try:
            await probe()
        except Exception as error:
            reasons.append(f"{name}: {describe(error)}")
        else:
            reasons.append(f"{name}: answered just now")
    return f"cannot reach a read-write database ({waited}): " + "; ".join(reasons)
