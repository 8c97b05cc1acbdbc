"""The peers' pure logic: which messages a peer stores, the JsonConverter envelope that Kafka
Connect's sink needs, and the worker's and connector's properties. No I/O."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from bench.peers.quix_app import shape_ok
from lmnh.config import DatabaseSettings
from lmnh.validation import REQUEST_MARKER

__all__ = [
    "CONNECTOR_CLASS",
    "FLAG_HEADER",
    "REQUEST_MARKER",
    "TABLE",
    "TUNED",
    "Enveloped",
    "Tally",
    "connector_properties",
    "digest",
    "envelope",
    "java_properties",
    "jdbc_url",
    "shape_ok",
    "worker_properties",
]

TABLE = "kiosk_message"  # every peer's one table, in a database of its own
# Set on a re-produced message that fails the shape check: Connect's Filter drops it by this.
FLAG_HEADER = "lmnh-bench-misshapen"
CONNECTOR_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
# The tuned run's changes to the connector's defaults; pgjdbc's reWriteBatchedInserts goes
# in the JDBC URL (`jdbc_url(..., tuned=True)`).
TUNED = {"batch.size": "10000", "consumer.override.max.poll.records": "10000"}

# The Connect schema of a stored kiosk message: the columns of TABLE.
_KIOSK_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "name": "lmnh.kiosk_message",
    "optional": False,
    "fields": [
        {"field": "at", "type": "string", "optional": False},
        {"field": "site", "type": "string", "optional": False},
        {"field": "val", "type": "int64", "optional": False},
        {"field": "type", "type": "int64", "optional": True},
    ],
}
# A misshapen message travels as its own text, so that the converter accepts it before the
# Filter drops it, as it would a flagged record in a real pipeline.
_TEXT_SCHEMA = {"type": "string", "optional": True}


@dataclass(frozen=True, slots=True)
class Enveloped:
    """One kiosk message re-produced for Kafka Connect."""

    value: bytes  # the JsonConverter envelope: {"schema": ..., "payload": ...}
    stored: bool  # it passes the shape check: a peer is meant to store it
    typed_request: bool  # stored, a request (val -1) with a type: Quix's sink may lose it


@dataclass(slots=True)
class Tally:
    """What the peers are meant to store of a topic, counted while re-producing it."""

    messages: int = 0
    stored: int = 0
    typed_requests: int = 0

    def add(self, enveloped: Enveloped) -> None:
        self.messages += 1
        self.stored += enveloped.stored
        self.typed_requests += enveloped.typed_request


def envelope(raw: bytes | None) -> Enveloped:
    """The message as JsonConverter (schemas.enable=true) reads it: its four fields under
    the kiosk schema if it has the shape, else its text under a string schema (the caller
    flags it with FLAG_HEADER, for the Filter)."""
    message = _decode(raw)
    if isinstance(message, dict) and shape_ok(message):
        kind = message.get("type")
        payload = {
            "at": message["at"],
            "site": message["site"],
            "val": message["val"],
            "type": kind,
        }
        body = {"schema": _KIOSK_SCHEMA, "payload": payload}
        typed_request = message["val"] == REQUEST_MARKER and kind is not None
        return Enveloped(_dump(body), stored=True, typed_request=typed_request)
    text = None if raw is None else raw.decode("utf-8", errors="replace")
    return Enveloped(
        _dump({"schema": _TEXT_SCHEMA, "payload": text}), stored=False, typed_request=False
    )


def _decode(raw: bytes | None) -> object:
    """The JSON value of the message, or None for anything that is not strict UTF-8 JSON."""
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _dump(body: Mapping[str, Any]) -> bytes:
    """Compact JSON, ASCII only: a lone surrogate in a message's text stays an escape."""
    return json.dumps(body, separators=(",", ":")).encode()


def java_properties(entries: Mapping[str, str]) -> str:
    """A .properties file that java.util.Properties reads back as `entries` exactly: the
    characters it treats specially are escaped, and anything beyond ASCII as \\uXXXX (it
    reads the file as ISO-8859-1)."""
    return "".join(
        f"{_escape(key, True)}={_escape(value, False)}\n" for key, value in entries.items()
    )


_SPECIAL = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}
_SEPARATORS = "=:#!"
_ASCII_PRINTABLE_MAX = 0x7E


def _escape(text: str, is_key: bool) -> str:
    out = []
    for index, char in enumerate(text):
        if char in _SPECIAL:
            out.append(_SPECIAL[char])
        elif char == " " and (is_key or index == 0):
            out.append("\\ ")
        elif char in _SEPARATORS:
            out.append("\\" + char)
        elif ord(char) < ord(" ") or ord(char) > _ASCII_PRINTABLE_MAX:
            out.extend(f"\\u{unit:04x}" for unit in _utf16_units(char))
        else:
            out.append(char)
    return "".join(out)


def _utf16_units(char: str) -> list[int]:
    data = char.encode("utf-16-be", errors="surrogatepass")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def worker_properties(
    bootstrap_servers: str, plugin_path: str, offsets_file: str
) -> dict[str, str]:
    """A standalone worker at its defaults, but for what a sink of schema'd JSON needs."""
    return {
        "bootstrap.servers": bootstrap_servers,
        # The kiosk messages have no key.
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "true",
        # Required by a standalone worker; a sink's offsets are its consumer group's.
        "offset.storage.file.filename": offsets_file,
        "plugin.path": plugin_path,
        # Reads the plugins' service manifests instead of scanning every class: start-up
        # about 6 s and 0.4 GiB instead of 15 s and 1.3 GiB.
        "plugin.discovery": "service_load",
        # The REST API is not used; any free port on loopback.
        "listeners": "http://127.0.0.1:0",
    }


def jdbc_url(database: DatabaseSettings, *, tuned: bool) -> str:
    """pgjdbc's URL of `database`; tuned, pgjdbc rewrites each batch of INSERTs into
    multi-row INSERTs."""
    url = f"jdbc:postgresql://{database.host}:{database.port}/{quote(database.name, safe='')}"
    options = {"sslmode": database.sslmode} if database.sslmode else {}
    if tuned:
        options["reWriteBatchedInserts"] = "true"
    return f"{url}?{urlencode(options)}" if options else url


def connector_properties(
    name: str, topic: str, group: str, database: DatabaseSettings, *, tuned: bool
) -> dict[str, str]:
    """The Debezium JDBC sink at its defaults (or TUNED), writing TABLE, which the benchmark
    creates (schema.evolution=none, the default), dropping the flagged messages with Kafka's
    own Filter transform and HasHeaderKey predicate."""
    properties = {
        "name": name,
        "connector.class": CONNECTOR_CLASS,
        "tasks.max": "1",
        "topics": topic,
        "connection.url": jdbc_url(database, tuned=tuned),
        "connection.username": database.username,
        "connection.password": database.password.reveal(),
        "collection.name.format": TABLE,
        "schema.evolution": "none",
        # A group the benchmark names and removes, instead of "connect-<name>".
        "consumer.override.group.id": group,
        "transforms": "dropMisshapen",
        "transforms.dropMisshapen.type": "org.apache.kafka.connect.transforms.Filter",
        "transforms.dropMisshapen.predicate": "misshapen",
        "predicates": "misshapen",
        "predicates.misshapen.type": "org.apache.kafka.connect.transforms.predicates.HasHeaderKey",
        "predicates.misshapen.name": FLAG_HEADER,
    }
    if tuned:
        properties.update(TUNED)
    return properties


def digest(*parts: bytes) -> str:
    """One SHA-256 over `parts`, each length-prefixed so that no two lists share a digest."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()
