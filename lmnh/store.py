"""The pipeline's reads and writes: the reference cache, and one transaction per batch.

Exactly once: a batch's rows and the partitions' next offsets are written in one transaction,
under a row lock on those partitions' `kafka_offset` rows. Messages below the stored offset
were stored before (a replay after a crash or a rebalance) and are skipped, so each message
lands once, in a fact table or in `rejected_message`, whichever process loads it.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import psycopg2
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from lmnh import backoff
from lmnh.config import DatabaseSettings
from lmnh.database import bounded, classify, connect, require_schema, tried_last
from lmnh.errors import DatabaseBehind, ExitCode, FatalError, PipelineError, TransientError
from lmnh.events import (
    KafkaMessage,
    Outcome,
    RatingEvent,
    Reason,
    Rejection,
    RequestEvent,
    storable_text,
)
from lmnh.museum import Reference
from lmnh.validation import named_exhibition
from lmnh.watchdog import Backend, Watchdog, end_sessions, identify

log = logging.getLogger(__name__)

# Bytes handed to COPY per read. Each read re-takes the GIL, which the validating main thread
# holds for up to the switch interval (5 ms): psycopg2's 8 KiB default stalls the writer.
_COPY_CHUNK = 4 << 20
_CLOSE_TIMEOUT_S = 1.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The main thread's reads, bounded: a signal is only handled between them, and the consumer
# group waits while they run. A timeout is transient: retried with backoff.
_READ_TIMEOUT = "SET LOCAL statement_timeout = 5000"
# Where copy_row's lines go: 0 ratings, 1 requests, 2 rejected.
COPY_STATEMENTS = (
    "COPY rating_interaction (exhibition_id, rating_id, event_at, kafka_topic, kafka_partition,"
    " kafka_offset) FROM STDIN",
    "COPY request_interaction (exhibition_id, request_id, event_at, kafka_topic,"
    " kafka_partition, kafka_offset) FROM STDIN",
    "COPY rejected_message (raw, reason_code, reason, kafka_timestamp, received_at,"
    " named_exhibition, kafka_topic, kafka_partition, kafka_offset) FROM STDIN",
)

# COPY's text format escapes backslashes; storable_text has already escaped the rest.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\"})


@dataclass(frozen=True, slots=True)
class WriteResult:
    ratings: int = 0
    requests: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by reason code
    already_stored: int = 0  # replayed messages skipped because an earlier run stored them
    # Messages PostgreSQL refused as they were, stored as `unstorable` rejections instead.
    set_aside: tuple[tuple[KafkaMessage, Rejection], ...] = ()

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.ratings + other.ratings,
            self.requests + other.requests,
            self.rejected + other.rejected,
            self.already_stored + other.already_stored,
            self.set_aside + other.set_aside,
        )


class Store:
    """PostgreSQL access for the pipeline: one connection per thread that uses it (the
    pipeline reads reference data while its writer thread stores the previous batch), each
    opened on demand and reopened after a failure."""

    def __init__(self, db: DatabaseSettings) -> None:
        self._db = db
        self._connections: dict[int, tuple[Connection, Backend]] = {}
        self._lock = threading.Lock()
        self._watchdog = Watchdog(db, retire=self._retire)
        # Sessions of connections given up on: ended from the next connection, lest they hold
        # the offsets' row locks until their server notices that we are gone.
        self._abandoned: list[Backend] = []
        self._retired: set[int] = set()  # connections to a server that does not answer

    def _connection(self) -> tuple[Connection, Backend]:
        thread = threading.get_ident()
        with self._lock:
            held = self._connections.get(thread)
        if held is not None and id(held[0]) in self._retired:
            self._drop_connection()
            held = None
        if held is None or held[0].closed:
            conn = connect(self._db, application_name="lmnh-pipeline")
            try:
                # Not watched yet (the watchdog needs to know the session): bounded on its own.
                with bounded(conn, self._db.liveness.connect_timeout_s):
                    held = (conn, identify(conn))
                    self._end_abandoned(conn)
            except Exception as error:
                classified = classified_error(conn, error)
                conn.close()
                raise classified from error
            with self._lock:
                self._connections[thread] = held
        return held

    def _retire(self, host: str, port: int) -> None:
        """A server that does not answer: every connection to it is given up at its next use
        (a new one goes to whichever host is writable now), and of several hosts it is tried
        last from now on, so that a new connection does not wait for it first."""
        with self._lock:
            self._retired.update(
                id(c) for c, b in self._connections.values() if (b.host, b.port) == (host, port)
            )
            self._db = tried_last(self._db, host, port)

    def _end_abandoned(self, conn: Connection) -> None:
        with self._lock:
            abandoned, self._abandoned = self._abandoned, []
        if not abandoned:
            return
        try:
            ended = end_sessions(conn, abandoned)
        except psycopg2.Error as error:  # not ours to end after all: their server will
            conn.rollback()
            log.warning("could not end the sessions of connections given up: %s", error)
            return
        if ended:
            log.warning("ended %d session(s) of connections given up, and their locks", ended)

    def check(self, wait_s: float) -> None:
        """Wait up to `wait_s` for the database to accept us, then require the schema.

        A server that is still starting is waited for; one that stays away, refuses the login
        or lacks the schema is reported with a clear error.
        """
        deadline = time.monotonic() + wait_s
        for delay in backoff.delays(0.5, 5.0):
            try:
                conn, _ = self._connection()
                break
            except TransientError as error:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s; waiting up to %.0f s", error, deadline - time.monotonic())
                time.sleep(delay)
        require_schema(conn, from_schema_sql=True)

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        """A transaction on this thread's connection. Every failure leaves it as the project's
        error for what to do about it (`lmnh.database.classify`); after a transient one the
        connection is dropped, and the next call opens a fresh one."""
        conn, backend = self._connection()
        try:
            with self._watchdog.watching(conn, backend), conn, conn.cursor() as cur:
                yield cur
        except Exception as error:
            classified = classified_error(conn, error)
            if isinstance(classified, TransientError):
                self._drop_connection()
            raise classified from error

    def _drop_connection(self) -> None:
        with self._lock:
            held = self._connections.pop(threading.get_ident(), None)
            if held is not None:
                self._abandoned.append(held[1])
                self._retired.discard(id(held[0]))
        if held is not None:
            held[0].close()

    def cancel(self) -> None:
        """Ask the server to cancel whatever this store's connections are running (a COPY
        blocked on a lock, say), so that the thread waiting on it gets an error and gives up.

        Through a connection of its own (`pg_cancel_backend`), not libpq's cancel request,
        which psycopg2 sends holding the interpreter lock: a server that does not answer
        would then freeze every thread. This one may wait up to the connect timeout."""
        with self._lock:
            backends = [b.pid for c, b in self._connections.values() if not c.closed]
        conn = connect(self._db, application_name="lmnh-pipeline-cancel")
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_cancel_backend(pid) FROM unnest(%s::int[]) AS pid", (backends,)
                )
        finally:
            conn.close()

    def close(self) -> None:
        """Close every connection; bounded, because one still busy in a thread that was given
        up on (a statement the server never answers) cannot close until that ends."""
        with self._lock:
            connections = [conn for conn, _ in self._connections.values()]
            self._connections = {}
        self._watchdog.close()

        def close_all() -> None:
            for conn in connections:
                conn.close()

        closer = threading.Thread(target=close_all, name="lmnh-close", daemon=True)
        closer.start()
        closer.join(_CLOSE_TIMEOUT_S)

    def load_reference(self) -> Reference:
        with self._transaction() as cur:
            cur.execute(_READ_TIMEOUT)
            cur.execute("SELECT public_id, exhibition_id, exhibition_start_date FROM exhibition")
            exhibitions = cur.fetchall()
            cur.execute("SELECT rating_value, rating_id FROM rating")
            ratings = dict(cur.fetchall())
            cur.execute("SELECT request_value, request_id FROM request")
            requests = dict(cur.fetchall())
        return Reference(
            exhibition_start={public_id: start for public_id, _, start in exhibitions},
            rating_values=frozenset(ratings),
            request_values=frozenset(requests),
            exhibition_ids={
                public_id: exhibition_id for public_id, exhibition_id, _ in exhibitions
            },
            rating_ids=ratings,
            request_ids=requests,
        )

    def stored_offsets(
        self, topic: str, topic_id: str, partitions: Iterable[int]
    ) -> dict[int, int]:
        """The next offset to load for each partition that has been loaded before.

        Raises `FatalError` when those offsets belong to an earlier topic of the same name:
        resuming there would skip the new topic's first messages.
        """
        with self._transaction() as cur:
            cur.execute(_READ_TIMEOUT)
            cur.execute(
                "SELECT kafka_partition, next_offset, topic_id FROM kafka_offset"
                " WHERE kafka_topic = %s AND kafka_partition = ANY(%s)",
                (topic, list(partitions)),
            )
            rows = cur.fetchall()
        result = {}
        for partition, offset, stored_id in rows:
            _require_same_topic(topic, topic_id, stored_id)
            result[partition] = offset
        return result

    def write_batch(
        self,
        batch: CopyBatch,
        topic_id: str,
        high_watermarks: Mapping[int, int],
        stored_through: Mapping[tuple[str, int], int] = MappingProxyType({}),
    ) -> WriteResult:
        """Store a batch in one transaction, advance its partitions' offsets (noting their
        `high_watermarks` as last seen), and count its messages in `load_minute`.

        A batch that PostgreSQL refuses for its data raises `PermanentError` and stores
        nothing (the pipeline then halves it to find the refused message). A database whose
        offsets are below `stored_through` (what this run has stored, by partition) lost what
        it had acknowledged: `DatabaseBehind`, and nothing is stored past the hole.
        """
        topics = [topic for topic, _ in batch.highest]
        partitions = [partition for _, partition in batch.highest]

        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO kafka_offset (kafka_topic, kafka_partition, next_offset, topic_id)"
                " SELECT *, 0, %s FROM unnest(%s::text[], %s::int[])"
                " ON CONFLICT DO NOTHING",
                (topic_id, topics, partitions),
            )
            # The row lock serialises two processes that briefly both hold a partition.
            cur.execute(
                "SELECT kafka_topic, kafka_partition, next_offset, topic_id FROM kafka_offset"
                " WHERE (kafka_topic, kafka_partition) IN"
                " (SELECT * FROM unnest(%s::text[], %s::int[]))"
                " ORDER BY kafka_topic, kafka_partition FOR UPDATE",
                (topics, partitions),
            )
            next_offset = {}
            for topic, partition, offset, stored_id in cur.fetchall():
                _require_same_topic(topic, topic_id, stored_id)
                next_offset[(topic, partition)] = offset
            held = {**_offsets_elsewhere(cur, stored_through, next_offset), **next_offset}
            lost = {k: o for k, o in held.items() if o < stored_through.get(k, 0)}
            if lost:
                where = "; ".join(
                    f"{t}[{p}] at {o}, this run stored through {stored_through[(t, p)]}"
                    for (t, p), o in lost.items()
                )
                raise DatabaseBehind(
                    f"the database holds less than this run stored ({where}): it lost its"
                    " latest transactions (a failover to a standby that had not received them?)"
                )

            rows = batch
            if any(batch.lowest[key] < next_offset[key] for key in batch.lowest):
                rows = batch.without_stored(next_offset)  # a replay: rare, so rebuilt
            for statement, data in zip(COPY_STATEMENTS, rows.data, strict=True):
                if data:
                    cur.copy_expert(statement, io.BytesIO(data), _COPY_CHUNK)
            # One statement for both, a round trip less. A watermark not measured yet is taken
            # as at least the offset just stored: a lower bound, never a made-up lag.
            stored = [rows.counts.get(key, 0) for key in batch.highest]
            cur.execute(
                "WITH advanced AS (UPDATE kafka_offset AS o SET next_offset = v.next_offset,"
                "  topic_id = %s, updated_at = now(),"
                "  high_watermark = greatest(v.high_watermark, o.high_watermark, v.next_offset)"
                "  FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[])"
                "  AS v (kafka_topic, kafka_partition, next_offset, high_watermark)"
                "  WHERE o.kafka_topic = v.kafka_topic"
                "  AND o.kafka_partition = v.kafka_partition AND o.next_offset < v.next_offset)"
                " INSERT INTO load_minute AS l (minute, kafka_topic, kafka_partition, messages)"
                " SELECT date_trunc('minute', now()), kafka_topic, kafka_partition, messages"
                " FROM unnest(%s::text[], %s::int[], %s::bigint[])"
                "  AS v (kafka_topic, kafka_partition, messages) WHERE messages > 0"
                " ON CONFLICT (minute, kafka_topic, kafka_partition)"
                " DO UPDATE SET messages = l.messages + excluded.messages",
                (
                    topic_id,
                    topics,
                    partitions,
                    [offset + 1 for offset in batch.highest.values()],
                    [high_watermarks.get(partition) for partition in partitions],
                    topics,
                    partitions,
                    stored,
                ),
            )
        already_stored = len(batch.messages) - len(rows.messages)
        return rows.result + WriteResult(already_stored=already_stored)


@dataclass(frozen=True, slots=True)
class CopyBatch:
    """A batch as the COPY text of each table, built before its transaction and off the
    writer's thread, so that the writer only waits on the database."""

    messages: Sequence[KafkaMessage]
    outcomes: Sequence[Outcome]
    reference: Reference
    received_at: datetime
    data: tuple[bytes, bytes, bytes]  # for COPY_STATEMENTS, in order
    result: WriteResult  # what storing every message stores
    lowest: dict[tuple[str, int], int]  # offset, by topic and partition
    highest: dict[tuple[str, int], int]
    counts: dict[tuple[str, int], int]  # messages, by topic and partition

    def part(self, start: int, stop: int) -> CopyBatch:
        return copy_batch(
            self.messages[start:stop], self.outcomes[start:stop], self.reference, self.received_at
        )

    def as_rejected(self, rejection: Rejection) -> CopyBatch:
        """The batch's only message, stored as `rejection` instead."""
        return copy_batch(self.messages, [rejection], self.reference, self.received_at)

    def without_stored(self, next_offset: dict[tuple[str, int], int]) -> CopyBatch:
        """The messages an earlier run did not store: those at or above `next_offset`."""
        kept = [
            i
            for i, message in enumerate(self.messages)
            if message.offset >= next_offset[(message.topic, message.partition)]
        ]
        return copy_batch(
            [self.messages[i] for i in kept],
            [self.outcomes[i] for i in kept],
            self.reference,
            self.received_at,
        )


