"""DSNs: every form asyncpg or libpq takes is accepted (several hosts, query parameters, a driver
in the scheme, libpq's key=value strings), as asyncpg then reads it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import asyncpg.connect_utils
import pytest

from jobmaster_async import JobMaster
from jobmaster_async.db.connection import database_hosts, dsn_from
from jobmaster_async.errors import ConfigurationError
from tests.proxy import Proxy


def read_by_asyncpg(dsn: str) -> tuple[list[Any], Any]:
    """The addresses and parameters asyncpg takes from ``dsn`` (its own parser, private)."""
    none = dict.fromkeys(
        ("host", "port", "user", "password", "passfile", "database", "command_timeout", "ssl", "direct_tls"),
    )
    addresses, parameters, _ = asyncpg.connect_utils._parse_connect_arguments(
        dsn=dsn,
        **none,
        statement_cache_size=100,
        max_cached_statement_lifetime=0,
        max_cacheable_statement_size=0,
        server_settings=None,
        target_session_attrs=None,
        krbsrvname=None,
        gsslib=None,
        service=None,
        servicefile=None,
    )
    return addresses, parameters


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:secret@db.example:5432/app",
        "postgres://u@db.example/app?sslmode=disable",
        "postgresql://u@h1:5432,h2:5433/app?target_session_attrs=read-write",
        "postgresql://postgres:@/postgres?host=/run/pg",
    ],
)
def test_a_plain_dsn_is_kept_as_it_is(dsn: str) -> None:
    assert dsn_from(dsn) == dsn


def test_several_hosts_with_query_parameters() -> None:
    dsn = dsn_from("postgresql://u@h1:5432,h2:5433/app?target_session_attrs=read-write&application_name=billing")
    addresses, parameters = read_by_asyncpg(dsn)
    assert addresses == [("h1", 5432), ("h2", 5433)]
    assert parameters.target_session_attrs == "read-write"
    assert parameters.server_settings == {"application_name": "billing"}
    assert database_hosts(dsn) == ["h1:5432", "h2:5433"]


def test_a_driver_in_the_scheme() -> None:
    dsn = dsn_from("postgresql+asyncpg://u:p%40ss@h1,h2:6000/app?target_session_attrs=read-write")
    assert dsn == "postgresql://u:p%40ss@h1,h2:6000/app?target_session_attrs=read-write"
    addresses, parameters = read_by_asyncpg(dsn)
    assert addresses == [("h1", 5432), ("h2", 6000)] and parameters.password == "p@ss"


def test_sqlalchemy_forms_of_several_hosts_and_its_driver_options() -> None:
    """SQLAlchemy writes several hosts as repeated ``host`` parameters."""
    dsn = dsn_from("postgresql+asyncpg://u@/app?host=h1:5432&host=h2:5433&prepared_statement_cache_size=0")
    assert read_by_asyncpg(dsn)[0] == [("h1", 5432), ("h2", 5433)]
    assert "prepared_statement_cache_size" not in dsn
    pg8000 = dsn_from("postgresql+pg8000://u@/app?unix_sock=/run/pg/.s.PGSQL.5433")
    assert read_by_asyncpg(pg8000)[0] == ["/run/pg/.s.PGSQL.5433"]


def test_a_sqlalchemy_url_object_with_several_hosts() -> None:
    from sqlalchemy.engine import make_url

    url = make_url("postgresql+psycopg://u:pw@/app?host=h1:5432&host=h2:5433&target_session_attrs=read-write")
    addresses, parameters = read_by_asyncpg(dsn_from(url))
    assert addresses == [("h1", 5432), ("h2", 5433)]
    assert parameters.password == "pw" and parameters.target_session_attrs == "read-write"


def test_libpq_client_options_are_dropped_and_options_become_settings(caplog: pytest.LogCaptureFixture) -> None:
    dsn = dsn_from(
        "postgresql://u@h/app?connect_timeout=3&keepalives=1&options=-c%20statement_timeout%3D5s%20--work-mem%3D4MB"
        "&fallback_application_name=billing"
    )
    _, parameters = read_by_asyncpg(dsn)
    assert parameters.server_settings == {
        "statement_timeout": "5s",
        "work_mem": "4MB",
        "application_name": "billing",
    }
    assert "connect_timeout=3 is ignored" in caplog.text and "keepalives=1 is ignored" in caplog.text


def test_a_libpq_keyword_value_string() -> None:
    dsn = dsn_from(
        "host=h1,h2 port=5432,5433 dbname=app user=u password='a b\\'c' target_session_attrs=read-write "
        "options='-c search_path=x'"
    )
    addresses, parameters = read_by_asyncpg(dsn)
    assert addresses == [("h1", 5432), ("h2", 5433)]
    assert (parameters.user, parameters.password, parameters.database) == ("u", "a b'c", "app")
    assert parameters.target_session_attrs == "read-write"
    assert parameters.server_settings == {"search_path": "x"}


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("mysql://u@h/app", "needs PostgreSQL, got a mysql URL"),
        ("mysql+pymysql://u@h/app", "needs PostgreSQL, got a mysql URL"),
        ("just some words", "not a database URL"),
        ("host=h1 'dangling", "not a database URL"),
    ],
)
def test_what_is_not_a_postgresql_dsn(dsn: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        dsn_from(dsn)


def test_where_several_hosts_point() -> None:
    assert database_hosts("postgresql://u@[::1]:5433,h2/x") == ["::1:5433", "h2:5432"]
    assert database_hosts("postgresql://u@/x?host=h1,h2&port=6000,6001") == ["h1:6000", "h2:6001"]
    assert database_hosts("postgresql://u@/x?host=/run/a,/run/b&port=5433") == [
        "/run/a/.s.PGSQL.5433",
        "/run/b/.s.PGSQL.5433",
    ]


def with_hosts(dsn: str, hosts: str) -> str:
    """``dsn`` with its host list replaced by ``hosts`` (its user and password kept)."""
    parts = urlsplit(dsn)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@{hosts}" if credentials else hosts))


async def test_a_dead_first_host_is_skipped_for_the_live_one(dsn: str) -> None:
    """Two hosts, the first refusing connections: the connection is made to the second."""
    async with Proxy(dsn) as proxy:
        accepted = proxy.accepted.count
        several = with_hosts(proxy.dsn, f"127.0.0.1:1,127.0.0.1:{proxy.port}")
        several += "&" if "?" in several else "?"
        several += "target_session_attrs=read-write&application_name=failover_test&connect_timeout=5"
        async with JobMaster(several) as master:
            await master.connect(wait=0)
            async with master.connection() as conn:
                assert await conn.fetchval("SELECT current_setting('application_name')") == "failover_test"
        assert proxy.accepted.count > accepted


async def test_the_same_through_a_sqlalchemy_engine(dsn: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    async with Proxy(dsn) as proxy:
        url = make_url(with_hosts(proxy.dsn, "")).set(drivername="postgresql+asyncpg")
        url = url.update_query_pairs([("host", "127.0.0.1:1"), ("host", f"127.0.0.1:{proxy.port}")])
        engine = create_async_engine(url)
        try:
            async with JobMaster(engine) as master:
                async with master.connection() as conn:
                    assert await conn.fetchval("SELECT 1") == 1
        finally:
            await engine.dispose()


async def test_each_host_has_its_own_deadline(dsn: str) -> None:
    """A first host gone without a reset (black-holed) takes one deadline, then the next host
    is tried (asyncpg's own deadline covers all hosts: the second would never be reached)."""
    async with Proxy(dsn) as gone, Proxy(dsn) as live:
        gone.blackhole()
        several = with_hosts(live.dsn, f"127.0.0.1:{gone.port},127.0.0.1:{live.port}")
        async with JobMaster(several, connection_timeout=1) as master:
            conn = await master.open_connection()
            try:
                assert await conn.fetchval("SELECT 1") == 1
            finally:
                await conn.close()
        assert gone.accepted.count >= 1 and live.accepted.count == 1
        gone.resume()
