"""A small pool of asyncpg connections, lean on the hot path.

asyncpg's own Pool shields every release in a new task and resets through another coroutine: each
one-statement call costs three more turns of the event loop than the statement itself (figures in
benchmarks/README.md). Here an idle connection is popped from a stack and pushed
back without awaiting anything.

A connection goes back only in a clean state: not closed, not inside a transaction, and not
failed by anything but a plain SQL error of its own statement (a cancellation, a timeout, a lost
connection or a FATAL message from the server closes it: see db.faults). When the database or the
network failed, the idle connections are closed too: they were most likely cut by the same fault,
and the driver may not know it yet. Our statements leave no other session state, so there is no
reset round trip.

``timeout`` on a statement is its deadline (asyncpg's): the worker gives every round trip one, so
that a server gone without a TCP reset cannot hang it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import asyncpg

from .faults import connection_unusable, database_fault

__all__ = ("Connect", "Pool", "close_connection")

logger = logging.getLogger(__name__)

#: Opens one connection (db.connection.opener makes them).
Connect: TypeAlias = Callable[[], Awaitable[asyncpg.Connection]]


class Pool:
    """Up to ``max_size`` connections, opened on demand with ``connect``; LIFO reuse."""

    def __init__(self, connect: Connect, max_size: int) -> None:
        self._connect = connect
        self._idle: list[asyncpg.Connection] = []
        self._slots = asyncio.Semaphore(max_size)
        self._closed = False

    async def _take(self) -> asyncpg.Connection:
        if self._closed:
            raise asyncpg.InterfaceError("the pool is closed")
        await self._slots.acquire()  # returns at once (no loop turn) while a slot is free
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    break
            else:
                conn = await self._connect()
        except BaseException:
            self._slots.release()
            raise
        return conn

    def _give_back(self, conn: asyncpg.Connection, error: BaseException | None) -> None:
        reusable = not self._closed and not conn.is_closed() and not conn.is_in_transaction()
        if reusable and (error is None or not connection_unusable(error)):
            self._idle.append(conn)
        else:
            conn.terminate()
            if error is not None and database_fault(error):
                self.discard_idle()
        self._slots.release()

    def discard_idle(self) -> None:
        """Closes the idle connections (after a fault, they are suspect)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.terminate()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for a session of several statements (or a transaction)."""
        conn = await self._take()
        try:
            yield conn
        except BaseException as exc:
            self._give_back(conn, exc)
            raise
        self._give_back(conn, None)

    async def _run(self, method: str, query: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        conn = await self._take()
        try:
            result = await getattr(conn, method)(query, *args, timeout=timeout)
        except BaseException as exc:
            self._give_back(conn, exc)
            raise
        self._give_back(conn, None)
        return result

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        status: str = await self._run("execute", query, args, timeout)
        return status

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._run("fetch", query, args, timeout)
        return rows

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._run("fetchrow", query, args, timeout)
        return row

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._run("fetchval", query, args, timeout)

    async def close(self) -> None:
        """Closes the idle connections; those in use are closed when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(close_connection(conn) for conn in idle))


async def close_connection(conn: asyncpg.Connection) -> None:
    """Closes a connection politely if the server answers within 5 s, else at once."""
    try:
        await asyncio.wait_for(conn.close(), 5)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        conn.terminate()
