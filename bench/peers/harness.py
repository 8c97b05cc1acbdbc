"""What every peer's run shares: its process under the peak-RSS launcher, the watch on its
table that times it, and the figures it returns."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from psycopg2 import sql

from bench.local import BenchError, Resources, query, under_peak_rss
from bench.peers.records import Tally
from bench.report import rate
from lmnh.config import DatabaseSettings
from lmnh.database import connect

POLL_S = 0.2  # between the end of one poll of a peer's table and the start of the next
RUN_TIMEOUT_S = 600.0  # from the peer's start to its last row
STALL_S = 60.0  # a peer whose row count stays the same this long has stopped loading
STOP_TIMEOUT_S = 60.0  # from SIGTERM to exit, before SIGKILL
LOG_TAIL_CHARS = 2000


@dataclass(frozen=True, slots=True)
class PeerResult:
    """One peer's figures, in the shape the benchmark's report takes them."""

    key: str  # "quix", "connect", "connect_tuned"
    label: str  # what it is, with its version and settings
    messages: int  # consumed from the topic: stored or dropped by the shape check
    rows_expected: int  # the messages that pass the shape check: what it is meant to store
    landed: int  # rows in its table once it was stopped (at least once: may exceed)
    seconds: float  # from the poll that first saw a row to the one that saw them all
    messages_per_second: float  # messages / seconds, as the pipeline's own rate
    rows_per_second: float  # rows_expected / seconds
    startup_seconds: float  # from its process's start to the first row seen
    wall_seconds: float  # from its process's start to the poll that saw every row
    wall_messages_per_second: float  # messages / wall_seconds: start-up and all
    peak_rss_kib: int  # of its process alone (bench/peak_rss.py)
    delivery: str
    per_message: str  # what it does with each message, in a few words
    how: str  # how it was run and timed
    notes: tuple[str, ...] = ()
    lost_request_types: int | None = None  # request rows stored without their type


@dataclass(frozen=True, slots=True)
class Watched:
    """When a peer's rows showed up, by the polls of its table."""

    first_seen: float  # monotonic time the poll that first saw a row answered
    full_seen: float  # that the poll that first saw the full count answered
    polls: int
    counts: int  # polls that ran count(*)
    query_seconds: float  # spent in those polls' queries


class PeerProcess:
    """A peer's process under the peak-RSS launcher, its output in files in `workdir`."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        workdir: Path,
        label: str,
    ) -> None:
        self.label = label
        self.log = workdir / f"{label}.log"
        self._rss = workdir / f"{label}.rss"
        with self.log.open("wb") as log:
            self.started = time.monotonic()
            self._process = subprocess.Popen(  # noqa: S603 - the benchmark's own command line
                under_peak_rss(command, self._rss),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def exited(self) -> int | None:
        return self._process.poll()

    def tail(self) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return text[-LOG_TAIL_CHARS:]

    def stop(self) -> int:
        """SIGTERM (the launcher passes it on), SIGKILL to the peer after STOP_TIMEOUT_S;
        the peer's peak RSS in KiB."""
        if self._process.poll() is None:
            peer = _children(self._process.pid)
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill(peer or _children(self._process.pid))
                self._process.wait(STOP_TIMEOUT_S)
            if not self._rss.exists():
                # The signal came before the launcher could pass it on: it ended alone.
                _kill(peer)
        if not self._rss.exists():
            raise BenchError(f"{self.label}: the peak-RSS launcher failed: {self.tail()}")
        return int(self._rss.read_text(encoding="utf-8"))

    def kill(self) -> None:
        """End it whatever state it is in, for a run that failed."""
        with contextlib.suppress(BenchError, OSError, subprocess.TimeoutExpired):
            self.stop()


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """The launcher's child: the peer itself."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    except OSError:
        return []
    return [int(child) for child in text.split()]


def watch_table(
    database: DatabaseSettings, table: str, expected: int, process: PeerProcess
) -> Watched:
    """Poll `table` every POLL_S until it holds `expected` rows; fail if the peer exits, its
    count stays the same for STALL_S, or RUN_TIMEOUT_S passes."""
    deadline = process.started + RUN_TIMEOUT_S
    polls, query_seconds = 0, 0.0
    first_seen: float | None = None
    rows, changed = 0, 0.0
    with _TableCounter(database, table) as counter:
        while True:
            code = process.exited()
            if code is not None:
                raise BenchError(
                    f"{process.label}: exited {code} before storing {expected} rows:"
                    f" {process.tail()}"
                )
            started = time.monotonic()
            if started > deadline:
                raise BenchError(
                    f"{process.label}: {rows} of {expected} rows after {RUN_TIMEOUT_S:g} s"
                )
            now_rows = counter.rows()
            # When the answer came: a count waits for a lock a writer holds (Quix's sink
            # alters its table in every batch) and then sees what it committed meanwhile.
            answered = time.monotonic()
            polls += 1
            query_seconds += answered - started
            if now_rows is not None:
                first_seen = answered if first_seen is None else first_seen
                if now_rows >= expected:
                    return Watched(first_seen, answered, polls, counter.counts, query_seconds)
                if now_rows != rows:
                    rows, changed = now_rows, answered
                elif answered - changed > STALL_S:
                    raise BenchError(
                        f"{process.label}: stuck at {rows} of {expected} rows for"
                        f" {STALL_S:g} s: {process.tail()}"
                    )
            time.sleep(POLL_S)


class _TableCounter:
    """The committed rows of one table, as cheaply as they can be known exactly on a server
    the peer shares on two cores: an existence check until the first row, then count(*),
    but only once some transaction has ended since the last count (the server's snapshot
    then differs), without parallel workers, on one connection."""

    def __init__(self, database: DatabaseSettings, table: str) -> None:
        self._table = table
        self._exists = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
        self._count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        self._seen = False
        self._snapshot: object = None
        self._rows = 0
        self.counts = 0
        self._conn = connect(database, application_name="lmnh-bench-peer-watch")
        self._conn.autocommit = True
        self._cur = self._conn.cursor()
        self._cur.execute("SET max_parallel_workers_per_gather = 0")

    def rows(self) -> int | None:
        """Rows committed now; None while there are none (or no table yet)."""
        cur = self._cur
        if not self._seen:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (self._table,))
            if not _scalar(cur.fetchone()):
                return None
            cur.execute(self._exists)
            if not _scalar(cur.fetchone()):
                return None
            self._seen = True
        # Taken before the count: an unchanged snapshot at the next poll means nothing
        # committed since, so this count still holds.
        cur.execute("SELECT pg_current_snapshot()::text")
        snapshot = cur.fetchone()
        if snapshot != self._snapshot:
            cur.execute(self._count)
            self._rows = _scalar(cur.fetchone())
            self._snapshot = snapshot
            self.counts += 1
        return self._rows

    def __enter__(self) -> _TableCounter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._conn.close()


def _scalar(row: tuple[object, ...] | None) -> int:
    if row is None or not isinstance(row[0], bool | int):
        raise BenchError(f"a poll of a peer's table returned {row!r}")
    return int(row[0])


def table_rows(database: DatabaseSettings, table: str, condition: sql.Composable | None) -> int:
    """Rows of `table`, or those meeting `condition`."""
    count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    if condition is not None:
        count = sql.SQL("{} WHERE {}").format(count, condition)
    return _scalar(query(database, count)[0])


@dataclass(frozen=True, slots=True)
class Stage:
    """Where one peer runs: the run's resources (settings, names, groups), its own fresh
    database, what it is meant to store, and a scratch folder for its files."""

    resources: Resources
    database: DatabaseSettings
    tally: Tally
    scratch: Path


@dataclass(frozen=True, slots=True)
class Timed:
    """A peer's run, measured."""

    messages: int
    expected: int
    seconds: float
    startup_seconds: float
    peak_rss_kib: int
    landed: int
    polls: int
    counts: int
    mean_poll_ms: float


