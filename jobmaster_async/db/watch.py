"""The dashboard's live connection: one connection that LISTENs on the schema's channel and reads
the cheap state of the queue and the charts (db.insights) on that same connection, so a live
view costs one connection however many browsers watch. Opened by ``Store.watch``; its owner
(web.live's poller) decides when to open, close or drop it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import asyncpg

from .insights import Insights, Overview
from .notifications import Notification, parse_notification

__all__ = ("Watch",)

#: Seconds a polite close of the connection may take before it is cut.
CLOSE_WITHIN = 2.0


class Watch:
    """A LISTENing connection with the live view's reads. ``on_notification`` gets each
    notification (None for one this version does not know); ``on_lost`` is called when the
    connection ends."""

    def __init__(self, conn: asyncpg.Connection, insights: Insights) -> None:
        self._conn = conn
        self._insights = insights

    @classmethod
    async def open(
        cls,
        conn: asyncpg.Connection,
        insights: Insights,
        channel: str,
        on_notification: Callable[[Notification | None], None],
        on_lost: Callable[[], None],
    ) -> Watch:
        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            on_notification(parse_notification(payload))

        try:
            await conn.add_listener(channel, on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(lambda _c: on_lost())
        return cls(conn, insights)

    async def overview(self) -> Overview:
        return await self._insights.overview(self._conn)

    async def chart(self, whole: bool) -> tuple[list[asyncpg.Record], datetime]:
        return await self._insights.chart(whole, self._conn)

    def get_server_pid(self) -> int:
        """The server process of the connection."""
        pid: int = self._conn.get_server_pid()
        return pid

    def is_closed(self) -> bool:
        closed: bool = self._conn.is_closed()
        return closed

    async def close(self) -> None:
        """Closes the connection (cut if that takes longer than CLOSE_WITHIN)."""
        if self._conn.is_closed():
            return
        try:
            await asyncio.wait_for(self._conn.close(), CLOSE_WITHIN)
        except Exception:
            self._conn.terminate()

    def terminate(self) -> None:
        self._conn.terminate()