def copy_batch(
    messages: Sequence[KafkaMessage],
    outcomes: Sequence[Outcome],
    reference: Reference,
    received_at: datetime,
) -> CopyBatch:
    """Build a batch's COPY text. A message whose row cannot even be built is stored as an
    `unstorable` rejection at once."""
    lines: tuple[list[str], list[str], list[str]] = ([], [], [])
    rejected_codes: Counter[str] = Counter()
    set_aside: list[tuple[KafkaMessage, Rejection]] = []
    lowest: dict[tuple[str, int], int] = {}
    highest: dict[tuple[str, int], int] = {}
    counts: dict[tuple[str, int], int] = {}
    received = received_at.isoformat()
    for message, outcome in zip(messages, outcomes, strict=True):
        key = (message.topic, message.partition)
        if key not in lowest:
            lowest[key] = highest[key] = message.offset
            counts[key] = 1
        else:
            counts[key] += 1
            if message.offset < lowest[key]:
                lowest[key] = message.offset
            elif message.offset > highest[key]:
                highest[key] = message.offset
        stored = outcome
        try:
            table, line = copy_row(message, stored, reference, received)
        except Exception as error:  # a row we cannot even build: keep the message raw
            stored = unstorable(outcome, classify(error))
            set_aside.append((message, stored))
            table, line = copy_row(message, stored, reference, received)
        lines[table].append(line)
        if isinstance(stored, Rejection):
            rejected_codes[stored.code.value] += 1
    ratings, requests, rejected = ("".join(table).encode("utf-8") for table in lines)
    result = WriteResult(len(lines[0]), len(lines[1]), rejected_codes, set_aside=tuple(set_aside))
    return CopyBatch(
        messages,
        outcomes,
        reference,
        received_at,
        (ratings, requests, rejected),
        result,
        lowest,
        highest,
        counts,
    )


