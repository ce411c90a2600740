"""What an error says about the connection and the database: the statement failed (a plain SQL
error: the connection is fine), the connection is lost or unusable (discard it), the database is
away or busy for now (retry later), or none of these (a bug of ours, or of the caller).

A terminated backend shows how much care this needs: it sends a FATAL message, then closes. The
driver may report that message as the answer to the next statement (``AdminShutdownError``, a
PostgresError, on a connection not yet marked closed), or be left waiting for the end of it and
refuse the next statement with ``InternalClientError: cannot switch to state ...``, or report the
closed connection. Each of these means: discard the connection, retry on a new one.
"""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions as pgexc

__all__ = (
    "connection_unusable",
    "database_fault",
    "fault_name",
    "read_only_server",
    "refused_statement",
    "server_not_ready",
    "timed_out",
)

# SQLSTATEs (classes or codes) after which a connection must not be used again: connection
# exceptions; admin shutdown, crash shutdown, cannot connect now, database dropped, idle session
# timeout; read-only transaction (connected to a standby after a failover: a new connection may
# reach the primary).
_UNUSABLE_STATES = ("08", "57P", "25006")

# SQLSTATEs that mean "busy or short of something now, try again later": transaction rollbacks
# (serialization failure, deadlock), insufficient resources (too many connections, disk full, out
# of memory), lock not available, statement cancelled, system errors (I/O), and the refusals a
# server may give while it is being reconfigured or restored (authentication, unknown database).
_TRANSIENT_STATES = ("40", "53", "55P03", "57014", "58", "28", "3D000")

# Errors of the driver that say the connection broke or its protocol state went wrong; OSError
# covers refused and reset connections, DNS failures and TLS errors (ssl.SSLError).
_DRIVER_FAULTS = (OSError, TimeoutError, asyncpg.InterfaceError, pgexc.InternalClientError)


# A statement cancelled by the server (statement_timeout, or pg_cancel_backend) and a lock not
# available (lock_timeout, NOWAIT): the database is there, a statement waited too long.
_QUERY_CANCELED = "57014"
_LOCK_NOT_AVAILABLE = "55P03"


def _sqlstate(exc: BaseException) -> str:
    return getattr(exc, "sqlstate", None) or ""


def connection_unusable(exc: BaseException) -> bool:
    """Must the connection that raised ``exc`` be discarded? Yes for anything but a plain SQL
    error of its own statement: an interruption (cancellation, timeout) leaves it mid-statement,
    and a FATAL message means the server is closing it."""
    if not isinstance(exc, asyncpg.PostgresError):
        return True
    return _sqlstate(exc).startswith(_UNUSABLE_STATES) or getattr(exc, "severity", None) in ("FATAL", "PANIC")


def database_fault(exc: BaseException) -> bool:
    """Is ``exc`` the database (or the network) failing for now, to be retried with backoff,
    rather than an error of the statement or a bug?"""
    if isinstance(exc, asyncpg.PostgresError):
        return connection_unusable(exc) or _sqlstate(exc).startswith(_TRANSIENT_STATES)
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return False  # the driver's DataError (an argument it cannot encode), ClientConfigurationError
    return isinstance(exc, _DRIVER_FAULTS)


def server_not_ready(exc: BaseException) -> bool:
    """A server not started yet (refused, or no unix socket yet) or starting up: worth waiting
    for at start-up, unlike a wrong address, password or database name."""
    return isinstance(exc, ConnectionRefusedError | FileNotFoundError | pgexc.CannotConnectNowError)


def read_only_server(exc: BaseException) -> bool:
    """A server that takes no writes: a standby (or one being demoted), refused by the DSN's
    ``target_session_attrs`` (asyncpg's TargetServerAttributeNotMatched) or refusing a write
    (SQLSTATE 25006 read_only_sql_transaction). After a failover, the primary may be elsewhere."""
    return isinstance(exc, pgexc.TargetServerAttributeNotMatched) or (
        isinstance(exc, asyncpg.PostgresError) and _sqlstate(exc) == "25006"
    )


def timed_out(exc: BaseException) -> bool:
    """Did a statement take too long (the server's statement_timeout or lock_timeout, or the
    round trip's deadline here) rather than fail? A fault (retried), but one that a smaller
    statement may not meet."""
    return isinstance(exc, TimeoutError) or _sqlstate(exc) in (_QUERY_CANCELED, _LOCK_NOT_AVAILABLE)


def fault_name(exc: BaseException) -> str:
    """What a database fault means, for the logs: "server is read-only (a standby?)", "statement
    timeout", "lock timeout", "no answer within the round trip's deadline", "database short of
    resources" or "database unreachable"."""
    state = _sqlstate(exc)
    if read_only_server(exc):
        return "server is read-only (a standby?)"
    if state == _QUERY_CANCELED:
        return "statement timeout" if "statement timeout" in str(exc) else "statement cancelled"
    if state == _LOCK_NOT_AVAILABLE:
        return "lock timeout" if "lock timeout" in str(exc) else "lock not available"
    if isinstance(exc, TimeoutError):
        return "no answer within the round trip's deadline (connection_timeout)"
    if state.startswith("53"):
        return "database short of resources"
    return "database unreachable"


def refused_statement(exc: BaseException) -> bool:
    """Did the database (or the driver, encoding the arguments) refuse a statement for what it
    carries, with the connection and the database fine: a plain SQL error that is not a fault, and
    not a mistake in the SQL itself or a missing privilege (class 42: those are bugs or
    configuration, and every statement would meet them)?"""
    if isinstance(exc, asyncpg.PostgresError):
        return not database_fault(exc) and not _sqlstate(exc).startswith("42")
    return isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError) and not database_fault(exc)
