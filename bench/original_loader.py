"""The original design's loader, re-implemented faithfully as the benchmark's baseline: one
message at a time, each foreign key looked up by its own SELECT every time, one INSERT and
one commit per message. Kept here only to measure against; the product never uses it.

Its functions keep the original's names and shapes (`get_foreign_key`, `insert_interaction`,
`validate_message`, `process_messages`). Two changes, neither of which makes it slower: each
row also carries its Kafka coordinates, so that today's schema (NOT NULL coordinates) takes it,
and a message that is not JSON is logged as invalid where the original would have crashed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from lmnh.config import DatabaseSettings, KafkaSettings
from lmnh.database import connect
from lmnh.kafka_admin import client_config
from lmnh.museum import CLOSES, OPENS

log = logging.getLogger("bench.original_loader")


def configure_consumer(kafka: KafkaSettings, topic: str, group: str) -> Consumer:
    """The original's consumer: a group member with the client's defaults (auto-commit on)."""
    consumer = Consumer(
        {**client_config(kafka), "group.id": group, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    return consumer


def get_foreign_key(cursor: Cursor, table: str, column: str, value: Any, id_type: str) -> int:
    """The id of the row of `table` whose `column` is `value`: one SELECT per call."""
    cursor.execute(
        sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
            sql.Identifier(id_type), sql.Identifier(table), sql.Identifier(column)
        ),
        (value,),
    )
    row = cursor.fetchone()
    if row is None:
        raise LookupError(f"no {table} with {column} = {value!r}")
    return int(row[0])


def insert_interaction(
    cursor: Cursor,
    table: str,
    exhibition_id: int,
    interaction_id: int,
    event_at: str,
    coordinates: tuple[str, int, int],
) -> None:
    """One INSERT into rating_interaction or request_interaction."""
    id_column = "rating_id" if table == "rating_interaction" else "request_id"
    cursor.execute(
        sql.SQL(
            "INSERT INTO {} (exhibition_id, {}, event_at, kafka_topic, kafka_partition,"
            " kafka_offset) VALUES (%s, %s, %s, %s, %s, %s)"
        ).format(sql.Identifier(table), sql.Identifier(id_column)),
        (exhibition_id, interaction_id, event_at, *coordinates),
    )


def log_invalid_message(message: str, reason: str) -> None:
    log.warning("invalid message %s: %s", message, reason)


def validate_message(message: dict[str, Any]) -> tuple[bool, str]:
    """The original's rules, with its known weaknesses kept on purpose, since they are part
    of what is measured: `val` is tested with `in range(-1, 5)`, so `true` and `3.0` pass;
    `site` goes through int(), so "05" and " 5" pass; the time is judged on the message's own
    offset by datetime.fromisoformat, which accepts far more than the feed's format; there is
    no check that the time is not in the future or before the exhibition opened."""
    for key in ("at", "site", "val"):
        if key not in message:
            return False, f"missing key {key}"
    try:
        site = int(message["site"])
    except (TypeError, ValueError):
        return False, f"invalid site {message['site']!r}"
    if site not in range(6):
        return False, f"invalid site {message['site']!r}"
    val = message["val"]
    if val not in range(-1, 5):
        return False, f"invalid val {val!r}"
    if val == -1 and message.get("type") not in (0, 1):
        return False, f"invalid type {message.get('type')!r}"
    try:
        at = datetime.fromisoformat(message["at"])
    except (TypeError, ValueError):
        return False, f"invalid at {message['at']!r}"
    if not OPENS <= at.time() <= CLOSES:
        return False, f"at {message['at']} is outside opening hours"
    return True, ""


@dataclass(slots=True)
class LoaderRun:
    processed: int = 0
    stored: int = 0
    invalid: int = 0
    seconds: float = 0.0  # first message in to last commit, like the pipeline's own rate
    values: list[bytes] = field(default_factory=list)  # for the benchmark's cross-check


def process_messages(
    consumer: Consumer, connection: Connection, cursor: Cursor, message_limit: int
) -> LoaderRun:
    """Poll one message at a time; store each valid one in its own transaction."""
    run = LoaderRun()
    first: float | None = None
    while run.processed < message_limit:
        message = consumer.poll(1)
        if message is None:
            continue
        if message.error() is not None:
            log.warning("Kafka: %s", message.error())
            continue
        if first is None:
            first = time.monotonic()
        run.processed += 1
        raw = message.value() or b""
        run.values.append(raw)
        try:
            data = json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError):
            log_invalid_message(repr(raw), "not JSON")
            run.invalid += 1
            continue
        valid, reason = (
            validate_message(data) if isinstance(data, dict) else (False, "not an object")
        )
        if not valid:
            log_invalid_message(str(data), reason)
            run.invalid += 1
            continue
        exhibition_id = get_foreign_key(
            cursor, "exhibition", "public_id", f"EXH_{int(data['site']):02d}", "exhibition_id"
        )
        coordinates = (message.topic() or "", message.partition() or 0, message.offset() or 0)
        if data["val"] == -1:
            request_id = get_foreign_key(
                cursor, "request", "request_value", data["type"], "request_id"
            )
            insert_interaction(
                cursor, "request_interaction", exhibition_id, request_id, data["at"], coordinates
            )
        else:
            rating_id = get_foreign_key(cursor, "rating", "rating_value", data["val"], "rating_id")
            insert_interaction(
                cursor, "rating_interaction", exhibition_id, rating_id, data["at"], coordinates
            )
        connection.commit()
        run.stored += 1
    run.seconds = time.monotonic() - first if first is not None else 0.0
    return run


def load(
    kafka: KafkaSettings,
    database: DatabaseSettings,
    topic: str,
    group: str,
    message_limit: int,
    logfile: Path,
) -> LoaderRun:
    """Run the original loader over `message_limit` messages, invalid ones logged to
    `logfile`."""
    handler = logging.FileHandler(logfile, encoding="utf-8")
    log.addHandler(handler)
    log.propagate = False
    consumer = configure_consumer(kafka, topic, group)
    connection = connect(database, application_name="lmnh-bench-original")
    try:
        with connection.cursor() as cursor:
            return process_messages(consumer, connection, cursor, message_limit)
    finally:
        connection.close()
        consumer.close()
        log.removeHandler(handler)
        handler.close()
