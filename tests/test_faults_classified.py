"""db.faults: which errors are retried as database faults, and after which a connection is
discarded (anything but a plain SQL error of its own statement)."""

from __future__ import annotations

import asyncio
import socket
import ssl

import asyncpg
import asyncpg.exceptions as pgexc
import pytest
from asyncpg.exceptions._base import DataError as ArgumentError  # the driver's own, not SQLSTATE 22000

from jobmaster_async.db.faults import (
    connection_unusable,
    database_fault,
    fault_name,
    refused_statement,
    server_not_ready,
    timed_out,
)

# (error, a database fault?, connection unusable?)
CASES = [
    (pgexc.AdminShutdownError("terminating connection due to administrator command"), True, True),
    (pgexc.CrashShutdownError("crash"), True, True),
    (pgexc.CannotConnectNowError("the database system is starting up"), True, True),
    (pgexc.ConnectionDoesNotExistError("connection was closed in the middle of operation"), True, True),
    (pgexc.InternalClientError("cannot switch to state 12; another operation (2) is in progress"), True, True),
    (asyncpg.InterfaceError("connection is closed"), True, True),
    (pgexc.TooManyConnectionsError("sorry, too many clients already"), True, False),
    (pgexc.ReadOnlySQLTransactionError("cannot execute UPDATE in a read-only transaction"), True, True),
    (pgexc.DeadlockDetectedError("deadlock detected"), True, False),
    (pgexc.QueryCanceledError("canceling statement due to statement timeout"), True, False),
    (ConnectionRefusedError(111, "Connection refused"), True, True),
    (socket.gaierror(-2, "Name or service not known"), True, True),
    (ssl.SSLError("certificate verify failed"), True, True),
    (TimeoutError(), True, True),
    (asyncio.CancelledError(), False, True),
    (pgexc.DivisionByZeroError("division by zero"), False, False),
    (pgexc.UniqueViolationError("duplicate key"), False, False),
    (pgexc.StringDataRightTruncationError("value too long"), False, False),
    (ArgumentError("invalid input for query argument $1"), False, True),
    (pgexc.ClientConfigurationError("invalid sslmode"), False, True),
    (ValueError("a bug"), False, True),
]


@pytest.mark.parametrize(("error", "fault", "unusable"), CASES, ids=lambda c: type(c).__name__)
def test_classification(error: BaseException, fault: bool, unusable: bool) -> None:
    assert database_fault(error) is fault
    assert connection_unusable(error) is unusable


def test_a_fatal_message_makes_any_error_unusable() -> None:
    error = pgexc.InternalServerError("terminating")
    error.severity = "FATAL"
    assert connection_unusable(error) and database_fault(error)


def test_only_a_server_not_up_yet_is_waited_for() -> None:
    assert server_not_ready(ConnectionRefusedError()) and server_not_ready(FileNotFoundError())
    assert server_not_ready(pgexc.CannotConnectNowError("the database system is starting up"))
    assert not server_not_ready(socket.gaierror(-2, "Name or service not known"))
    assert not server_not_ready(pgexc.InvalidPasswordError("password authentication failed"))


def _error(cls: type[asyncpg.PostgresError], message: str) -> asyncpg.PostgresError:
    error = cls(message)
    error.message = message  # as the server's, which str() shows
    return error


@pytest.mark.parametrize(
    ("error", "name", "slow"),
    [
        (_error(pgexc.QueryCanceledError, "canceling statement due to statement timeout"), "statement timeout", True),
        (_error(pgexc.QueryCanceledError, "canceling statement due to user request"), "statement cancelled", True),
        (_error(pgexc.LockNotAvailableError, "canceling statement due to lock timeout"), "lock timeout", True),
        (TimeoutError(), "no answer within the round trip's deadline (connection_timeout)", True),
        (pgexc.TooManyConnectionsError("sorry, too many clients already"), "database short of resources", False),
        (pgexc.AdminShutdownError("terminating connection"), "database unreachable", False),
        (ConnectionRefusedError(111, "Connection refused"), "database unreachable", False),
    ],
    ids=lambda c: c if isinstance(c, str) else type(c).__name__,
)
def test_timeouts_are_named_as_such(error: BaseException, name: str, slow: bool) -> None:
    """The outage's log line names the fault: a statement timeout is not "database unreachable"."""
    assert database_fault(error)
    assert fault_name(error) == name and timed_out(error) is slow


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (pgexc.ProgramLimitExceededError("total size of jsonb array elements exceeds the maximum"), True),
        (pgexc.InternalServerError("invalid memory alloc request size 1073741824"), True),
        (pgexc.UntranslatableCharacterError("unsupported Unicode escape sequence"), True),
        (ArgumentError("invalid input for query argument $5"), True),
        (pgexc.UndefinedFunctionError("function does not exist"), False),  # a bug: raised
        (pgexc.InsufficientPrivilegeError("permission denied"), False),  # configuration: raised
        (pgexc.QueryCanceledError("canceling statement due to statement timeout"), False),  # a fault
        (pgexc.ConnectionDoesNotExistError("connection was closed"), False),
        (ValueError("a bug"), False),
    ],
    ids=lambda c: type(c).__name__,
)
def test_statements_refused_for_what_they_carry(error: BaseException, refused: bool) -> None:
    """What the recorder splits a batch around, until the outcome refused is alone."""
    assert refused_statement(error) is refused
