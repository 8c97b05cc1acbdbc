"""Helpers for tests against the real local stack: run the project's commands on a test's own
topic and database, and compare what the database holds with the simulator's report."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from psycopg2 import sql

from lmnh.config import (
    DATABASE_VARIABLES,
    KAFKA_VARIABLES,
    VARIABLES,
    DatabaseSettings,
    Settings,
)
from lmnh.database import connect, create_database, drop_database
from lmnh.kafka_admin import client_config
from lmnh.schema_version import MIGRATIONS_DIR
from simulator.producer import AckedProducer
from simulator.traffic import report_counts

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Fixed so that a simulated history is the same on every run; it is in the past.
HISTORY_UNTIL = "2026-11-20T18:00:00+00:00"
# A developer's own .env must not leak into tests.
NO_ENV_FILE = "/dev/null"


@dataclass(frozen=True)
class Target:
    """One test's own topic and database, and how to run the project's commands on them."""

    settings: Settings
    topic: str
    env: Mapping[str, str]

    def simulate(self, *args: str) -> dict[str, Any]:
        command = [
            PYTHON,
            "kiosk_simulator.py",
            "--topic",
            self.topic,
            "--env-file",
            NO_ENV_FILE,
            *args,
        ]
        result = run(command, self.env)
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    def pipeline(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = run(self.pipeline_command(*args), self.env)
        if check:
            assert result.returncode == 0, result.stderr[-3000:]
        return result

    def pipeline_command(self, *args: str) -> list[str]:
        return [
            PYTHON,
            "kafka_pipeline.py",
            "--topic",
            self.topic,
            "--from-beginning",
            "--env-file",
            NO_ENV_FILE,
            "--idle-timeout",
            "3",
            *args,
        ]

    def history(self, count: int, seed: int, *args: str) -> dict[str, Any]:
        """Simulated history, the same on every run for a given seed."""
        return self.simulate(
            "--count",
            str(count),
            "--seed",
            str(seed),
            "--backfill",
            "60",
            "--until",
            HISTORY_UNTIL,
            *args,
        )

    def start_pipeline(
        self, output: Path, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """The pipeline as a background process, writing everything it says to `output`
        (a pipe could fill up and stall it)."""
        with output.open("ab") as sink:
            return subprocess.Popen(
                self.pipeline_command(*args),
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def produce(self, values: Sequence[bytes], topic: str | None = None) -> None:
        """Send raw values, as a kiosk or an attacker would, and wait for every ack."""
        acked: list[None] = []
        producer = AckedProducer[None](self.settings.kafka, topic or self.topic, acked.append)
        for value in values:
            producer.send(value, None)
        producer.finish(60)
        assert len(acked) == len(values), producer.first_failure

    def wait_until_loaded(self, count: int, timeout_s: float = 180) -> None:
        wait_until(lambda: self.loaded() >= count, timeout_s, f"{count} were loaded", 0.2)

    def loaded(self) -> int:
        """Messages loaded so far, by the database's own record of its offsets."""
        rows = self.query("SELECT coalesce(sum(next_offset), 0) FROM kafka_offset")
        return int(rows[0][0])

    def database_offsets(self) -> dict[int, int]:
        return dict(self.query("SELECT kafka_partition, next_offset FROM kafka_offset"))

    def committed_offsets(self, group: str) -> dict[int, int]:
        """What `group` has committed to Kafka, per partition."""
        consumer = Consumer({**client_config(self.settings.kafka), "group.id": group})
        try:
            partitions = [TopicPartition(self.topic, p) for p in range(6)]
            committed = consumer.committed(partitions, timeout=10)
        finally:
            consumer.close()
        return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = connect(self.settings.database)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()


@dataclass(frozen=True)
class Services:
    """The services the tests run against, and the settings that name them."""

    env: Mapping[str, str]  # the project variables every command the tests run is given
    local_kafka: bool  # the local broker of `python -m stack`, not an external cluster
    local_postgres: bool  # the local PostgreSQL server of `python -m stack`

    def describe(self) -> str:
        kafka = (
            "local Kafka"
            if self.local_kafka
            else f"external Kafka at {self.env['BOOTSTRAP_SERVERS']} (BOOTSTRAP_SERVERS)"
        )
        postgres = (
            "local PostgreSQL"
            if self.local_postgres
            else f"external PostgreSQL at {self.env['DB_HOST']}:{self.env.get('DB_PORT', 5432)}"
            " (DB_HOST)"
        )
        return f"{kafka}, {postgres}"