def unstorable(outcome: Outcome, error: Exception) -> Rejection:
    """What a message that PostgreSQL (or building its row) refused becomes: a rejection that
    keeps what the validator made of it and the error, kept with the raw bytes."""
    return Rejection(
        Reason.UNSTORABLE, storable_text(f"{_describe(outcome)}; not storable as such: {error}")
    )


def _describe(outcome: Outcome) -> str:
    if isinstance(outcome, Rejection):
        return str(outcome)
    kind = "rating" if isinstance(outcome, RatingEvent) else "request"
    return f"{kind} {outcome}"


def classified_error(conn: Connection, error: Exception) -> PipelineError:
    """What to do about `error`. Whatever was raised, a connection that broke meanwhile (or
    was severed) says why: psycopg2 may report a server shutting down mid-COPY as a
    SystemError of its own."""
    if conn.closed:
        return TransientError(f"database connection lost ({error})")
    return classify(error)


def _offsets_elsewhere(
    cur: Cursor,
    stored_through: Mapping[tuple[str, int], int],
    locked: Mapping[tuple[str, int], int],
) -> dict[tuple[str, int], int]:
    """The database's offsets of the partitions this run stored outside the batch (`locked`),
    0 for a row it no longer has: a partition that lost commits must not wait for its own next
    message to be loaded again (a quiet kiosk's may not come for hours). Read without a lock:
    another member may own them now, and only ever moves them forward."""
    others = [key for key in stored_through if key not in locked]
    if not others:
        return {}
    cur.execute(
        "SELECT v.kafka_topic, v.kafka_partition, coalesce(o.next_offset, 0)"
        " FROM unnest(%s::text[], %s::int[]) AS v (kafka_topic, kafka_partition)"
        " LEFT JOIN kafka_offset AS o USING (kafka_topic, kafka_partition)",
        ([topic for topic, _ in others], [partition for _, partition in others]),
    )
    return {(topic, partition): offset for topic, partition, offset in cur.fetchall()}


