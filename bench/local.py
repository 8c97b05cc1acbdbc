"""The benchmark's edge on the local stack: fresh databases and topics, the project's own
commands run as users run them, reading a topic back, and checking what a database holds.

Every contender gets its own database and consumer group, so none sees another's rows or
offsets; all of them are removed at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg2 import sql

from bench.report import Summary, parse_summary
from dashboard import VIEWS_FILE
from lmnh.config import VARIABLES, DatabaseSettings, KafkaSettings, Settings, load_config
from lmnh.database import connect, create_database, drop_database, execute_outside_transaction
from lmnh.errors import PipelineError
from lmnh.events import KafkaMessage
from lmnh.kafka_admin import client_config
from simulator.traffic import report_counts
from stack.topics import delete_topic, ensure_topic

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# A developer's own .env must not reach the commands the benchmark runs.
NO_ENV_FILE = "/dev/null"
# Fixed and in the past, so that the produced history is the same on every run.
HISTORY_UNTIL = "2026-11-20T18:00:00+00:00"
PARTITIONS = 6
LAUNCHER = ROOT / "bench" / "peak_rss.py"


class BenchError(PipelineError):
    """The benchmark cannot go on, or a contender gave a wrong result: one line says which."""


def local_settings() -> Settings:
    """The local stack's settings, whatever the environment says."""
    return load_config({})


