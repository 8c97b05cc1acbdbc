"""The Kafka Connect peer: a standalone worker of Apache Kafka's own jars (the broker's
version) with the Debezium JDBC sink, at its defaults or tuned.

Its jars come from Maven Central like the broker's (see bench/peers/pom.xml), into
`.stack/peers/connect/`: `libs/` (the worker's classpath) and `plugins/` (Debezium's own plugin
archive, unpacked: its POM does not resolve as a plain dependency). Resolved again only when
the POM, the Maven settings, the broker's version or the plugin's coordinates change.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer
from psycopg2 import sql

from bench.local import BenchError, Progress, child_env, read_topic
from bench.machine import kafka_version
from bench.peers.harness import (
    Description,
    PeerProcess,
    PeerResult,
    Stage,
    result,
    run_and_time,
)
from bench.peers.records import (
    FLAG_HEADER,
    TABLE,
    TUNED,
    Tally,
    connector_properties,
    digest,
    envelope,
    java_properties,
    worker_properties,
)
from lmnh.config import DatabaseSettings, KafkaSettings
from lmnh.database import execute_outside_transaction
from lmnh.kafka_admin import client_config
from stack import STACK_DIR
from stack.kafka_broker import COPY_DEPENDENCIES
from stack.kafka_broker import POM as BROKER_POM

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
MAVEN_SETTINGS = HERE / "maven-settings.xml"
LOG4J2 = HERE / "connect-log4j2.properties"

CONNECT_DIR = STACK_DIR / "peers" / "connect"
LIBS = CONNECT_DIR / "libs"
PLUGINS = CONNECT_DIR / "plugins"
RESOLVED_DIGEST = CONNECT_DIR / "resolved-sha256"

DEBEZIUM_VERSION = "3.6.0.Final"
DEBEZIUM_PLUGIN = f"io.debezium:debezium-connector-jdbc:{DEBEZIUM_VERSION}:tar.gz:plugin"
COPY_ARTIFACT = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy"
MAIN_CLASS = "org.apache.kafka.connect.cli.ConnectStandalone"
# What Kafka's own connect-standalone.sh gives the JVM (its default KAFKA_HEAP_OPTS and
# KAFKA_JVM_PERFORMANCE_OPTS), so that the worker runs as its users start it.
JVM_OPTIONS = (
    "-Xms256M",
    "-Xmx2G",
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
)
PRODUCE_TIMEOUT_S = 120.0

PER_MESSAGE = (
    "JsonConverter parses the envelope into a Struct, Filter drops the flagged, one INSERT"
    " row in a JDBC batch into a bare table; shape check done before, untimed"
)


def broker_version() -> str:
    """The broker's Kafka version, from stack/pom.xml: the worker runs the same."""
    return kafka_version(BROKER_POM.read_text(encoding="utf-8"))


def resolve_jars(progress: Progress) -> bool:
    """Copy the worker's jars into `libs/` and unpack the Debezium plugin into `plugins/`,
    unless nothing changed since; True if it resolved them."""
    version = broker_version()
    wanted = digest(
        POM.read_bytes(), MAVEN_SETTINGS.read_bytes(), version.encode(), DEBEZIUM_PLUGIN.encode()
    )
    stored = RESOLVED_DIGEST.read_text().strip() if RESOLVED_DIGEST.is_file() else None
    if stored == wanted and any(LIBS.glob("*.jar")) and any(PLUGINS.glob("*/*.jar")):
        return False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BenchError("Maven (mvn) not found: install it with `sudo apt-get install maven`")
    progress(
        f"connect: resolving Kafka Connect {version} and the Debezium JDBC sink"
        f" {DEBEZIUM_VERSION} with Maven (the first run downloads about 95 MB)"
    )
    RESOLVED_DIGEST.unlink(missing_ok=True)
    shutil.rmtree(LIBS, ignore_errors=True)
    shutil.rmtree(PLUGINS, ignore_errors=True)
    maven = [mvn, "-B", "-q", "-s", str(MAVEN_SETTINGS)]
    copy_libs = [*maven, "-f", str(POM), COPY_DEPENDENCIES, "-DincludeScope=runtime"]
    copy_libs += [f"-DoutputDirectory={LIBS}", f"-Dkafka.version={version}"]
    _maven(copy_libs, "the Kafka Connect worker's jars")
    with tempfile.TemporaryDirectory(prefix="lmnh-bench-debezium-") as download:
        _maven(
            [
                *maven,
                COPY_ARTIFACT,
                f"-Dartifact={DEBEZIUM_PLUGIN}",
                f"-DoutputDirectory={download}",
            ],
            "the Debezium JDBC sink's plugin archive",
        )
        PLUGINS.mkdir(parents=True)
        for archive in Path(download).glob("*.tar.gz"):
            with tarfile.open(archive) as plugin:
                plugin.extractall(PLUGINS, filter="data")
    if not any(PLUGINS.glob("*/*.jar")):
        raise BenchError(f"the Debezium plugin archive held no jars ({DEBEZIUM_PLUGIN})")
    RESOLVED_DIGEST.write_text(wanted + "\n")
    return True


