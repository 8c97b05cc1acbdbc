"""A statement the server does not answer is given up, so that the pipeline can retry it.

TCP keepalives and `tcp_user_timeout` (`lmnh.database.connect`) end a connection whose packets
stop. They cannot notice a server that is frozen (its kernel still acknowledges everything), nor
a session that waits for us while we wait for it. So a statement unanswered for a few seconds is
looked at from a second connection to the same server:

- the server does not take that connection either (frozen, gone, failed over): give up;
- our session is not there any more, or it has waited for us twice in a row: give up, and end
  the session so that its locks go with it;
- the server is working on it (a lock, a slow disk): wait on, and say so now and then.

Giving up severs the connection (`lmnh.database.sever`): the thread waiting on it gets an error
at once, which is transient, and the batch is retried on a new connection. Nothing is committed
twice: a transaction that did commit has advanced `kafka_offset`, and the retry skips it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime

import psycopg2
from psycopg2.extensions import connection as Connection

from lmnh.config import DatabaseSettings
from lmnh.database import bounded, connect, sever
from lmnh.errors import PipelineError

log = logging.getLogger(__name__)

PROBE_AFTER_S = 5.0  # a statement unanswered this long is looked at
PROBE_EVERY_S = 2.0  # and again this often while it waits
_SAY_EVERY_S = 30.0  # how often a long, legitimate wait is logged
_TICK_S = 0.5
_WAITED_FOR_US = 2  # probes in a row: once may be a moment between two statements
_PROBE_ANSWER_S = 3.0  # longest a question to the server may take, once connected


@dataclass(frozen=True, slots=True)
class Backend:
    """The server session of one of our connections, named so that no other can be taken for
    it: process ids are reused, and another server (after a failover) has its own."""

    pid: int
    started: datetime
    host: str  # the host and port this connection reached, of several it may have tried
    port: int


def identify(conn: Connection) -> Backend:
    """Who the server says this connection is; ends the connection's transaction."""
    with conn.cursor() as cur:
        cur.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        pid, started = cur.fetchone() or (conn.info.backend_pid, None)
    conn.rollback()
    return Backend(pid, started, conn.info.host, int(conn.info.port))


def end_sessions(conn: Connection, backends: list[Backend]) -> int:
    """End those of `backends` that still run on `conn`'s server (a session left behind by a
    connection we gave up holds its row locks until its server notices); how many ended."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid)) FROM pg_stat_activity a"
            " JOIN unnest(%s::int[], %s::timestamptz[]) AS b (pid, started)"
            " ON a.pid = b.pid AND a.backend_start = b.started",
            ([b.pid for b in backends], [b.started for b in backends]),
        )
        row = cur.fetchone()
    conn.rollback()
    return int(row[0]) if row else 0


@dataclass(slots=True)
class _Busy:
    conn: Connection
    backend: Backend
    who: str  # the thread's name: the writer, the reader
    since: float = field(default_factory=time.monotonic)
    probe_at: float = 0.0
    waited_for_us: int = 0
    said_at: float = 0.0


class Watchdog:
    """Watches the statements of a store's connections from a thread of its own."""

    def __init__(
        self, database: DatabaseSettings, retire: Callable[[str, int], None] | None = None
    ) -> None:
        """`retire(host, port)` gives up every other connection to a server found not to
        answer (an idle one would otherwise hold its next statement for as long again)."""
        self._database = database
        self._retire = retire
        self._busy: dict[int, _Busy] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, conn: Connection, backend: Backend) -> Iterator[None]:
        """Watch what the calling thread runs on `conn` within the block."""
        busy = _Busy(conn, backend, threading.current_thread().name)
        busy.probe_at = busy.since + PROBE_AFTER_S
        with self._lock:
            self._busy[id(busy)] = busy
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lmnh-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._busy.pop(id(busy), None)

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.wait(_TICK_S):
            with self._lock:
                due = [b for b in self._busy.values() if time.monotonic() >= b.probe_at]
            for busy in due:
                try:
                    self._look_at(busy)
                except Exception:  # never let the watchdog die: say it, and watch on
                    log.exception("watchdog: could not look at the %s's statement", busy.who)

    def _look_at(self, busy: _Busy) -> None:
        waited = time.monotonic() - busy.since
        busy.probe_at = time.monotonic() + PROBE_EVERY_S
        where = f"{busy.backend.host}:{busy.backend.port}"
        try:
            state = self._session_state(busy.backend)
        except (PipelineError, psycopg2.Error) as error:
            self._give_up(
                busy,
                f"the {busy.who}'s connection to {where} has not answered for {waited:.0f} s"
                f" and the server does not answer a new connection either ({_first_line(error)})",
            )
            if self._retire is not None:
                self._retire(busy.backend.host, busy.backend.port)
            return
        if state is None:
            self._give_up(
                busy,
                f"the {busy.who}'s session on {where} is gone, yet its statement has not"
                f" answered for {waited:.0f} s",
            )
            return
        if state == ("Client", "ClientRead"):
            busy.waited_for_us += 1
            if busy.waited_for_us >= _WAITED_FOR_US:
                self._end_session(busy.backend)
                self._give_up(
                    busy,
                    f"the {busy.who}'s connection to {where} is dead: for {waited:.0f} s the"
                    " server has waited for us while we waited for it",
                )
            return
        busy.waited_for_us = 0
        if time.monotonic() - busy.said_at >= _SAY_EVERY_S:
            busy.said_at = time.monotonic()
            kind, event = state
            log.warning(
                "the %s's statement has waited %.0f s; the server at %s is working on it (%s)",
                busy.who,
                waited,
                where,
                f"{kind}: {event}" if kind else "running",
            )

    def _give_up(self, busy: _Busy, why: str) -> None:
        with self._lock:
            if self._busy.get(id(busy)) is not busy:
                return  # it answered meanwhile
            self._busy.pop(id(busy))
            log.warning("%s: giving it up; what it was doing is retried on a new connection", why)
            sever(busy.conn)

    def _session_state(self, backend: Backend) -> tuple[str | None, str | None] | None:
        """(wait event type, wait event) of `backend`'s session, asked on a new connection to
        the same server; None if the session is not there."""
        with self._probe(backend) as probe, probe.cursor() as cur:
            cur.execute(
                "SELECT wait_event_type, wait_event FROM pg_stat_activity"
                " WHERE pid = %s AND backend_start = %s",
                (backend.pid, backend.started),
            )
            row = cur.fetchone()
        return None if row is None else (row[0], row[1])

    def _end_session(self, backend: Backend) -> None:
        with suppress(PipelineError, psycopg2.Error), self._probe(backend) as probe:
            end_sessions(probe, [backend])

    @contextmanager
    def _probe(self, backend: Backend) -> Iterator[Connection]:
        """A connection of its own to `backend`'s server, for one question. Connecting is
        bounded by the connect timeout, the question by a timer that severs it: a server that
        freezes meanwhile cannot hold the watchdog."""
        server = replace(
            self._database,
            host=backend.host,
            port=backend.port,
            ports=(),
            target_session_attrs=None,
        )
        probe = connect(server, application_name="lmnh-pipeline-watchdog")
        try:
            with bounded(probe, _PROBE_ANSWER_S):
                yield probe
        finally:
            probe.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
