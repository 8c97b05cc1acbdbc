"""The peers' run in the benchmark: what a user would pick instead of kafka_pipeline.py,
over the same topic, broker and database server, each on a fresh database and group."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.local import BenchError, Progress, Resources
from bench.peers import connect, quix
from bench.peers.harness import PeerResult, Stage
from bench.peers.records import Tally


@dataclass(frozen=True, slots=True)
class Prepared:
    """The peers' tools, ready; what making them took (0 when they were there already)."""

    venv_seconds: float
    jars_seconds: float


def prepare(progress: Progress) -> Prepared:
    """Make Quix's virtualenv and resolve Kafka Connect's jars, each only if missing or out
    of date. Not timed: call it before any measurement."""
    started = time.monotonic()
    made = quix.ensure_venv(progress)
    venv_seconds = time.monotonic() - started if made else 0.0
    if made:
        progress(f"quix: virtualenv made in {venv_seconds:.1f} s")
    started = time.monotonic()
    resolved = connect.resolve_jars(progress)
    jars_seconds = time.monotonic() - started if resolved else 0.0
    if resolved:
        progress(f"connect: jars resolved in {jars_seconds:.1f} s")
    return Prepared(round(venv_seconds, 1), round(jars_seconds, 1))


def run_peers(
    resources: Resources, topic: str, n: int, scratch: Path, progress: Progress
) -> list[PeerResult]:
    """Quix Streams, then Kafka Connect at its defaults, then tuned, over the `n` messages
    of `topic`, on `resources.settings`' broker and database server, once `prepare` has made
    their tools. Their topic, groups and databases are made by `resources`, which removes
    them in its close(); each database is dropped as soon as its figures are taken."""
    enveloped, tally = _reproduce(resources, topic, n, progress)
    results = []
    progress("peer: Quix Streams PostgreSQLSink over the topic")
    stage = Stage(resources, resources.database("peer_quix", schema=False), tally, scratch)
    resources.checkpoint()
    peer = quix.run_quix(stage, topic)
    resources.drop_database(stage.database)
    progress(f"  {_line(peer)}")
    results.append(peer)
    for tuned in (False, True):
        kind = "peer_connect_tuned" if tuned else "peer_connect"
        said = "tuned" if tuned else "defaults"
        progress(f"peer: Kafka Connect + Debezium JDBC sink, {said}, over the enveloped copy")
        stage = Stage(resources, resources.database(kind, schema=False), tally, scratch)
        connect.create_table(stage.database)
        resources.checkpoint()
        peer = connect.run_connect(stage, enveloped, tuned=tuned)
        resources.drop_database(stage.database)
        progress(f"  {_line(peer)}")
        results.append(peer)
    return results


def _reproduce(resources: Resources, topic: str, n: int, progress: Progress) -> tuple[str, Tally]:
    """Kafka Connect's copy of the topic, in the JsonConverter envelope (not timed)."""
    enveloped = resources.topic("peer_envelope")
    progress(f"peers: re-producing {topic} into {enveloped} in the JsonConverter envelope")
    started = time.monotonic()
    tally = connect.reproduce(
        resources.settings.kafka, topic, enveloped, resources.group("peer_envelope")
    )
    if tally.messages != n:
        raise BenchError(f"peers: {topic} holds {tally.messages} messages, not {n}")
    progress(
        f"  {tally.messages:,} messages in {time.monotonic() - started:.1f} s;"
        f" {tally.stored:,} pass the shape check ({tally.typed_requests:,} typed requests)"
    )
    return enveloped, tally


def _line(peer: PeerResult) -> str:
    return (
        f"{peer.messages:,} messages ({peer.rows_expected:,} rows) in {peer.seconds:.1f} s:"
        f" {peer.messages_per_second:,.0f} msg/s; {peer.landed:,} rows landed;"
        f" peak RSS {peer.peak_rss_kib / 1024:,.0f} MiB; first row {peer.startup_seconds:.1f} s"
        " after start"
    )
