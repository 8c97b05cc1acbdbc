"""What the figures were measured on: cores, CPU, memory, versions, and the code's commit."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import confluent_kafka
import psycopg2

from bench.local import ROOT, query
from lmnh.config import DatabaseSettings

_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}

_ENTRY_POINTS = ("kafka_pipeline.py", "kiosk_simulator.py", "dashboard/views.sql")


def describe(database: DatabaseSettings) -> dict[str, Any]:
    settings = dict(
        query(
            database,
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('fsync', 'synchronous_commit', 'shared_buffers', 'max_wal_size')",
        )
    )
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(_memory_kib() / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "confluent_kafka": _first(confluent_kafka.version()),
        "librdkafka": _first(confluent_kafka.libversion()),
        # types-psycopg2 does not declare __version__, which psycopg2 has always had.
        "psycopg2": psycopg2.__version__.split()[0],  # type: ignore[attr-defined]
        "postgresql": query(database, "SHOW server_version")[0][0].split()[0],
        "postgresql_settings": settings,
        "kafka": _kafka_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def git_state() -> dict[str, Any]:
    """The commit measured, and any files that differed from it (the working tree runs)."""

    def git(*args: str) -> str:
        result = subprocess.run(  # noqa: S603 - fixed arguments
            ["git", *args],  # noqa: S607 - git from PATH, as a developer runs it
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.rstrip("\n")

    changed = [
        line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
    ]
    return {
        "commit": git("rev-parse", "HEAD"),
        "modified_files": changed,
        "code_sha256": code_digest(),
    }


def code_digest() -> str:
    """A hash of the code the contenders run, to tell whether it changed during a run."""
    digest = hashlib.sha256()
    for path in sorted(
        [*ROOT.glob("lmnh/*.py"), *ROOT.glob("lmnh/*.sql"), *(ROOT / n for n in _ENTRY_POINTS)]
    ):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _first(version: object) -> str:
    """confluent-kafka's version calls give a string, or (string, number) in some releases."""
    return str(version[0]) if isinstance(version, tuple) else str(version)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _kafka_version() -> str:
    """The broker version the local stack pins (stack/pom.xml); it runs exactly that."""
    try:
        return kafka_version((ROOT / "stack" / "pom.xml").read_text(encoding="utf-8"))
    except ValueError:
        return "unknown"


def kafka_version(pom: str) -> str:
    """The `kafka.version` property of a POM: the broker's version, which the benchmark's
    Kafka Connect worker runs too."""
    root = ElementTree.fromstring(pom)  # noqa: S314 - the project's own POM
    version = root.findtext("m:properties/m:kafka.version", namespaces=_POM_NS)
    if not version or not version.strip():
        raise ValueError("the POM has no kafka.version property")
    return version.strip()
