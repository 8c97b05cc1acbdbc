"""Helpers for tests against the real local stack: run the project's commands on a test's own
topic and database, and compare what the database holds with the simulator's report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg2 import sql

from lmnh.config import Settings
from lmnh.database import connect

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

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = connect(self.settings.database)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()


def clean_env() -> dict[str, str]:
    """The process environment minus every project setting, so the local defaults apply."""
    project = {
        "BOOTSTRAP_SERVERS",
        "SECURITY_PROTOCOL",
        "SASL_MECHANISM",
        "SASL_USERNAME",
        "SASL_PASSWORD",
        "SSL_CA_LOCATION",
        "KAFKA_GROUP_ID",
        "KAFKA_PARTITIONS",
        "DB_HOST",
        "DB_PORT",
        "DB_NAME",
        "DB_USERNAME",
        "DB_PASSWORD",
        "DB_SSLMODE",
    }
    return {k: v for k, v in os.environ.items() if k not in project}


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


def report_counts(report: dict[str, Any]) -> dict[str, Any]:
    """The simulator's report in the shape of `database_counts`, zeros left out."""
    return {
        "ratings": {
            (p, int(v)): n
            for p, values in report["ratings"].items()
            for v, n in values.items()
            if n
        },
        "requests": {
            (p, int(v)): n
            for p, values in report["requests"].items()
            for v, n in values.items()
            if n
        },
        "rejected": {code: n for code, n in report["rejected"].items() if n},
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


def admin(settings: Settings, statement: sql.Composable) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE) on a new connection."""
    conn = connect(settings.database)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()
