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
from lmnh.errors import PipelineError, TransientError

# A chart query that runs longer than this is cut off: the page shows an error and retries,
# instead of a wall screen waiting forever on a stuck query.
STATEMENT_TIMEOUT_MS = 15_000


class ValueRefused(PipelineError):
    """PostgreSQL refused a value that the query was given (SQLSTATE class 22, data exception):
    the values come from a request, so this is the request's fault, not the server's."""


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
        before or during the query) for anything that waiting may heal, and `ValueRefused` when
        the database refuses a value of the query.
        """
        try:
            conn = self._take()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
            raise self._failed(error) from None
        healthy = False
        try:
            with conn.cursor() as cur:
                yield cur
            healthy = True
        except psycopg2.DataError as error:
            raise ValueRefused(f"the database refused a value: {_first_line(error)}") from None
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
            raise self._failed(error) from None
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
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(
                    "SET default_transaction_read_only = on; SET statement_timeout = %s",
                    (STATEMENT_TIMEOUT_MS,),
                )
        except BaseException:
            conn.close()
            raise
        return conn

    def _failed(self, error: psycopg2.Error) -> TransientError:
        where = f"{self._database.host}:{self._database.port}/{self._database.name}"
        return TransientError(f"database query failed at {where}: {_first_line(error)}")

    def _give_back(self, conn: Connection, healthy: bool) -> None:
        if healthy and not conn.closed:
            with self._lock:
                if len(self._idle) < self._size:
                    self._idle.append(conn)
                    return
        conn.close()


def _first_line(error: psycopg2.Error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no answer"