def run_and_time(process: PeerProcess, stage: Stage, table: str) -> Timed:
    """Watch a started peer until its table holds the rows it is meant to store, then stop
    it and count what landed (a peer may write more after the full count, being at least
    once)."""
    expected = stage.tally.stored
    try:
        watched = watch_table(stage.database, table, expected, process)
    except BaseException:
        process.kill()
        raise
    peak_rss = process.stop()
    return Timed(
        messages=stage.tally.messages,
        expected=expected,
        seconds=watched.full_seen - watched.first_seen,
        startup_seconds=watched.first_seen - process.started,
        peak_rss_kib=peak_rss,
        landed=table_rows(stage.database, table, None),
        polls=watched.polls,
        counts=watched.counts,
        mean_poll_ms=1000 * watched.query_seconds / max(watched.polls, 1),
    )


@dataclass(frozen=True, slots=True)
class Description:
    """What a peer is, for its PeerResult."""

    key: str
    label: str
    per_message: str
    how: str
    notes: tuple[str, ...] = ()
    lost_request_types: int | None = None


def result(timed: Timed, described: Description) -> PeerResult:
    """A peer's figures from its timed run. A run whose rows all showed up in one poll has
    no span: it is given one poll interval rather than an infinite rate."""
    seconds = max(timed.seconds, POLL_S)
    wall = timed.startup_seconds + timed.seconds
    timing = (
        f"timed from the answer of the first poll of its table that saw a row to that of the"
        f" first that saw all {timed.expected:,} (polls {POLL_S * 1000:.0f} ms apart,"
        f" {timed.polls} of them, {timed.counts} counting, {timed.mean_poll_ms:.1f} ms each on"
        " average, waits for the writer's locks included)"
    )
    return PeerResult(
        key=described.key,
        label=described.label,
        messages=timed.messages,
        rows_expected=timed.expected,
        landed=timed.landed,
        seconds=round(seconds, 3),
        messages_per_second=round(rate(timed.messages, seconds), 1),
        rows_per_second=round(rate(timed.expected, seconds), 1),
        startup_seconds=round(timed.startup_seconds, 3),
        wall_seconds=round(wall, 3),
        wall_messages_per_second=round(rate(timed.messages, wall), 1),
        peak_rss_kib=timed.peak_rss_kib,
        delivery="at least once",
        per_message=described.per_message,
        how=f"{described.how}; {timing}",
        notes=described.notes,
        lost_request_types=described.lost_request_types,
    )