def _require_same_topic(topic: str, topic_id: str, stored_id: str | None) -> None:
    """Offsets recorded for another topic of the same name must not be applied to this one
    (rows from before ids were recorded hold None, and are checked by their watermarks)."""
    if stored_id is not None and stored_id != topic_id:
        raise FatalError(
            f"topic {topic!r} is not the one loaded before (id {topic_id}, the database"
            f" holds offsets of id {stored_id}): it was deleted and recreated. Reset the"
            " database (`python -m stack schema --reset`) or use a new topic",
            ExitCode.TOPIC_MISSING,
        )


def copy_row(
    message: KafkaMessage, outcome: Outcome, reference: Reference, received: str
) -> tuple[int, str]:
    """The table (0 ratings, 1 requests, 2 rejected, as in `COPY_STATEMENTS`) and the COPY
    text line that stores one message."""
    coordinates = f"{message.topic}\t{message.partition}\t{message.offset}\n"
    if isinstance(outcome, RatingEvent):
        exhibition = reference.exhibition_ids[outcome.exhibition_public_id]
        rating = reference.rating_ids[outcome.rating_value]
        return 0, f"{exhibition}\t{rating}\t{_utc(outcome.at)}\t{coordinates}"
    if isinstance(outcome, RequestEvent):
        exhibition = reference.exhibition_ids[outcome.exhibition_public_id]
        request = reference.request_ids[outcome.request_value]
        return 1, f"{exhibition}\t{request}\t{_utc(outcome.at)}\t{coordinates}"
    return 2, _rejected_row(message, outcome, reference, received, coordinates)


