"""How the integration tests pick their services: the local stack unless the environment of the
test run names an existing Kafka cluster (BOOTSTRAP_SERVERS) or PostgreSQL server (DB_HOST)."""

from __future__ import annotations

import pytest

from lmnh.config import (
    ACCESS_VARIABLES,
    DATABASE_TIMEOUT_VARIABLES,
    DATABASE_VARIABLES,
    KAFKA_VARIABLES,
    RETENTION_VARIABLES,
    VARIABLES,
    load_config,
)
from tests.integration.support import select_services

HOSTED_KAFKA = {
    "BOOTSTRAP_SERVERS": "pkc-1.example.net:9092",
    "SASL_MECHANISM": "PLAIN",
    "SASL_USERNAME": "museum",
    "SASL_PASSWORD": "s3cret-value",
}
HOSTED_DATABASE = {
    "DB_HOST": "db.example.net",
    "DB_PORT": "6543",
    "DB_USERNAME": "etl",
    "DB_PASSWORD": "db-s3cret",
    "DB_SSLMODE": "verify-full",
}
# The tests' own choices, whatever the environment says.
OWN = {"KAFKA_GROUP_ID": "theirs", "KAFKA_MAX_POLL_INTERVAL_MS": "20000", "KAFKA_PARTITIONS": "2"}
# How soon silent peers are noticed: the defaults, whatever the environment says.
TIMEOUTS = {*DATABASE_TIMEOUT_VARIABLES, "KAFKA_SOCKET_TIMEOUT_MS"}
# Partition maintenance's retention and the dashboard's sign-in: the defaults, whatever the
# environment says.
RETENTION = set(RETENTION_VARIABLES)
ACCESS = set(ACCESS_VARIABLES)


def test_every_setting_is_a_service_setting_or_the_tests_own() -> None:
    services = set(KAFKA_VARIABLES) | set(DATABASE_VARIABLES)
    assert services | set(OWN) | TIMEOUTS | RETENTION | ACCESS == VARIABLES


def test_nothing_set_means_the_local_stack() -> None:
    services = select_services({"PATH": "/usr/bin", "HOME": "/root"})
    assert services.local_kafka and services.local_postgres
    assert services.env == {}


def test_both_external() -> None:
    services = select_services({**HOSTED_KAFKA, **HOSTED_DATABASE, **OWN, "PATH": "/usr/bin"})
    assert not services.local_kafka and not services.local_postgres
    assert services.env == {**HOSTED_KAFKA, **HOSTED_DATABASE}
    settings = load_config(services.env)
    assert settings.kafka.bootstrap_servers == "pkc-1.example.net:9092"
    assert (settings.database.host, settings.database.port) == ("db.example.net", 6543)
    assert "external Kafka at pkc-1.example.net:9092" in services.describe()
    assert "external PostgreSQL at db.example.net:6543" in services.describe()


@pytest.mark.parametrize(
    ("environ", "local_kafka", "local_postgres"),
    [
        (HOSTED_KAFKA, False, True),
        (HOSTED_DATABASE, True, False),
        # A service's other settings without its selecting variable leave it local, and are not
        # passed on (SASL against the local PLAINTEXT broker would only fail).
        ({"SASL_USERNAME": "museum", "SECURITY_PROTOCOL": "SASL_SSL"}, True, True),
        ({"DB_PASSWORD": "x", "DB_PORT": "5432", "DB_NAME": "other"}, True, True),
        ({"BOOTSTRAP_SERVERS": "  ", "DB_HOST": ""}, True, True),
        ({**HOSTED_KAFKA, "DB_PASSWORD": "x"}, False, True),
    ],
    ids=["kafka", "postgres", "stray-kafka", "stray-postgres", "blank", "kafka-stray-postgres"],
)
def test_each_service_is_chosen_by_its_own_variable(
    environ: dict[str, str], local_kafka: bool, local_postgres: bool
) -> None:
    services = select_services(environ)
    assert (services.local_kafka, services.local_postgres) == (local_kafka, local_postgres)
    # The commands the tests run read those settings the same way.
    settings = load_config(services.env)
    assert (settings.kafka.local, settings.database.local) == (local_kafka, local_postgres)
    if local_kafka:
        assert not set(services.env) & set(KAFKA_VARIABLES)
    if local_postgres:
        assert not set(services.env) & set(DATABASE_VARIABLES)


def test_the_local_stack_named_as_if_external_is_external() -> None:
    """How the suite is tried in external mode without an external service."""
    services = select_services(
        {
            "BOOTSTRAP_SERVERS": "127.0.0.1:19092",
            "DB_HOST": "127.0.0.1",
            "DB_PORT": "55432",
            "DB_USERNAME": "lmnh",
            "DB_PASSWORD": "lmnh-local",
        }
    )
    assert not services.local_kafka and not services.local_postgres
    assert load_config(services.env).database.port == 55432
