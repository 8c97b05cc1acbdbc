"""Fixtures against the real local stack: a fresh database and a fresh topic per test.

The stack is started by `python -m stack up` (CI does it first; this does it too when a
developer runs pytest alone). Tests never share a topic or a database.

With BOOTSTRAP_SERVERS and/or DB_HOST (and their other settings, as in .env.example) set in
the environment of the test run, the tests use that Kafka cluster and/or PostgreSQL server
instead (support.select_services); `stack up` then only checks them. Tests that stop, restart
or freeze a local service, use its own listeners or its superuser ask for `local_kafka` or
`local_postgres`, which skip them when that service is external.
"""

from __future__ import annotations

import os
import subprocess
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from psycopg2 import sql

from lmnh.config import DatabaseSettings, Secret, Settings, load_config
from lmnh.database import create_database, drop_database, execute_outside_transaction
from stack.topics import delete_topic, ensure_topic
from tests.integration.support import (
    NO_ENV_FILE,
    PYTHON,
    ROOT,
    Services,
    Target,
    clean_env,
    schema_database,
    select_services,
)


def pytest_report_collectionfinish(config: pytest.Config) -> str:
    """Said under "collected N items": which Kafka and PostgreSQL this run uses."""
    return f"integration tests use: {select_services(os.environ).describe()}"


@pytest.fixture(scope="session")
def services() -> Services:
    """The services of this run, decided once from its environment (never from a .env)."""
    return select_services(os.environ)


@pytest.fixture(scope="session")
def settings(services: Services) -> Settings:
    """The settings of this run's services, whatever the developer's own .env says."""
    subprocess.run(
        [PYTHON, "-m", "stack", "up", "--env-file", NO_ENV_FILE],
        cwd=ROOT,
        check=True,
        env=clean_env(),
    )
    return load_config(services.env)


@pytest.fixture
def local_kafka(services: Services) -> None:
    """For a test that stops, restarts or freezes the local broker, or uses its own listeners
    (the SASL one): skipped when the tests use an external cluster."""
    if not services.local_kafka:
        pytest.skip(
            "needs the local Kafka broker of `python -m stack` (it stops or restarts it, or uses"
            " its own SASL listener); BOOTSTRAP_SERVERS selects an external cluster"
        )


@pytest.fixture
def local_postgres(services: Services) -> None:
    """For a test that stops, restarts or freezes the local PostgreSQL server, or needs its
    superuser (CREATE ROLE): skipped when the tests use an external server."""
    if not services.local_postgres:
        pytest.skip(
            "needs the local PostgreSQL server of `python -m stack` (it stops or freezes it, or"
            " needs its superuser, e.g. for CREATE ROLE); DB_HOST selects an external server"
        )


class _Drops:
    """Drops the tests' databases at the end of the run, several at once. Each DROP DATABASE
    waits for a checkpoint (most of a second, one after another); dropped together they share
    one, and no test waits for another's."""

    def __init__(self) -> None:
        self._pending: list[tuple[DatabaseSettings, str]] = []

    def later(self, server: DatabaseSettings, name: str) -> None:
        self._pending.append((server, name))

    def finish(self) -> None:
        pending, self._pending = self._pending, []
        with ThreadPoolExecutor(_DROPS_AT_ONCE) as pool:
            for (_, name), error in zip(pending, pool.map(_drop, pending), strict=True):
                if error is not None:  # said, never a failed run: the data was a test's
                    warnings.warn(f"could not drop test database {name}: {error}", stacklevel=1)


_DROPS_AT_ONCE = 8
_DROPS = _Drops()


def _drop(item: tuple[DatabaseSettings, str]) -> Exception | None:
    try:
        drop_database(*item)
    except Exception as error:
        return error
    return None


def pytest_sessionfinish(session: pytest.Session) -> None:
    _DROPS.finish()


def fresh_target(settings: Settings, *, schema: bool = True) -> Iterator[Target]:
    """A topic and a database of their own (with the schema and the dashboard's views, unless
    `schema` is False); the topic is deleted after the test, the database at the end."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    database = (
        schema_database(settings.database, name)
        if schema
        else create_database(settings.database, name, schema=False)
    )
    ensure_topic(settings.kafka, name, settings.topic_partitions)
    try:
        yield Target(replace(settings, database=database), name, {**clean_env(), "DB_NAME": name})
    finally:
        delete_topic(settings.kafka, name)
        _DROPS.later(settings.database, name)


@pytest.fixture
def target(settings: Settings) -> Iterator[Target]:
    yield from fresh_target(settings)


MakeLogin = Callable[[str], DatabaseSettings]


@pytest.fixture
def login(local_postgres: None, target: Target) -> Iterator[MakeLogin]:
    """Makes fresh login users holding a given group role; drops them afterwards (CREATE ROLE:
    on the local server only)."""
    created: list[str] = []

    def make(role: str) -> DatabaseSettings:
        name = f"user_{uuid.uuid4().hex[:10]}"
        password = f"pw-{uuid.uuid4().hex}"
        execute_outside_transaction(
            target.settings.database,
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(name), sql.Literal(password), sql.Identifier(role)
            ),
        )
        created.append(name)
        return replace(target.settings.database, username=name, password=Secret(password))

    yield make
    for name in created:
        drop = sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name))
        execute_outside_transaction(target.settings.database, drop)
