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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg2.extensions import connection as Connection

from lmnh.config import DatabaseSettings
from lmnh.database import connect, require_schema
from lmnh.errors import TransientError
from lmnh.events import KafkaMessage, Outcome, RatingEvent, Rejection, RequestEvent
from lmnh.reference import Reference

log = logging.getLogger(__name__)

# Bytes handed to COPY per read. Each read re-takes the GIL, which the validating main thread
# holds for up to the switch interval (5 ms): psycopg2's 8 KiB default stalls the writer.
_COPY_CHUNK = 4 << 20
# Where copy_row's lines go: 0 ratings, 1 requests, 2 rejected.
COPY_STATEMENTS = (
    "COPY rating_interaction (exhibition_id, rating_id, event_at, kafka_topic, kafka_partition,"
    " kafka_offset) FROM STDIN",
    "COPY request_interaction (exhibition_id, request_id, event_at, kafka_topic,"
    " kafka_partition, kafka_offset) FROM STDIN",
    "COPY rejected_message (raw, reason_code, reason, kafka_timestamp, received_at,"
    " kafka_topic, kafka_partition, kafka_offset) FROM STDIN",
)

# COPY's text format: backslash, tab and line breaks are escaped; NUL cannot be stored in text.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": ""})


@dataclass(frozen=True, slots=True)
class WriteResult:
    ratings: int
    requests: int
    rejected: Counter[str]  # by reason code
    already_stored: int  # replayed messages skipped because an earlier run stored them


class Store:
    """PostgreSQL access for the pipeline: one connection per thread that uses it (the
    pipeline reads reference data while its writer thread stores the previous batch), each
    opened on demand and reopened after a failure."""

    def __init__(self, db: DatabaseSettings) -> None:
        self._db = db
        self._connections: dict[int, Connection] = {}
        self._lock = threading.Lock()

    def _connection(self) -> Connection:
        thread = threading.get_ident()
        with self._lock:
            conn = self._connections.get(thread)
        if conn is None or conn.closed:
            conn = connect(self._db, application_name="lmnh-pipeline")
            with self._lock:
                self._connections[thread] = conn
        return conn

    def check(self, wait_s: float) -> None:
        """Wait up to `wait_s` for the database to accept us, then require the schema.

        A server that is still starting is waited for; one that stays away, refuses the login
        or lacks the schema is reported with a clear error.
        """
        deadline = time.monotonic() + wait_s
        delay = 0.5
        while True:
            try:
                conn = self._connection()
                break
            except TransientError as error:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s; waiting up to %.0f s", error, deadline - time.monotonic())
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        require_schema(conn)

    def reset_connection(self) -> None:
        """Drop this thread's connection after an error; its next call opens a fresh one."""
        with self._lock:
            conn = self._connections.pop(threading.get_ident(), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            conn.close()

    def load_reference(self) -> Reference:
        conn = self._connection()
        with conn, conn.cursor() as cur:
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

    def stored_offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The next offset to load for each partition that has been loaded before."""
        conn = self._connection()
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT kafka_partition, next_offset FROM kafka_offset"
                " WHERE kafka_topic = %s AND kafka_partition = ANY(%s)",
                (topic, list(partitions)),
            )
            return dict(cur.fetchall())

    def write_batch(
        self,
        messages: Sequence[KafkaMessage],
        outcomes: Sequence[Outcome],
        reference: Reference,
        received_at: datetime,
    ) -> WriteResult:
        """Store a batch in one transaction and advance its partitions' offsets."""
        conn = self._connection()
        highest: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic, message.partition)
            highest[key] = max(highest.get(key, -1), message.offset)
        topics = [topic for topic, _ in highest]
        partitions = [partition for _, partition in highest]

        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO kafka_offset (kafka_topic, kafka_partition, next_offset)"
                " SELECT * , 0 FROM unnest(%s::text[], %s::int[])"
                " ON CONFLICT DO NOTHING",
                (topics, partitions),
            )
            # The row lock serialises two processes that briefly both hold a partition.
            cur.execute(
                "SELECT kafka_topic, kafka_partition, next_offset FROM kafka_offset"
                " WHERE (kafka_topic, kafka_partition) IN"
                " (SELECT * FROM unnest(%s::text[], %s::int[]))"
                " ORDER BY kafka_topic, kafka_partition FOR UPDATE",
                (topics, partitions),
            )
            next_offset = {(topic, partition): offset for topic, partition, offset in cur}

            lines: tuple[list[str], list[str], list[str]] = ([], [], [])
            rejected_codes: Counter[str] = Counter()
            already_stored = 0
            received = received_at.isoformat()
            for message, outcome in zip(messages, outcomes, strict=True):
                if message.offset < next_offset[(message.topic, message.partition)]:
                    already_stored += 1
                    continue
                table, line = copy_row(message, outcome, reference, received)
                lines[table].append(line)
                if isinstance(outcome, Rejection):
                    rejected_codes[outcome.code.value] += 1
            for statement, table_lines in zip(COPY_STATEMENTS, lines, strict=True):
                if table_lines:
                    cur.copy_expert(statement, io.StringIO("".join(table_lines)), _COPY_CHUNK)
            cur.execute(
                "UPDATE kafka_offset AS o SET next_offset = v.next_offset, updated_at = now()"
                " FROM unnest(%s::text[], %s::int[], %s::bigint[])"
                " AS v (kafka_topic, kafka_partition, next_offset)"
                " WHERE o.kafka_topic = v.kafka_topic AND o.kafka_partition = v.kafka_partition"
                " AND o.next_offset < v.next_offset",
                (topics, partitions, [offset + 1 for offset in highest.values()]),
            )
        ratings, requests, _ = lines
        return WriteResult(len(ratings), len(requests), rejected_codes, already_stored)


def copy_row(
    message: KafkaMessage, outcome: Outcome, reference: Reference, received: str
) -> tuple[int, str]:
    """The table (0 ratings, 1 requests, 2 rejected, as in `COPY_STATEMENTS`) and the COPY
    text line that stores one message."""
    coordinates = f"{message.topic}\t{message.partition}\t{message.offset}\n"
    if isinstance(outcome, RatingEvent):
        exhibition = reference.exhibition_ids[outcome.exhibition_public_id]
        rating = reference.rating_ids[outcome.rating_value]
        return 0, f"{exhibition}\t{rating}\t{outcome.at.isoformat()}\t{coordinates}"
    if isinstance(outcome, RequestEvent):
        exhibition = reference.exhibition_ids[outcome.exhibition_public_id]
        request = reference.request_ids[outcome.request_value]
        return 1, f"{exhibition}\t{request}\t{outcome.at.isoformat()}\t{coordinates}"
    return 2, _rejected_row(message, outcome, received, coordinates)


def _rejected_row(
    message: KafkaMessage, rejection: Rejection, received: str, coordinates: str
) -> str:
    raw = "\\N" if message.value is None else "\\\\x" + message.value.hex()
    kafka_time = (
        "\\N"
        if message.timestamp_ms is None
        else datetime.fromtimestamp(message.timestamp_ms / 1000, UTC).isoformat()
    )
    reason = rejection.detail.translate(_COPY_ESCAPES)
    return f"{raw}\t{rejection.code.value}\t{reason}\t{kafka_time}\t{received}\t{coordinates}"
