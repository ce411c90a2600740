"""The connection pool: reuse, what is never reused, its size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from jobmaster_async.db.connection import opener
from jobmaster_async.db.faults import database_fault
from jobmaster_async.db.pool import Pool
from tests.polling import until, within
from tests.proxy import Proxy


@asynccontextmanager
async def opened_pool(dsn: str, max_size: int) -> AsyncIterator[Pool]:
    pool = Pool(opener(dsn, None, None), max_size)
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_refused_statement_keeps_its_connection(dsn: str) -> None:
    async with opened_pool(dsn, 1) as pool:
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncpg.PostgresError):
            await pool.fetchval("SELECT 1 / 0")
        assert await pool.fetchval("SELECT pg_backend_pid()") == pid


async def test_a_cancelled_statement_closes_its_connection(dsn: str, conn: asyncpg.Connection) -> None:
    async with opened_pool(dsn, 1) as pool:
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        sleeper = asyncio.create_task(pool.fetchval("SELECT pg_sleep(60)"))

        async def sleeping() -> bool:
            query = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep(60)%'"
            return bool(await conn.fetchval(query, pid))

        await until(sleeping, "the statement to run")
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        assert await pool.fetchval("SELECT pg_backend_pid()") != pid


async def test_a_connection_left_in_a_transaction_is_not_reused(dsn: str) -> None:
    async with opened_pool(dsn, 1) as pool:
        async with pool.acquire() as c:
            pid = await c.fetchval("SELECT pg_backend_pid()")
            await c.execute("BEGIN")
        async with pool.acquire() as c:
            assert not c.is_in_transaction()
            assert await c.fetchval("SELECT pg_backend_pid()") != pid


async def test_never_more_connections_than_max_size(dsn: str) -> None:
    async with opened_pool(dsn, 2) as pool:
        pids = await asyncio.gather(*(pool.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)") for _ in range(6)))
        assert len(set(pids)) == 2


async def test_a_closed_pool_refuses_statements(dsn: str) -> None:
    pool = Pool(opener(dsn, None, None), 1)
    await pool.fetchval("SELECT 1")
    await pool.close()
    with pytest.raises(asyncpg.InterfaceError, match="closed"):
        await pool.fetchval("SELECT 1")


async def test_a_terminated_backend_is_a_connection_fault_and_its_connection_is_never_reused(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """The issue's smallest form, made deterministic: the terminated backend's FATAL message
    reaches the client, the end of the connection not yet (a few milliseconds later, in the
    issue). The next statement on that connection fails in the driver; the failure must count
    as a connection fault (the worker retries it), and the connection must never be used again."""
    async with Proxy(dsn) as proxy, opened_pool(proxy.dsn, 1) as pool:
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        proxy.hold_closes = True
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
        await within(proxy.closed_by_server.wait_for(1), "the proxy to see the server close")
        with pytest.raises(Exception) as raised:
            await asyncio.wait_for(pool.fetchval("SELECT 1"), 10)
        assert database_fault(raised.value), repr(raised.value)
        assert await asyncio.wait_for(pool.fetchval("SELECT pg_backend_pid()"), 10) != pid