def _maven(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        output = (done.stdout + done.stderr).splitlines()
        reason = next(
            (line for line in output if line.startswith("[ERROR]")), f"exit {done.returncode}"
        )
        raise BenchError(f"mvn could not fetch {what}: {reason}; check access to Maven Central")


def reproduce(kafka: KafkaSettings, source: str, target: str, group: str) -> Tally:
    """Copy every message of `source` into `target`, partition for partition, wrapped in the
    JsonConverter envelope; those that fail the shape check carry FLAG_HEADER. Returns what
    the peers are meant to store."""
    producer = Producer(
        {
            **client_config(kafka),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 20,
        }
    )
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error.str())

    flagged: list[tuple[str, str | bytes | None]] = [(FLAG_HEADER, b"1")]
    tally = Tally()
    for message in read_topic(kafka, source, group):
        wrapped = envelope(message.value)
        tally.add(wrapped)
        while True:
            try:
                producer.produce(
                    target,
                    wrapped.value,
                    partition=message.partition,
                    headers=None if wrapped.stored else flagged,
                    on_delivery=delivered,
                )
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
        producer.poll(0)
        if failures:
            break
    left = producer.flush(PRODUCE_TIMEOUT_S)
    if failures or left:
        reason = failures[0] if failures else f"{left} messages unsent"
        raise BenchError(f"re-producing {source} into {target} failed: {reason}")
    return tally


def create_table(database: DatabaseSettings) -> None:
    """The sink's table, made by the benchmark so that the connector keeps its default
    schema.evolution=none: the four fields of the envelope, no key, no index."""
    statement = sql.SQL(
        "CREATE TABLE {} ({} text NOT NULL, {} text NOT NULL, {} bigint NOT NULL, {} bigint)"
    ).format(*(sql.Identifier(name) for name in (TABLE, "at", "site", "val", "type")))
    execute_outside_transaction(database, statement)


def run_connect(stage: Stage, topic: str, *, tuned: bool) -> PeerResult:
    """Run the worker over the re-produced `topic` into the stage's database (its table made
    already) and time it from its first row to its last."""
    java = shutil.which("java")
    if java is None:
        raise BenchError("java not found: Kafka Connect needs Java 17+")
    key = "connect_tuned" if tuned else "connect"
    workdir = stage.scratch / key
    workdir.mkdir()
    worker = workdir / "worker.properties"
    connector = workdir / "connector.properties"
    bootstrap = stage.resources.settings.kafka.bootstrap_servers
    offsets = str(workdir / "connect.offsets")
    worker.write_text(
        java_properties(worker_properties(bootstrap, str(PLUGINS), offsets)), encoding="latin-1"
    )
    group = stage.resources.group(f"peer_{key}")
    name = f"lmnh-bench-{key.replace('_', '-')}"
    connector.write_text(
        java_properties(connector_properties(name, topic, group, stage.database, tuned=tuned)),
        encoding="latin-1",
    )
    command = [java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={LOG4J2}"]
    command += ["-cp", f"{LIBS}/*", MAIN_CLASS, str(worker), str(connector)]
    process = PeerProcess(command, child_env(), workdir, stage.scratch, key)
    timed = run_and_time(process, stage, TABLE)
    tuning = "".join(f"{key}={value}, " for key, value in TUNED.items()) if tuned else ""
    tuning += "reWriteBatchedInserts=true in the JDBC URL; " if tuned else ""
    heap = " ".join(JVM_OPTIONS[:2])
    return result(
        timed,
        Description(
            key=key,
            label=(
                f"Kafka Connect {broker_version()} + Debezium JDBC sink {DEBEZIUM_VERSION},"
                f" {'tuned' if tuned else 'defaults'}"
            ),
            per_message=PER_MESSAGE,
            how=(
                f"{tuning}standalone worker, one task, plugin.discovery=service_load, JVM {heap} as"
                " connect-standalone.sh; over the topic re-produced (untimed) in the"
                " JsonConverter envelope, misshapen messages flagged by a header and dropped"
                " by Filter with HasHeaderKey; table made by the benchmark"
                " (schema.evolution=none)"
            ),
        ),
    )
