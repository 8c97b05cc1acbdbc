"""The benchmark peers' pure parts: the shape check both peers store by, the JsonConverter
envelope, the Connect properties and the figures a timed run gives."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.machine import kafka_version
from bench.peers.harness import POLL_S, Description, Timed, result
from bench.peers.quix import LOCK, QUIX_VERSION
from bench.peers.records import (
    CONNECTOR_CLASS,
    FLAG_HEADER,
    TABLE,
    TUNED,
    Tally,
    connector_properties,
    digest,
    envelope,
    java_properties,
    jdbc_url,
    shape_ok,
    worker_properties,
)
from lmnh.config import DatabaseSettings, Secret

AT = "2025-03-11T12:29:17.958630+00:00"
DATABASE = DatabaseSettings(
    host="127.0.0.1",
    port=55432,
    name="bench_peer_connect_1",
    username="lmnh",
    password=Secret("s3cret"),
    sslmode=None,
    local=True,
)


# The shape check ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"at": AT, "site": "5", "val": 3},
        {"at": AT, "site": "3", "val": -1, "type": 0},
        {"at": AT, "site": "3", "val": 4, "type": None},
        # Only the shape: values the feed's rules refuse still pass.
        {"at": "yesterday", "site": "ERR", "val": 9, "type": 7},
        {"at": AT, "site": "1", "val": -1},
        {"at": AT, "site": "1", "val": 2**63 - 1, "extra": [1]},
    ],
)
def test_shape_ok_takes_the_four_keys_of_the_right_types(value: object) -> None:
    assert shape_ok(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        "text",
        3,
        {"site": "5", "val": 3},
        {"at": AT, "val": 3},
        {"at": AT, "site": "5"},
        {"at": None, "site": "5", "val": 3},
        {"at": AT, "site": 5, "val": 3},
        {"at": AT, "site": "5", "val": "3"},
        {"at": AT, "site": "5", "val": None},
        {"at": AT, "site": "5", "val": 3.0},
        {"at": AT, "site": "5", "val": True},
        {"at": AT, "site": "5", "val": 2**63},
        {"at": AT, "site": "5", "val": -(2**63) - 1},
        {"at": AT, "site": "5", "val": -1, "type": "INF"},
        {"at": AT, "site": "5", "val": -1, "type": False},
    ],
)
def test_shape_ok_refuses_anything_else(value: object) -> None:
    assert not shape_ok(value)


# The envelope ------------------------------------------------------------------------------


def test_a_rating_is_enveloped_with_the_kiosk_schema_and_a_null_type() -> None:
    wrapped = envelope(json.dumps({"at": AT, "site": "5", "val": 3}).encode())
    body = json.loads(wrapped.value)
    assert wrapped.stored
    assert not wrapped.typed_request
    assert body["payload"] == {"at": AT, "site": "5", "val": 3, "type": None}
    schema = body["schema"]
    assert schema["type"] == "struct"
    assert [(f["field"], f["type"], f["optional"]) for f in schema["fields"]] == [
        ("at", "string", False),
        ("site", "string", False),
        ("val", "int64", False),
        ("type", "int64", True),
    ]


def test_a_request_with_a_type_is_a_typed_request() -> None:
    wrapped = envelope(b'{"at": "%s", "site": "3", "val": -1, "type": 1}' % AT.encode())
    assert wrapped.stored
    assert wrapped.typed_request
    assert json.loads(wrapped.value)["payload"]["type"] == 1


def test_text_that_utf8_cannot_hold_stays_escaped() -> None:
    wrapped = envelope(b'{"at": "\\ud800", "site": "\\u00e9", "val": 1}')
    assert wrapped.stored
    assert wrapped.value.isascii()
    assert json.loads(wrapped.value)["payload"]["at"] == "\ud800"


def test_extra_keys_are_left_out_of_the_payload() -> None:
    wrapped = envelope(json.dumps({"at": AT, "site": "0", "val": 0, "kiosk": 7}).encode())
    assert set(json.loads(wrapped.value)["payload"]) == {"at", "site", "val", "type"}


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b'{"at": "x", "val": 3}', '{"at": "x", "val": 3}'),
        (b'{"at": "x", "site": "1", "val": "ERR"}', '{"at": "x", "site": "1", "val": "ERR"}'),
        (b"not json", "not json"),
        (b"\xff\xfe{}", "\ufffd\ufffd{}"),
        (b"[" * 100_000, "[" * 100_000),
        (None, None),
    ],
)
def test_a_misshapen_message_travels_as_its_text(raw: bytes | None, text: str | None) -> None:
    wrapped = envelope(raw)
    body = json.loads(wrapped.value)
    assert not wrapped.stored
    assert not wrapped.typed_request
    assert body == {"schema": {"type": "string", "optional": True}, "payload": text}


def test_the_tally_counts_what_the_peers_are_meant_to_store() -> None:
    tally = Tally()
    for raw in (
        b'{"at": "x", "site": "1", "val": 3}',
        b'{"at": "x", "site": "1", "val": -1, "type": 0}',
        b'{"at": "x", "site": "1", "val": -1}',
        b'{"at": "x", "site": "1"}',
    ):
        tally.add(envelope(raw))
    assert (tally.messages, tally.stored, tally.typed_requests) == (4, 3, 1)


# Properties --------------------------------------------------------------------------------


def test_java_properties_escape_what_java_reads_specially() -> None:
    text = java_properties(
        {
            "plain.key": "http://127.0.0.1:0",
            "a key": " leading space, = and # kept",
            "path": "C:\\dir\\file",
            "lines": "one\ntwo\tthree",
            "unicode": "café ✓",
        }
    )
    assert text.splitlines() == [
        "plain.key=http\\://127.0.0.1\\:0",
        "a\\ key=\\ leading space, \\= and \\# kept",
        "path=C\\:\\\\dir\\\\file",
        "lines=one\\ntwo\\tthree",
        "unicode=caf\\u00e9 \\u2713",
    ]
    assert text.isascii()


def test_a_character_beyond_the_basic_plane_is_two_utf16_escapes() -> None:
    assert java_properties({"k": "\U0001f40b"}) == "k=\\ud83d\\udc0b\n"


def test_the_worker_reads_schemad_json_and_finds_plugins_by_their_manifests() -> None:
    worker = worker_properties("127.0.0.1:19092", "/plugins", "/scratch/offsets")
    assert worker["bootstrap.servers"] == "127.0.0.1:19092"
    assert worker["value.converter"] == "org.apache.kafka.connect.json.JsonConverter"
    assert worker["value.converter.schemas.enable"] == "true"
    assert worker["plugin.path"] == "/plugins"
    assert worker["plugin.discovery"] == "service_load"
    assert worker["offset.storage.file.filename"] == "/scratch/offsets"


def test_the_default_connector_keeps_debeziums_defaults() -> None:
    properties = connector_properties("peer", "enveloped", "group-1", DATABASE, tuned=False)
    assert properties["connector.class"] == CONNECTOR_CLASS
    assert properties["topics"] == "enveloped"
    assert properties["collection.name.format"] == TABLE
    assert properties["schema.evolution"] == "none"
    assert properties["consumer.override.group.id"] == "group-1"
    assert properties["connection.url"] == "jdbc:postgresql://127.0.0.1:55432/bench_peer_connect_1"
    assert properties["connection.username"] == "lmnh"
    assert properties["connection.password"] == "s3cret"
    assert not set(TUNED) & set(properties)
    assert properties["transforms.dropMisshapen.type"].endswith(".transforms.Filter")
    assert properties["transforms.dropMisshapen.predicate"] == "misshapen"
    assert properties["predicates.misshapen.type"].endswith(".predicates.HasHeaderKey")
    assert properties["predicates.misshapen.name"] == FLAG_HEADER


def test_the_tuned_connector_differs_only_in_batches_and_the_url() -> None:
    default = connector_properties("peer", "enveloped", "group-1", DATABASE, tuned=False)
    tuned = connector_properties("peer", "enveloped", "group-1", DATABASE, tuned=True)
    changed = {key for key in tuned if tuned[key] != default.get(key)}
    assert changed == {"batch.size", "consumer.override.max.poll.records", "connection.url"}
    assert tuned["batch.size"] == "10000"
    assert tuned["consumer.override.max.poll.records"] == "10000"
    assert tuned["connection.url"].endswith("?reWriteBatchedInserts=true")


def test_the_jdbc_url_quotes_the_name_and_carries_sslmode() -> None:
    database = DatabaseSettings(
        host="db.example",
        port=5432,
        name="odd/name",
        username="u",
        password=Secret("p"),
        sslmode="require",
        local=False,
    )
    assert jdbc_url(database, tuned=True) == (
        "jdbc:postgresql://db.example:5432/odd%2Fname?sslmode=require&reWriteBatchedInserts=true"
    )


POM = """<?xml version="1.0"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <properties>
    <kafka.version> 4.3.1 </kafka.version>
  </properties>