def child_env(database: str | None = None) -> dict[str, str]:
    """The environment for a child command: the local stack's defaults, and `database`."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    if database is not None:
        env["DB_NAME"] = database
    return env


class Progress:
    """Timestamped progress lines, so a long run shows where it is."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def __call__(self, text: str) -> None:
        elapsed = int(time.monotonic() - self._started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", flush=True)


class Resources:
    """Creates fresh databases, topics and group names for one run, and removes them all."""

    def __init__(self, settings: Settings, run_id: str) -> None:
        self.settings = settings
        self.run_id = run_id
        self._databases: list[str] = []
        self._topics: list[str] = []
        self._groups: list[str] = []
        self._checkouts: list[Path] = []

    def name(self, kind: str) -> str:
        return f"bench_{kind}_{self.run_id}"

    def group(self, kind: str) -> str:
        group = f"bench-{kind}-{self.run_id}"
        self._groups.append(group)
        return group

    def database(self, kind: str, code: Path = ROOT, *, schema: bool = True) -> DatabaseSettings:
        """A new database with the schema of the project checked out at `code` applied, as
        its `python -m stack schema` makes it (this checkout's, unless told); bare, for a
        peer that makes its own table, unless `schema`."""
        name = self.name(kind)
        if not schema:
            database = create_database(self.settings.database, name, schema=False)
        elif code == ROOT:
            database = create_database(self.settings.database, name, extensions=[VIEWS_FILE])
        else:
            database = create_database(self.settings.database, name, schema=False)
            command = [PYTHON, "-m", "stack", "schema", "--env-file", NO_ENV_FILE]
            done = subprocess.run(  # noqa: S603 - our own command line
                command, cwd=code, env=child_env(name), capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise BenchError(f"the schema of {code} failed: {done.stderr[-2000:]}")
        self._databases.append(name)
        return database

    def checkout(self, revision: str, scratch: Path) -> tuple[Path, str]:
        """The project at `revision`, checked out beside this one (a git worktree), for an
        A/B in the same run, and its commit; removed by `close`."""
        path = scratch / f"at-{revision}"
        done = _git("worktree", "add", "--detach", str(path), revision)
        if done.returncode != 0:
            raise BenchError(f"cannot check out {revision}: {done.stderr.strip()}")
        self._checkouts.append(path)
        return path, _git("-C", str(path), "rev-parse", "HEAD").stdout.strip()

    def drop_database(self, database: DatabaseSettings) -> None:
        drop_database(self.settings.database, database.name)
        if database.name in self._databases:
            self._databases.remove(database.name)

    def topic(self, kind: str) -> str:
        """A new, empty topic with the partitions of the museum's."""
        name = self.name(kind)
        ensure_topic(self.settings.kafka, name, PARTITIONS)
        self._topics.append(name)
        return name

    def checkpoint(self) -> None:
        """Flush what earlier contenders left dirty, so that it is not written during the
        next measurement."""
        execute_outside_transaction(self.settings.database, sql.SQL("CHECKPOINT"))

    def close(self) -> None:
        """Remove every database, topic, consumer group and checkout this run made."""
        for path in self._checkouts:  # then forgotten by git, also if already deleted
            _git("worktree", "remove", "--force", str(path))
        if self._checkouts:
            _git("worktree", "prune")
        self._checkouts.clear()
        for database in list(self._databases):
            self.drop_database(replace(self.settings.database, name=database))
        for topic in self._topics:
            delete_topic(self.settings.kafka, topic)
        self._topics.clear()
        if self._groups:
            admin = AdminClient(client_config(self.settings.kafka))
            for future in admin.delete_consumer_groups(self._groups).values():
                # A group that never committed does not exist: nothing to delete.
                with contextlib.suppress(Exception):
                    future.result()
            self._groups.clear()


def stop(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """End a process the benchmark started: SIGTERM, then SIGKILL after `timeout_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own command line
        ["git", *args],  # noqa: S607 - git from PATH, as a developer runs it
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def produce(topic: str, count: int, *extra: str) -> dict[str, Any]:
    """Run the kiosk simulator into `topic` (a reproducible history unless `extra` says
    otherwise) and return its JSON report of what the broker acknowledged."""
    mode = list(extra) or ["--seed", "1", "--backfill", "365", "--until", HISTORY_UNTIL]
    command = [
        PYTHON,
        "kiosk_simulator.py",
        "--topic",
        topic,
        "--count",
        str(count),
        "--env-file",
        NO_ENV_FILE,
        *mode,
    ]
    result = subprocess.run(  # noqa: S603 - our own command line
        command, cwd=ROOT, env=child_env(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"the simulator failed ({result.returncode}): {result.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(result.stdout)
    if report["sent"] != count or report["failed"]:
        raise BenchError(f"the simulator acknowledged {report['sent']} of {count} messages")
    return report


def pipeline_command(topic: str, group: str, logfile: Path, *args: str) -> list[str]:
    """kafka_pipeline.py as a user runs it, on a fresh group, ignoring any .env."""
    return [
        PYTHON,
        "kafka_pipeline.py",
        "--topic",
        topic,
        "--from-beginning",
        "--group-id",
        group,
        "--logfile",
        str(logfile),
        "--env-file",
        NO_ENV_FILE,
        *args,
    ]


@dataclass(frozen=True, slots=True)
class PipelineRun:
    exit_code: int
    wall_seconds: float  # process start to exit
    max_rss_kib: int  # peak RSS of the pipeline process itself
    summary: Summary | None
    stdout: str
    stderr: str


def start_pipeline(
    command: list[str], database: DatabaseSettings, workdir: Path, label: str, code: Path = ROOT
) -> tuple[subprocess.Popen[bytes], float]:
    """Start the pipeline of the checkout at `code` under the peak-RSS launcher (see
    bench/peak_rss.py for why), its output going to files in `workdir`; signals sent to the
    process reach the pipeline."""
    with (workdir / f"{label}.out").open("w") as out, (workdir / f"{label}.err").open("w") as err:
        started = time.monotonic()
        process = subprocess.Popen(  # noqa: S603 - our own command line
            under_peak_rss(command, workdir / f"{label}.rss"),
            cwd=code,
            env=child_env(database.name),
            stdout=out,
            stderr=err,
        )
    return process, started


def under_peak_rss(command: Sequence[str], report: Path) -> list[str]:
    """`command` run by the peak-RSS launcher, which writes its peak RSS to `report`."""
    return [PYTHON, "-I", "-S", str(LAUNCHER), str(report), *command]


def finish_pipeline(
    process: subprocess.Popen[bytes], started: float, workdir: Path, label: str
) -> PipelineRun:
    """Wait for the pipeline's end and collect what it reported."""
    exit_code = process.wait()
    wall = time.monotonic() - started
    stdout = (workdir / f"{label}.out").read_text(encoding="utf-8", errors="replace")
    stderr = (workdir / f"{label}.err").read_text(encoding="utf-8", errors="replace")
    rss = workdir / f"{label}.rss"
    if not rss.exists():
        raise BenchError(f"{label}: the pipeline's launcher failed: {stderr[-2000:]}")
    max_rss = int(rss.read_text(encoding="utf-8"))
    return PipelineRun(exit_code, wall, max_rss, parse_summary(stdout), stdout, stderr)


def run_pipeline(
    command: list[str], database: DatabaseSettings, workdir: Path, label: str, code: Path = ROOT
) -> PipelineRun:
    """Run the pipeline to its end."""
    process, started = start_pipeline(command, database, workdir, label, code)
    return finish_pipeline(process, started, workdir, label)


def read_topic(kafka: KafkaSettings, topic: str, group: str) -> Iterator[KafkaMessage]:
    """Every message the topic holds now, partition by partition in offset order."""
    consumer = Consumer(
        {
            **client_config(kafka),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        remaining = dict(ends)
        while remaining:
            for message in consumer.consume(10000, 1.0):
                if message.error() is not None:
                    raise BenchError(f"reading {topic} back: {message.error()}")
                partition, offset = message.partition() or 0, message.offset() or 0
                kind, timestamp = message.timestamp()
                yield KafkaMessage(
                    topic, partition, offset, message.value(), timestamp if kind else None
                )
                if offset + 1 >= ends[partition]:
                    remaining.pop(partition, None)
    finally:
        consumer.close()


def query(
    database: DatabaseSettings, statement: str | sql.Composable, params: tuple[Any, ...] = ()
) -> list[Any]:
    conn = connect(database)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            rows: list[Any] = cur.fetchall()
            return rows
    finally:
        conn.close()


def stored_rows(database: DatabaseSettings) -> int:
    """Rows across the three tables a message can land in."""
    rows = query(
        database,
        "SELECT (SELECT count(*) FROM rating_interaction)"
        " + (SELECT count(*) FROM request_interaction)"
        " + (SELECT count(*) FROM rejected_message)",
    )
    return int(rows[0][0])


def database_counts(database: DatabaseSettings) -> dict[str, dict[Any, int]]:
    """What the database holds, shaped like `report_counts`."""
    ratings = query(
        database,
        "SELECT e.public_id, r.rating_value, count(*) FROM rating_interaction"
        " JOIN exhibition e USING (exhibition_id) JOIN rating r USING (rating_id) GROUP BY 1, 2",
    )
    requests = query(
        database,
        "SELECT e.public_id, q.request_value, count(*) FROM request_interaction"
        " JOIN exhibition e USING (exhibition_id) JOIN request q USING (request_id) GROUP BY 1, 2",
    )
    rejected = query(database, "SELECT reason_code, count(*) FROM rejected_message GROUP BY 1")
    return {
        "ratings": {(p, v): n for p, v, n in ratings},
        "requests": {(p, v): n for p, v, n in requests},
        "rejected": dict(rejected),
    }


def require_exactly(database: DatabaseSettings, report: Mapping[str, Any], who: str) -> None:
    """Fail loudly unless the database holds exactly what the simulator acknowledged: a fast
    wrong result is worthless."""
    rows = stored_rows(database)
    if rows != report["sent"]:
        raise BenchError(f"{who}: {rows} rows stored for {report['sent']} messages sent")
    if database_counts(database) != report_counts(report):
        raise BenchError(f"{who}: the stored counts differ from the simulator's report")


def fingerprint(database: DatabaseSettings) -> list[tuple[Any, ...]]:
    """Per table, the row count and an order-independent hash of every stored column except
    generated ids and the time of receipt: equal fingerprints mean the same rows."""
    statements = [
        "SELECT count(*), sum(hashtextextended(concat_ws('|', exhibition_id, rating_id,"
        " event_at, kafka_topic, kafka_partition, kafka_offset), 0)) FROM rating_interaction",
        "SELECT count(*), sum(hashtextextended(concat_ws('|', exhibition_id, request_id,"
        " event_at, kafka_topic, kafka_partition, kafka_offset), 0)) FROM request_interaction",
        "SELECT count(*), sum(hashtextextended(concat_ws('|', encode(raw, 'hex'), reason_code,"
        " reason, kafka_timestamp, kafka_topic, kafka_partition, kafka_offset), 0))"
        " FROM rejected_message",
    ]
    return [tuple(query(database, statement)[0]) for statement in statements]