def _utc(at: datetime) -> str:
    """The instant in UTC: RFC 3339 allows offsets up to +-23:59, PostgreSQL under 16 hours,
    and timestamptz keeps only the instant anyway."""
    return at.astimezone(UTC).isoformat()


def _rejected_row(
    message: KafkaMessage,
    rejection: Rejection,
    reference: Reference,
    received: str,
    coordinates: str,
) -> str:
    """Never raises: it is also how a message whose own row failed is kept."""
    raw = "\\N" if message.value is None else "\\\\x" + message.value.hex()
    reason = storable_text(rejection.detail).translate(_COPY_ESCAPES)
    kafka_time = _kafka_time(message.timestamp_ms)
    named = named_exhibition(message.value, reference) or "\\N"  # a public id: no escapes
    return (
        f"{raw}\t{rejection.code.value}\t{reason}\t{kafka_time}\t{received}\t{named}\t{coordinates}"
    )


def _kafka_time(timestamp_ms: int | None) -> str:
    """The record's timestamp for COPY, or NULL when there is none or it is beyond what a
    timestamp can hold (a producer may send any 64-bit number)."""
    if timestamp_ms is None:
        return "\\N"
    try:  # whole milliseconds: a float of seconds misses the millisecond near year 9999
        return (_EPOCH + timedelta(milliseconds=timestamp_ms)).isoformat()
    except OverflowError:
        return "\\N"