</project>
"""


def test_the_worker_runs_the_brokers_kafka_version() -> None:
    assert kafka_version(POM) == "4.3.1"


def test_a_pom_without_kafka_version_is_refused() -> None:
    with pytest.raises(ValueError, match=r"kafka\.version"):
        kafka_version(POM.replace("kafka.version", "other.version"))


def test_the_digest_tells_apart_lists_that_concatenate_alike() -> None:
    assert digest(b"ab", b"c") != digest(b"a", b"bc")
    assert digest(b"ab", b"c") == digest(b"ab", b"c")


def test_the_quix_label_names_the_locked_version() -> None:
    assert f"\nquixstreams=={QUIX_VERSION} " in LOCK.read_text(encoding="utf-8")


# Figures -----------------------------------------------------------------------------------


def timed(seconds: float, **changes: Any) -> Timed:
    figures: dict[str, Any] = {
        "messages": 1_000_000,
        "expected": 940_000,
        "seconds": seconds,
        "startup_seconds": 6.5,
        "peak_rss_kib": 450_000,
        "landed": 940_000,
        "polls": 200,
        "counts": 150,
        "mean_poll_ms": 12.5,
    }
    figures.update(changes)
    return Timed(**figures)


DESCRIBED = Description(key="connect", label="Connect", per_message="a row", how="standalone")


def test_the_rate_is_messages_over_first_to_last_row() -> None:
    peer = result(timed(40.0), DESCRIBED)
    assert peer.messages_per_second == 25_000.0
    assert peer.rows_per_second == 23_500.0
    assert (peer.messages, peer.rows_expected, peer.landed) == (1_000_000, 940_000, 940_000)
    assert peer.delivery == "at least once"
    assert peer.wall_seconds == 46.5
    assert peer.wall_messages_per_second == round(1_000_000 / 46.5, 1)
    assert peer.how.startswith("standalone; timed from the answer of the first poll")


def test_rows_seen_in_one_poll_are_given_one_poll_interval() -> None:
    peer = result(timed(0.0), DESCRIBED)
    assert peer.seconds == POLL_S
    assert peer.messages_per_second == 1_000_000 / POLL_S
