"""The one place that reads the environment and `.env` files.

Every other module receives a frozen `Settings`; none reads `os.environ`. When
`BOOTSTRAP_SERVERS` is unset the local broker started by `python -m stack up` is used, and
when `DB_HOST` is unset the local PostgreSQL server is used, so a fresh clone needs no `.env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from lmnh.errors import ConfigError

LOCAL_KAFKA_PLAINTEXT = "127.0.0.1:19092"
LOCAL_KAFKA_CONTROLLER = "127.0.0.1:19093"
LOCAL_KAFKA_SASL = "127.0.0.1:19094"
LOCAL_KAFKA_SASL_USER = "etl"
LOCAL_KAFKA_SASL_PASSWORD = "etl-secret"  # noqa: S105 - the local test broker's documented user

LOCAL_DB_HOST = "127.0.0.1"
LOCAL_DB_PORT = 55432
LOCAL_DB_NAME = "lmnh"
LOCAL_DB_USERNAME = "lmnh"
LOCAL_DB_PASSWORD = "lmnh-local"  # noqa: S105 - the local server's documented password

# Every variable load_config reads (documented in .env.example): where the Kafka cluster and
# the database are and how to log in, then the pipeline's own tuning.
KAFKA_VARIABLES = (
    "BOOTSTRAP_SERVERS",
    "SECURITY_PROTOCOL",
    "SASL_MECHANISM",
    "SASL_USERNAME",
    "SASL_PASSWORD",
    "SSL_CA_LOCATION",
)
DATABASE_VARIABLES = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USERNAME", "DB_PASSWORD", "DB_SSLMODE")
VARIABLES = frozenset(
    {
        *KAFKA_VARIABLES,
        *DATABASE_VARIABLES,
        "KAFKA_GROUP_ID",
        "KAFKA_MAX_POLL_INTERVAL_MS",
        "KAFKA_PARTITIONS",
    }
)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class Secret:
    """A string that never shows itself in `repr`, `str`, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: Secret | None
    ssl_ca_location: str | None
    group_id: str
    max_poll_interval_ms: int  # the longest a consumer may go without polling
    local: bool  # True when the project's own local broker is meant


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    host: str
    port: int
    name: str
    username: str
    password: Secret
    sslmode: str | None
    local: bool  # True when the project's own local PostgreSQL server is meant


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaSettings
    database: DatabaseSettings
    topic_partitions: int


def read_environment(env_file: Path | None = None) -> dict[str, str]:
    """Merge a `.env` file (default `./.env`, if present) under the process environment.

    Real environment variables win over the file, as in python-dotenv's default.
    """
    path = env_file if env_file is not None else Path(".env")
    if env_file is not None and not path.exists():
        raise ConfigError([f"--env-file {path}: no such file"])
    file_values = dotenv_values(path) if path.exists() else {}
    merged = {key: value for key, value in file_values.items() if value is not None}
    merged.update(os.environ)
    return merged


def load_config(env: Mapping[str, str]) -> Settings:
    """Build validated settings from `env`, listing every problem at once."""
    problems: list[str] = []

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def integer(name: str, default: int, low: int, high: int) -> int:
        raw = get(name)
        if raw is None:
            return default
        if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
            problems.append(f"{name}={raw!r} must be a whole number from {low} to {high}")
            return default
        return int(raw)

    bootstrap = get("BOOTSTRAP_SERVERS")
    mechanism = get("SASL_MECHANISM")
    username = get("SASL_USERNAME")
    password = get("SASL_PASSWORD")
    protocol = get("SECURITY_PROTOCOL")
    if protocol is None:
        # The museum's hosted cluster speaks SASL over TLS; a bare local broker does not.
        protocol = "SASL_SSL" if mechanism else "PLAINTEXT"
    protocol = protocol.upper()
    if protocol not in SECURITY_PROTOCOLS:
        problems.append(
            f"SECURITY_PROTOCOL={protocol!r} must be one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    if protocol.startswith("SASL"):
        if mechanism is None:
            mechanism = "PLAIN"
        if mechanism.upper() not in SASL_MECHANISMS:
            problems.append(
                f"SASL_MECHANISM={mechanism!r} must be one of {', '.join(SASL_MECHANISMS)}"
            )
        if username is None or password is None:
            problems.append(f"SECURITY_PROTOCOL={protocol} needs SASL_USERNAME and SASL_PASSWORD")
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap or LOCAL_KAFKA_PLAINTEXT,
        security_protocol=protocol,
        sasl_mechanism=mechanism.upper() if mechanism and protocol.startswith("SASL") else None,
        sasl_username=username if protocol.startswith("SASL") else None,
        sasl_password=Secret(password) if password and protocol.startswith("SASL") else None,
        ssl_ca_location=get("SSL_CA_LOCATION"),
        group_id=get("KAFKA_GROUP_ID") or "lmnh-pipeline",
        max_poll_interval_ms=integer("KAFKA_MAX_POLL_INTERVAL_MS", 300_000, 10_000, 86_400_000),
        local=bootstrap is None,
    )

    db_host = get("DB_HOST")
    local_db = db_host is None
    database = DatabaseSettings(
        host=db_host or LOCAL_DB_HOST,
        port=integer("DB_PORT", 5432 if db_host else LOCAL_DB_PORT, 1, 65535),
        name=get("DB_NAME") or LOCAL_DB_NAME,
        username=get("DB_USERNAME") or LOCAL_DB_USERNAME,
        password=Secret(get("DB_PASSWORD") or ("" if db_host else LOCAL_DB_PASSWORD)),
        sslmode=get("DB_SSLMODE"),
        local=local_db,
    )
    partitions = integer("KAFKA_PARTITIONS", 6, 1, 1000)
    if problems:
        raise ConfigError(problems)
    return Settings(kafka=kafka, database=database, topic_partitions=partitions)
