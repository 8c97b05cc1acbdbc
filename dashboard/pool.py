"""A few read-only PostgreSQL connections shared by the web app's worker threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from lmnh.config import DatabaseSettings
from lmnh.database import connect
from lmnh.errors import TransientError

# A chart query that runs longer than this is cut off: the page shows an error and retries,
# instead of a wall screen waiting forever on a stuck query.
STATEMENT_TIMEOUT_MS = 15_000


class ConnectionPool:
    """Hands out autocommit, read-only connections; opens them on demand, keeps `size` idle.

    Connections are opened lazily, so the app starts (and shows an error state) even while the
    database is down, and recovers by itself once it is back.
    """

    def __init__(self, database: DatabaseSettings, size: int = 4) -> None:
        self._database = database
        self._size = size
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    @contextmanager
    def cursor(self) -> Iterator[Cursor]:
        """A cursor on a pooled connection; a broken connection is dropped, not reused.

        Raises `TransientError` (from `lmnh.database.connect`, or when the server goes away
        mid-query) for anything that waiting may heal.
        """
        conn = self._take()
        healthy = False
        try:
            with conn.cursor() as cur:
                yield cur
            healthy = True
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
            where = f"{self._database.host}:{self._database.port}/{self._database.name}"
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else "no answer"
            raise TransientError(f"database query failed at {where}: {first_line}") from None
        finally:
            self._give_back(conn, healthy)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self) -> Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        conn = connect(self._database, application_name="lmnh-dashboard")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SET default_transaction_read_only = on; SET statement_timeout = %s",
                (STATEMENT_TIMEOUT_MS,),
            )
        return conn

    def _give_back(self, conn: Connection, healthy: bool) -> None:
        if healthy and not conn.closed:
            with self._lock:
                if len(self._idle) < self._size:
                    self._idle.append(conn)
                    return
        conn.close()
