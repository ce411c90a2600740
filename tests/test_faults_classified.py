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

from jobmaster_async.db.faults import connection_unusable, database_fault, server_not_ready

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