def select_services(environ: Mapping[str, str]) -> Services:
    """Which services the tests use, from the environment of the test run alone (a .env file
    never counts: every command the tests run is given --env-file /dev/null): an existing Kafka
    cluster when BOOTSTRAP_SERVERS is set, an existing PostgreSQL server when DB_HOST is, each
    with the rest of its group's variables; the local stack for the rest. Other project
    settings (group id, poll interval, partitions) are the tests' own and never passed on."""

    def chosen(variables: Sequence[str]) -> dict[str, str]:
        if not environ.get(variables[0], "").strip():
            return {}
        return {name: environ[name] for name in variables if name in environ}

    kafka, database = chosen(KAFKA_VARIABLES), chosen(DATABASE_VARIABLES)
    return Services({**kafka, **database}, local_kafka=not kafka, local_postgres=not database)


def clean_env() -> dict[str, str]:
    """The process environment for the commands the tests run: every project setting taken
    out, then the settings of the external services it selects (select_services) put back,
    so the local stack's defaults apply to everything else."""
    outside = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return {**outside, **select_services(os.environ).env}


def run(
    command: list[str], env: Mapping[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def database_counts(target: Target) -> dict[str, Any]:
    """What the database holds, shaped like the simulator's report."""
    ratings = target.query(
        "SELECT e.public_id, r.rating_value, count(*) FROM rating_interaction i"
        " JOIN exhibition e USING (exhibition_id) JOIN rating r USING (rating_id)"
        " GROUP BY 1, 2"
    )
    requests = target.query(
        "SELECT e.public_id, q.request_value, count(*) FROM request_interaction i"
        " JOIN exhibition e USING (exhibition_id) JOIN request q USING (request_id)"
        " GROUP BY 1, 2"
    )
    rejected = target.query("SELECT reason_code, count(*) FROM rejected_message GROUP BY 1")
    return {
        "ratings": {(p, v): n for p, v, n in ratings},
        "requests": {(p, v): n for p, v, n in requests},
        "rejected": dict(rejected),
    }


def stored_coordinates(target: Target) -> list[tuple[int, int]]:
    """(partition, offset) of every stored message, from all three tables, duplicates kept."""
    rows = target.query(
        "SELECT kafka_partition, kafka_offset FROM rating_interaction WHERE kafka_topic = %s"
        " UNION ALL SELECT kafka_partition, kafka_offset FROM request_interaction"
        " WHERE kafka_topic = %s"
        " UNION ALL SELECT kafka_partition, kafka_offset FROM rejected_message"
        " WHERE kafka_topic = %s",
        (target.topic, target.topic, target.topic),
    )
    return [(p, o) for p, o in rows]


def assert_exactly_once(target: Target, report: dict[str, Any]) -> None:
    """Every message sent is stored once, where the simulator says it belongs."""
    coordinates = stored_coordinates(target)
    assert len(coordinates) == len(set(coordinates)), "a message was stored twice"
    assert len(coordinates) == report["sent"], "a message was lost"
    assert database_counts(target) == report_counts(report)


def consumed(summary: str) -> int:
    """The count in the pipeline's summary line."""
    match = re.search(r"consumed (\d+)", summary)
    assert match, summary
    return int(match.group(1))


def replayed(summary: str) -> int:
    """Messages a run read again but found already stored (after a rebalance or a crash)."""
    match = re.search(r"already stored (\d+)", summary)
    return int(match.group(1)) if match else 0


def stack(*args: str) -> tuple[int, str]:
    """Run `python -m stack ...` on the tests' services (the local stack unless the
    environment selects an external service; `down` stops only local ones)."""
    result = run([PYTHON, "-m", "stack", *args, "--env-file", NO_ENV_FILE], clean_env())
    return result.returncode, result.stdout + result.stderr


@dataclass(frozen=True)
class Delivered:
    """Where the broker stored a record, and the timestamp it stored with it."""

    partition: int
    offset: int
    timestamp: tuple[int, int]  # (confluent_kafka timestamp type, milliseconds)


def produce_records(target: Target, records: Sequence[Mapping[str, Any]]) -> list[Delivered]:
    """Send records with whatever a producer may set (confluent_kafka `Producer.produce`
    keyword arguments: value, key, headers, timestamp, partition) to the target's topic, in
    order, and return where each was stored, from its delivery report. Fails unless the broker
    acked every one; a record of up to about 1 MB fits (no compression, no batching across
    large records)."""
    producer = Producer(
        {**client_config(target.settings.kafka), "acks": "all", "enable.idempotence": True}
    )
    reports: dict[int, Delivered | str] = {}

    def report(index: int, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            reports[index] = f"record {index}: {error.str()}"
        else:
            reports[index] = Delivered(
                message.partition() or 0, message.offset() or 0, message.timestamp()
            )

    for index, record in enumerate(records):
        producer.produce(target.topic, on_delivery=partial(report, index), **record)
        producer.poll(0)
    assert producer.flush(60) == 0, "records still unacknowledged after 60 s"
    failures = [r for r in reports.values() if isinstance(r, str)]
    assert not failures, failures[:5]
    delivered = [reports[index] for index in range(len(records))]
    return [d for d in delivered if isinstance(d, Delivered)]


def high_watermarks(target: Target, partitions: int) -> dict[int, int]:
    """Each partition's next offset to be written, for the partitions holding records."""
    consumer = Consumer(
        {**client_config(target.settings.kafka), "group.id": f"{target.topic}-watermarks"}
    )
    try:
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(target.topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()
    return {p: high for p, high in marks.items() if high > 0}


# --- waiting for what the tests can observe --------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server the test starts, or
    as an address where nothing answers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Poll `predicate` until it holds; fail saying what never happened after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout_s:g} s in vain until {what}"
        time.sleep(interval_s)


def wait_mid_run(target: Target, total: int, timeout_s: float = 60) -> int:
    """Wait until the pipeline has stored a first batch of the `total` messages sent, and check
    that it has not stored them all: a fault injected now hits work in flight. Returns how many
    messages the database holds."""
    wait_until(lambda: target.loaded() > 0, timeout_s, "the pipeline stored a first batch")
    loaded = target.loaded()
    assert loaded < total, (
        f"all {total} messages were loaded before the fault: the fault would hit an idle"
        " pipeline; send more messages or use smaller batches"
    )
    return loaded


def copy_waits_on_a_lock(target: Target) -> bool:
    """Whether a pipeline's statement on the target's database waits on a lock right now."""
    rows = target.query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        " AND application_name = 'lmnh-pipeline' AND wait_event_type = 'Lock'",
        (target.topic,),
    )
    return bool(rows[0][0])


def group_assignments(target: Target, group: str, admin: AdminClient) -> list[set[int]]:
    """The partitions of the target's topic each member of consumer group `group` owns, by the
    broker's account; [] unless the group is stable (not rebalancing) with members."""
    [future] = admin.describe_consumer_groups([group], request_timeout=10).values()
    description = future.result()
    if description.state != ConsumerGroupState.STABLE:
        return []
    return [
        {tp.partition for tp in member.assignment.topic_partitions if tp.topic == target.topic}
        for member in description.members
    ]


def wait_for_members(target: Target, group: str, members: int, timeout_s: float = 60) -> None:
    """Wait until `group` is stable with exactly `members` members, each owning partitions of
    the target's topic, all of them together."""
    partitions = set(range(target.settings.topic_partitions))
    admin = AdminClient(client_config(target.settings.kafka))

    def shared() -> bool:
        owned = group_assignments(target, group, admin)
        return len(owned) == members and all(owned) and set().union(*owned) == partitions

    wait_until(shared, timeout_s, f"{members} members of {group} share the topic's partitions", 0.2)


def start_live_simulator(
    target: Target, output: Path, rate: int, seed: int
) -> subprocess.Popen[str]:
    """Live kiosk traffic, `rate` messages a second, into the target's topic until
    `stop_simulator`: a load that lasts as long as a test needs, whatever the machine's speed."""
    with output.open("a") as sink:
        return subprocess.Popen(
            [
                PYTHON,
                "kiosk_simulator.py",
                "--topic",
                target.topic,
                "--env-file",
                NO_ENV_FILE,
                "--rate",
                str(rate),
                "--seed",
                str(seed),
            ],
            cwd=ROOT,
            env=dict(target.env),
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
        )


def stop_simulator(simulator: subprocess.Popen[str], output: Path) -> dict[str, Any]:
    """Stop a live simulator (SIGINT: it waits for the broker's acks) and return its report of
    exactly what the broker acknowledged. Fails if it had stopped by itself."""
    assert simulator.poll() is None, f"the simulator stopped early: {output.read_text()[-2000:]}"
    simulator.send_signal(signal.SIGINT)
    stdout, _ = simulator.communicate(timeout=60)
    assert simulator.returncode == 0, output.read_text()[-2000:]
    report: dict[str, Any] = json.loads(stdout)
    return report


def schema_database(server: DatabaseSettings, name: str) -> DatabaseSettings:
    """Database `name` on `server` with the schema and the dashboard's views, copied from a
    template made once by the migrations (`CREATE DATABASE ... TEMPLATE`): a tenth of the time
    of applying them to each test's database, and the same schema. The template is named after
    the schema files' contents, so a changed schema makes a new one; concurrent test runs make
    it once between them (an advisory lock)."""
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        digest.update(path.read_bytes())
    template = f"lmnh_test_template_{digest.hexdigest()[:12]}"
    conn = connect(replace(server, name="postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (template,))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (template,))
            if cur.fetchone() is None:
                made = f"{template}_making"
                drop_database(server, made)
                create_database(server, made)
                cur.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(made), sql.Identifier(template)
                    )
                )
            cur.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
            cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (template,))
    finally:
        conn.close()
    return replace(server, name=name)
