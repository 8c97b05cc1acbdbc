"""The dashboard's connection pool names a database that goes away as a TransientError (a 503),
even when it goes between the connect and the session's settings."""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest

from dashboard import pool as pool_module
from dashboard.pool import ConnectionPool
from lmnh.config import load_config
from lmnh.errors import TransientError


class DroppedConnection:
    """A connection whose server goes away right after accepting it."""

    autocommit = False
    closed = 0

    def cursor(self) -> DroppedConnection:
        return self

    def __enter__(self) -> DroppedConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def execute(self, *_args: Any) -> None:
        raise psycopg2.OperationalError("server closed the connection unexpectedly\n\tdetail")

    def close(self) -> None:
        self.closed = 1


def test_a_connection_dropped_before_its_settings_is_transient_and_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dropped = DroppedConnection()
    monkeypatch.setattr(pool_module, "connect", lambda *_args, **_kwargs: dropped)
    pool = ConnectionPool(load_config({}).database)
    with (
        pytest.raises(TransientError, match=r"server closed the connection unexpectedly$"),
        pool.cursor(),
    ):
        pass
    assert dropped.closed
