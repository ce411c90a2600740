"""Serving the dashboard with uvicorn (``jobmaster-async dashboard``, and the tests).

Its live events are endless responses: a server that stops waits for its responses to end, so
this one ends the live view's subscriptions first, and stops at once however many browsers
watch."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from . import Dashboard

__all__ = ("Server",)


class Server(uvicorn.Server):
    """A uvicorn server of a dashboard app that ends its live events when it stops."""

    def __init__(self, config: uvicorn.Config, dashboard: Dashboard) -> None:
        super().__init__(config)
        self.dashboard = dashboard

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.dashboard.aclose()
        await super().shutdown(sockets)
