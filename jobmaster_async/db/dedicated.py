"""A connection of its own, for a statement stream that must not share the pool's connections:
the claim's (its session carries the claim's planner settings) and the scheduler's (its
``lock_timeout``). Opened on first use with its session settings; closed for good after an error
that leaves it unusable (db.faults), and reopened by the next statement. ``lock`` is held while a
statement runs: its owner takes it (the claimer tells by it whether the connection is busy)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from .faults import connection_unusable
from .pool import Connect, close_connection

__all__ = ("Dedicated",)


class Dedicated:
    def __init__(self, connect: Connect, setup: str, timeout: float | None = None) -> None:
        self._connect = connect
        self._setup = setup  # the session settings, run on every new connection
        self.timeout = timeout  # each round trip's deadline
        self._conn: asyncpg.Connection | None = None
        self.lock = asyncio.Lock()

    async def run(self, method: str, query: str, *args: object) -> Any:
        """``conn.<method>(query, *args)`` (fetch, fetchval, ...), the caller holding ``lock``."""
        if self._conn is None or self._conn.is_closed():
            conn = await self._connect()
            try:
                await conn.execute(self._setup, timeout=self.timeout)
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
        try:
            return await getattr(self._conn, method)(query, *args, timeout=self.timeout)
        except BaseException as exc:
            if connection_unusable(exc):  # interrupted, lost, or closing: never reused
                self._conn.terminate()
                self._conn = None
            raise

    def discard_idle(self) -> None:
        """Closes the connection unless a statement is using it (after a fault, it is suspect)."""
        if self._conn is not None and not self.lock.locked():
            conn, self._conn = self._conn, None
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await close_connection(conn)
