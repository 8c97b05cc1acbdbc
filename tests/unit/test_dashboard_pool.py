"""The dashboard's connection pool: a database that goes away is a 503 that names no server; at
most `size` connections open, a bounded wait for one; an idle connection that is dead (closed
by the server, or silent) is never lent, and its idle siblings go with it; a query with no
answer is severed on the client's side. The connections are fakes on a real socket pair, the
test playing the server's side."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from dashboard import pool as pool_module
from dashboard.pool import BUSY, NOT_ANSWERING, ConnectionPool, Unavailable
from lmnh.config import load_config


class FakeConnection:
    """A connection on one end of a socket pair. A statement fails at once when `drops`, and
    waits for a byte from the "server" that never comes when `silent`."""

    def __init__(self) -> None:
        self.client, self.server = socket.socketpair()
        self.closed = 0
        self.autocommit = False
        self.drops = False
        self.silent = False
        self.statements: list[str] = []

    def cursor(self) -> FakeConnection:
        return self

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def fileno(self) -> int:
        return self.client.fileno()

    def execute(self, statement: str, *_args: Any) -> None:
        self.statements.append(statement)
        if self.drops:
            raise psycopg2.OperationalError("server closed the connection unexpectedly\n\tdetail")
        if self.silent and not self.client.recv(1):  # b"": shut down from another thread
            self.closed = 2
            raise psycopg2.OperationalError("server closed the connection unexpectedly")

    def close(self) -> None:
        if not self.closed:
            self.closed = 1
        self.client.close()
        self.server.close()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeConnection]]:
    """Every connection the pool opens, in order."""
    connections: list[FakeConnection] = []

    def fake_connect(*_args: object, **_kwargs: object) -> FakeConnection:
        connections.append(FakeConnection())
        return connections[-1]

    monkeypatch.setattr(pool_module, "connect", fake_connect)
    yield connections
    for conn in connections:
        conn.close()


def new_pool(size: int = 4, **options: Any) -> ConnectionPool:
    return ConnectionPool(load_config({}).database, size, **options)


def test_a_connection_dropped_before_its_settings_is_a_503_naming_no_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dropped = FakeConnection()
    dropped.drops = True
    monkeypatch.setattr(pool_module, "connect", lambda *_args, **_kwargs: dropped)
    pool = new_pool(1, wait_s=0.2)
    for _ in range(2):  # its slot is given back: the second time is not "busy"
        with pytest.raises(Unavailable) as raised, pool.cursor():
            pass
        assert str(raised.value) == NOT_ANSWERING
    assert raised.value.detail.endswith("server closed the connection unexpectedly")
    assert "127.0.0.1" in raised.value.detail  # the log names the server; the answer does not
    assert dropped.closed


def test_no_more_than_size_connections_and_a_bounded_wait(opened: list[FakeConnection]) -> None:
    pool = new_pool(2, wait_s=0.3)
    with pool.cursor(), pool.cursor():
        started = time.monotonic()
        with pytest.raises(Unavailable) as raised, pool.cursor():
            pass
        waited = time.monotonic() - started
    assert str(raised.value) == BUSY
    assert 0.3 <= waited < 2
    assert len(opened) == 2

    held = pool.cursor()
    held.__enter__()
    with pool.cursor():
        freed = threading.Timer(0.2, held.__exit__, (None, None, None))
        freed.start()
        with pool.cursor():  # waits for the one given back, opens none
            pass
        freed.join()
    assert len(opened) == 2


def test_an_idle_connection_the_server_wrote_to_or_closed_is_not_lent(
    opened: list[FakeConnection],
) -> None:
    pool = new_pool()
    with pool.cursor(), pool.cursor():
        pass
    first, second = opened
    first.server.sendall(b"E")  # say, a FATAL message: the server ended the session
    with pool.cursor():
        pass
    assert second.closed and first.closed, "a dead idle connection, and its sibling, dropped"
    assert len(opened) == 3


def test_an_idle_connection_that_does_not_answer_a_ping_is_dropped_with_its_siblings(
    opened: list[FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "PING_TIMEOUT_S", 0.3)
    pool = new_pool()
    with pool.cursor(), pool.cursor():
        pass
    for conn in opened:
        conn.silent = True  # packets dropped: nothing arrives, nothing is closed
    started = time.monotonic()
    with pool.cursor() as cur:
        cur.execute("SELECT 2")
    assert time.monotonic() - started < 2
    assert [conn.closed for conn in opened[:2]] == [2, 1]  # pinged and severed; its sibling
    assert opened[2].statements[-1] == "SELECT 2"  # the query ran on a fresh connection


def test_a_query_unanswered_past_the_statement_timeout_and_grace_is_severed(
    opened: list[FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "GRACE_S", 0.3)
    pool = new_pool(statement_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(Unavailable) as raised, pool.cursor() as cur:
        opened[0].silent = True
        cur.execute("SELECT pg_sleep(3600)")
    assert 1.3 <= time.monotonic() - started < 3
    assert str(raised.value) == NOT_ANSWERING
    assert opened[0].closed
    with pool.cursor():  # and the pool goes on with a new connection
        pass
    assert len(opened) == 2
    pool.close()
