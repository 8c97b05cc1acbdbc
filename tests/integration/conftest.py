"""Fixtures against the real local stack: a fresh database and a fresh topic per test.

The stack is started by `python -m stack up` (CI does it first; this does it too when a
developer runs pytest alone). Tests never share a topic or a database.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from psycopg2 import sql

from dashboard import VIEWS_FILE
from lmnh.config import DatabaseSettings, Secret, Settings, load_config
from lmnh.database import create_database, drop_database, execute_outside_transaction
from stack.topics import delete_topic, ensure_topic
from tests.integration.support import NO_ENV_FILE, PYTHON, ROOT, Target, clean_env


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The local stack's settings, whatever the developer's own .env says."""
    subprocess.run(
        [PYTHON, "-m", "stack", "up", "--env-file", NO_ENV_FILE],
        cwd=ROOT,
        check=True,
        env=clean_env(),
    )
    return load_config({})


@pytest.fixture
def target(settings: Settings) -> Iterator[Target]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    database = create_database(settings.database, name, extensions=[VIEWS_FILE])
    ensure_topic(settings.kafka, name, settings.topic_partitions)
    try:
        yield Target(replace(settings, database=database), name, {**clean_env(), "DB_NAME": name})
    finally:
        delete_topic(settings.kafka, name)
        drop_database(settings.database, name)


MakeLogin = Callable[[str], DatabaseSettings]


@pytest.fixture
def login(target: Target) -> Iterator[MakeLogin]:
    """Makes fresh login users holding a given group role; drops them afterwards."""
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
