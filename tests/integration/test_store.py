"""The store against real PostgreSQL: replays store nothing twice, rejects keep their bytes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from lmnh.events import KafkaMessage
from lmnh.store import Store, copy_batch
from lmnh.validation import validate
from tests.integration.support import Target, stored_coordinates

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
VALID = b'{"at": "2026-11-20T12:29:17.958630+00:00", "site": "5", "val": 3}'
REQUEST = b'{"at": "2026-11-20T09:22:29+00:00", "site": "3", "val": -1, "type": 1}'
TOPIC_ID = "test-topic-id"


def messages(
    topic: str, values: list[bytes | None], partition: int = 0, first: int = 0
) -> list[KafkaMessage]:
    return [
        KafkaMessage(topic, partition, first + i, value, 1_763_640_000_000)
        for i, value in enumerate(values)
    ]


def write(store: Store, batch: list[KafkaMessage]):  # type: ignore[no-untyped-def]
    reference = store.load_reference()
    outcomes = [validate(m.value, reference, NOW) for m in batch]
    return store.write_batch(copy_batch(batch, outcomes, reference, NOW), TOPIC_ID, {})


def test_a_replayed_batch_is_skipped_whole(target: Target) -> None:
    store = Store(target.settings.database)
    batch = messages(target.topic, [VALID, REQUEST, b"not json"] * 10)
    first = write(store, batch)
    again = write(store, batch)
    assert (first.ratings, first.requests, first.already_stored) == (10, 10, 0)
    assert first.rejected == {"invalid_json": 10}
    assert (again.ratings, again.requests, again.already_stored) == (0, 0, 30)
    assert again.rejected == {}
    overlapping = write(store, messages(target.topic, [VALID] * 40))
    assert (overlapping.ratings, overlapping.already_stored) == (10, 30)
    assert sorted(stored_coordinates(target)) == [(0, offset) for offset in range(40)]
    store.close()


def test_rejected_messages_keep_their_exact_bytes_and_reason(target: Target) -> None:
    hostile = [
        bytes(range(256)),
        b"",
        None,
        b"\x00\t\\\n\r\\N\\x00",
        b"'); DROP TABLE rating_interaction; --",
        b'{"site": "tab\there", "at": 1, "val": 1}',
        b"\xef\xbb\xbf{}",
        b"[" * 5000,
        b"x" * 1_000_000,
    ]
    store = Store(target.settings.database)
    result = write(store, messages(target.topic, hostile))
    assert sum(result.rejected.values()) == len(hostile)
    rows = target.query(
        "SELECT kafka_offset, raw, reason_code, reason FROM rejected_message ORDER BY kafka_offset"
    )
    reference = store.load_reference()
    for (offset, raw, code, reason), value in zip(rows, hostile, strict=True):
        expected = validate(value, reference, NOW)
        assert (None if raw is None else bytes(raw)) == value, f"offset {offset}"
        assert f"{code}: {reason}" == str(expected)
    assert target.query("SELECT count(*) FROM rating_interaction") == [(0,)]
    store.close()


def test_offsets_note_the_high_watermark_and_each_minute_counts_each_message_once(
    target: Target,
) -> None:
    store = Store(target.settings.database)
    reference = store.load_reference()
    batch = messages(target.topic, [VALID, b"not json"] * 5) + messages(
        target.topic, [REQUEST] * 3, partition=1
    )
    outcomes = [validate(m.value, reference, NOW) for m in batch]
    built = copy_batch(batch, outcomes, reference, NOW)
    store.write_batch(built, TOPIC_ID, {0: 25})  # partition 1's watermark not measured yet
    store.write_batch(built, TOPIC_ID, {0: 30, 1: 9})  # a replay: nothing moves
    store.write_batch(copy_batch(batch[:3], outcomes[:3], reference, NOW), TOPIC_ID, {0: 40})
    assert target.query(
        "SELECT kafka_partition, next_offset, high_watermark FROM kafka_offset"
        " WHERE kafka_topic = %s ORDER BY 1",
        (target.topic,),
    ) == [(0, 10, 25), (1, 3, 3)]
    # Each message counted once, the replay not at all, all in this minute.
    assert target.query(
        "SELECT kafka_partition, sum(messages)::int, count(DISTINCT minute)::int"
        " FROM load_minute WHERE kafka_topic = %s GROUP BY 1 ORDER BY 1",
        (target.topic,),
    ) == [(0, 10, 1), (1, 3, 1)]
    store.close()


def test_a_rejected_message_names_the_known_exhibition_its_site_named(target: Target) -> None:
    values = [
        b'{"at": "2026-11-20T12:29:17+00:00", "site": "3", "val": 9}',  # a bad val at site 3
        b'{"site": "5", "at": "not a time", "val": 1}',  # another layout, a bad time
        b'{"at": "2026-11-20T12:29:17+00:00", "site": "77", "val": 1}',  # no such site
        b'{"at": "2026-11-20T12:29:17+00:00", "site": 3, "val": 1}',  # not the site's text
        b'{"site": "3", "site": "4"}',  # ambiguous
        b"\xff{}",
        None,
    ]
    store = Store(target.settings.database)
    write(store, messages(target.topic, values))
    assert target.query(
        "SELECT named_exhibition FROM rejected_message WHERE kafka_topic = %s"
        " ORDER BY kafka_offset",
        (target.topic,),
    ) == [("EXH_03",), ("EXH_05",), (None,), (None,), (None,), (None,), (None,)]
    store.close()


def test_two_writers_racing_on_one_partition_store_each_message_once(target: Target) -> None:
    """Two processes may briefly both hold a partition during a rebalance."""
    batch = messages(target.topic, [VALID, REQUEST, b"{}"] * 500, partition=2)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer() -> None:
        store = Store(target.settings.database)
        try:
            barrier.wait()
            write(store, batch)
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            store.close()

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    coordinates = stored_coordinates(target)
    assert sorted(coordinates) == [(2, offset) for offset in range(1500)]
