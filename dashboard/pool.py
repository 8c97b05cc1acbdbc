"""The web app's read-only PostgreSQL connections: a bounded number, proven alive before reuse,
and never held longer than the server's own statement timeout plus a grace.

A silent fault (a failover, a forgetful NAT, a frozen server) leaves a connection open that
nothing will ever answer on; the pool must neither hand such a connection out nor wait on it.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import monotonic

import psycopg2
from psycopg2.errors import QueryCanceled
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from lmnh.config import DatabaseSettings
from lmnh.database import connect, sever
from lmnh.errors import FatalError, PipelineError, TransientError

APPLICATION_NAME = "lmnh-dashboard"
# A chart query that runs longer than this is cut off by the server: the page shows an error
# and retries, instead of a wall screen waiting forever on a stuck query.
STATEMENT_TIMEOUT_S = 15
# Past the statement timeout, a server that has not answered is not going to (it is frozen, or
# the packets are lost): the connection is severed on the client's side.
GRACE_S = 5.0
PING_TIMEOUT_S = 2.0  # a round trip on an idle connection before it is lent again
IDLE_MAX_S = 60.0  # an idle connection older than this is closed, not reused
WAIT_S = 5.0  # how long a request waits for a free connection, then gets a 503
SIZE = 6  # connections open at most, lent and idle together

# What a web answer says: never the database's user, host, port or name (those go to the log).
NOT_ANSWERING = "the database is not answering; retrying shortly"
TOO_SLOW = "the database took too long to answer; retrying shortly"
BUSY = "every database connection is busy; retrying shortly"
REFUSED = "the database refused the dashboard's connection; the server's log says why"

log = logging.getLogger(__name__)


class ValueRefused(PipelineError):
    """PostgreSQL refused a value that the query was given (SQLSTATE class 22, data exception):
    the values come from a request, so this is the request's fault, not the server's."""


class Unavailable(TransientError):
    """The database cannot be used now. Its text is fit for a web answer (one of this module's
    general phrases); `detail` says which server and why, for the log only."""

    def __init__(self, public: str, detail: str) -> None:
        super().__init__(public)
        self.detail = detail


@dataclass(slots=True)
class _Pooled:
    conn: Connection
    idle_since: float = 0.0


class ConnectionPool:
    """Lends autocommit, read-only connections, at most `size` open at once.

    Connections are opened on demand, so the app starts (and shows an error state) even while
    the database is down, and recovers by itself once it is back. An idle connection is checked
    before it is lent: one the server has written to or closed while idle, or that does not
    answer a `SELECT 1` within `PING_TIMEOUT_S`, is dead, and so are its idle siblings (they
    lead to the same server): all are dropped and a fresh connection is opened instead.
    """

    def __init__(
        self,
        database: DatabaseSettings,
        size: int = SIZE,
        *,
        statement_timeout_s: int = STATEMENT_TIMEOUT_S,
        wait_s: float = WAIT_S,
    ) -> None:
        self._database = database
        self._size = size
        self._statement_timeout_s = statement_timeout_s
        self._wait_s = wait_s
        self._idle: list[_Pooled] = []  # the most recently used last
        self._open = 0  # lent, idle, or being opened
        self._closed = False
        self._free = threading.Condition()
        self._watchdog = _Watchdog()

    @contextmanager
    def cursor(self, *, write: bool = False) -> Iterator[Cursor]:
        """A cursor on a pooled connection, for at most the statement timeout plus `GRACE_S`;
        with `write`, in one read-write transaction committed at the end of the block (the
        staff's sessions are the only thing the dashboard writes).

        Raises `Unavailable` (a `TransientError`) for anything that waiting may heal, and
        `ValueRefused` when the database refuses a value of the query.
        """
        pooled = self._take()
        healthy = False
        self._watchdog.arm(pooled, self._statement_timeout_s + GRACE_S)
        try:
            with pooled.conn.cursor() as cur:
                if write:
                    cur.execute("BEGIN READ WRITE")
                yield cur
                if write:
                    cur.execute("COMMIT")
            healthy = True
        except psycopg2.DataError as error:
            raise ValueRefused(f"the database refused a value: {_first_line(error)}") from None
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
            if pooled.conn.closed:  # lost, not refused: its idle siblings are suspect too
                self._drop_idle()
            public = TOO_SLOW if isinstance(error, QueryCanceled) else NOT_ANSWERING
            raise Unavailable(public, self._detail("query failed", error)) from None
        finally:
            self._watchdog.disarm(pooled)
            self._give_back(pooled, healthy)

    def close(self) -> None:
        with self._free:
            self._closed = True
        self._drop_idle()
        self._watchdog.close()

    def _take(self) -> _Pooled:
        deadline = monotonic() + self._wait_s
        while True:
            pooled = self._reserve(deadline)
            if pooled is None:
                return self._open_one()
            if self._alive(pooled):
                return pooled
            self._discard(pooled)
            self._drop_idle()

    def _reserve(self, deadline: float) -> _Pooled | None:
        """An idle connection, or None when a slot for a new one was reserved."""
        old: list[_Pooled] = []
        try:
            with self._free:
                while True:
                    while self._idle and monotonic() - self._idle[0].idle_since > IDLE_MAX_S:
                        old.append(self._idle.pop(0))
                        self._open -= 1
                        self._free.notify()  # a slot for another waiter
                    if self._idle:
                        return self._idle.pop()
                    if self._open < self._size:
                        self._open += 1
                        return None
                    left = deadline - monotonic()
                    if left <= 0:
                        raise Unavailable(
                            BUSY, f"all {self._size} connections lent for {self._wait_s:g} s"
                        )
                    self._free.wait(left)
        finally:
            for pooled in old:
                pooled.conn.close()

    def _open_one(self) -> _Pooled:
        try:
            conn = connect(self._database, application_name=APPLICATION_NAME)
        except BaseException as error:
            self._release_slot()
            if isinstance(error, TransientError | FatalError):
                public = REFUSED if isinstance(error, FatalError) else NOT_ANSWERING
                raise Unavailable(public, str(error)) from None
            raise
        pooled = _Pooled(conn)
        self._watchdog.arm(pooled, PING_TIMEOUT_S)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(
                    "SET default_transaction_read_only = on; SET statement_timeout = %s",
                    (self._statement_timeout_s * 1000,),
                )
        except BaseException as error:
            self._watchdog.disarm(pooled)
            self._discard(pooled)
            if isinstance(error, psycopg2.Error):
                detail = self._detail("a new connection failed", error)
                raise Unavailable(NOT_ANSWERING, detail) from None
            raise
        self._watchdog.disarm(pooled)
        return pooled

    def _alive(self, pooled: _Pooled) -> bool:
        """Whether an idle connection still answers: nothing arrived while it was idle (a
        server that stops or drops the session says so, and closes), and a ping is answered."""
        poller = select.poll()
        poller.register(pooled.conn.fileno(), select.POLLIN | select.POLLPRI)
        if poller.poll(0):
            log.info("an idle database connection was closed by the server; dropped")
            return False
        self._watchdog.arm(pooled, PING_TIMEOUT_S)
        try:
            with pooled.conn.cursor() as cur:
                cur.execute("SELECT 1")
        except psycopg2.Error as error:
            log.warning("%s; a fresh connection is opened", self._detail("ping failed", error))
            return False
        finally:
            self._watchdog.disarm(pooled)
        return True

    def _give_back(self, pooled: _Pooled, healthy: bool) -> None:
        with self._free:
            if healthy and not pooled.conn.closed and not self._closed:
                pooled.idle_since = monotonic()
                self._idle.append(pooled)
                self._free.notify()
                return
        self._discard(pooled)

    def _discard(self, pooled: _Pooled) -> None:
        pooled.conn.close()
        self._release_slot()

    def _release_slot(self) -> None:
        with self._free:
            self._open -= 1
            self._free.notify()

    def _drop_idle(self) -> None:
        with self._free:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._free.notify_all()
        for pooled in idle:
            pooled.conn.close()

    def _detail(self, what: str, error: psycopg2.Error) -> str:
        return f"{what} at {self._database.where}/{self._database.name}: {_first_line(error)}"


class _Watchdog:
    """Severs a connection still lent past its deadline. A frozen server answers nothing, and
    statement_timeout is enforced by the server, so only the client can end such a wait."""

    def __init__(self) -> None:
        self._deadlines: dict[int, tuple[float, _Pooled]] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, pooled: _Pooled, seconds: float) -> None:
        with self._changed:
            self._deadlines[id(pooled)] = (monotonic() + seconds, pooled)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="lmnh-dashboard-watchdog", daemon=True
                )
                self._thread.start()
            self._changed.notify()

    def disarm(self, pooled: _Pooled) -> None:
        # Under the same lock as the severing: once this returns, the socket is the owner's
        # alone (closing it cannot race a shutdown that would hit a reused descriptor).
        with self._changed:
            self._deadlines.pop(id(pooled), None)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _run(self) -> None:
        with self._changed:
            while not self._closed:
                now = monotonic()
                for key, (deadline, pooled) in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[key]
                        log.warning("a database connection did not answer in time; severed")
                        sever(pooled.conn)
                soonest = min((d for d, _ in self._deadlines.values()), default=None)
                self._changed.wait(None if soonest is None else max(soonest - now, 0.0))


def _first_line(error: psycopg2.Error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no answer"
