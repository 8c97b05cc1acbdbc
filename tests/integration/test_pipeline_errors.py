"""kafka_pipeline.py's failures: one clear line, a documented exit code, no traceback, no secret."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lmnh.config import LOCAL_KAFKA_SASL, LOCAL_KAFKA_SASL_PASSWORD, LOCAL_KAFKA_SASL_USER
from lmnh.database import create_database, drop_database
from lmnh.errors import ExitCode
from stack.topics import delete_topic, ensure_topic
from tests.integration.support import HISTORY_UNTIL, Target, assert_exactly_once, run

pytestmark = pytest.mark.integration

WRONG_PASSWORD = "not-the-password-0451"  # noqa: S105 - a deliberately wrong test value


def fails(target: Target, env: dict[str, str], *args: str) -> str:
    result = run(target.pipeline_command(*args), {**target.env, **env}, timeout=120)
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert result.returncode != 0
    return f"{result.returncode}|{output}"


def exit_code(failure: str) -> int:
    return int(failure.split("|", 1)[0])


def test_unreachable_broker(target: Target) -> None:
    failure = fails(target, {"BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "--startup-timeout", "2")
    assert exit_code(failure) == ExitCode.BROKER_UNREACHABLE
    assert "unreachable" in failure


@pytest.mark.usefixtures("local_kafka")
def test_wrong_sasl_password_is_an_authentication_error_that_never_shows_the_password(
    target: Target,
) -> None:
    env = {
        "BOOTSTRAP_SERVERS": LOCAL_KAFKA_SASL,
        "SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SASL_MECHANISM": "PLAIN",
        "SASL_USERNAME": LOCAL_KAFKA_SASL_USER,
        "SASL_PASSWORD": WRONG_PASSWORD,
    }
    failure = fails(target, env)
    assert exit_code(failure) == ExitCode.AUTHENTICATION
    assert "rejected the SASL credentials" in failure
    assert WRONG_PASSWORD not in failure


@pytest.mark.usefixtures("local_kafka")
def test_the_right_sasl_password_loads_everything(target: Target) -> None:
    report = target.simulate(
        "--count", "500", "--seed", "5", "--backfill", "3", "--until", HISTORY_UNTIL
    )
    env = {
        "BOOTSTRAP_SERVERS": LOCAL_KAFKA_SASL,
        "SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SASL_USERNAME": LOCAL_KAFKA_SASL_USER,
        "SASL_PASSWORD": LOCAL_KAFKA_SASL_PASSWORD,
    }
    result = run(target.pipeline_command(), {**target.env, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    assert LOCAL_KAFKA_SASL_PASSWORD not in result.stdout + result.stderr
    assert_exactly_once(target, report)


def test_unreachable_database(target: Target) -> None:
    failure = fails(target, {"DB_PORT": "1"}, "--startup-timeout", "2")
    assert exit_code(failure) == ExitCode.DATABASE_UNREACHABLE
    assert "database unreachable" in failure


def test_wrong_database_password(target: Target) -> None:
    failure = fails(target, {"DB_PASSWORD": WRONG_PASSWORD})
    assert exit_code(failure) == ExitCode.DATABASE_UNREACHABLE
    assert "refused the login" in failure
    assert WRONG_PASSWORD not in failure


def test_missing_schema(target: Target) -> None:
    bare = f"{target.topic}_bare"
    create_database(target.settings.database, bare, schema=False)
    try:
        failure = fails(target, {"DB_NAME": bare})
    finally:
        drop_database(target.settings.database, bare)
    assert exit_code(failure) == ExitCode.SCHEMA_MISSING
    assert "schema missing" in failure


def test_missing_topic(target: Target) -> None:
    result = run([*target.pipeline_command(), "--topic", f"{target.topic}-absent"], target.env)
    assert result.returncode == ExitCode.TOPIC_MISSING
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_configuration_problems_are_listed_together(target: Target) -> None:
    failure = fails(target, {"SECURITY_PROTOCOL": "CARRIER_PIGEON", "DB_PORT": "eighty"})
    assert exit_code(failure) == ExitCode.CONFIG
    assert "SECURITY_PROTOCOL" in failure
    assert "DB_PORT" in failure


def test_a_recreated_topic_is_refused_rather_than_silently_skipped(target: Target) -> None:
    target.simulate("--count", "300", "--seed", "13", "--backfill", "3", "--until", HISTORY_UNTIL)
    target.pipeline()
    delete_topic(target.settings.kafka, target.topic)
    ensure_topic(target.settings.kafka, target.topic, target.settings.topic_partitions)
    target.simulate("--count", "30", "--seed", "14", "--backfill", "3", "--until", HISTORY_UNTIL)
    failure = fails(target, {})
    assert exit_code(failure) == ExitCode.TOPIC_MISSING
    assert "recreated" in failure


def test_a_topic_recreated_with_as_many_messages_is_refused(target: Target) -> None:
    """Its offsets look just like the old topic's: only its id tells them apart."""
    history = ("--count", "300", "--seed", "13", "--backfill", "3", "--until", HISTORY_UNTIL)
    target.simulate(*history)
    target.pipeline()
    delete_topic(target.settings.kafka, target.topic)
    ensure_topic(target.settings.kafka, target.topic, target.settings.topic_partitions)
    target.simulate(*history)
    target.simulate("--count", "30", "--seed", "14", "--backfill", "3", "--until", HISTORY_UNTIL)
    failure = fails(target, {})
    assert exit_code(failure) == ExitCode.TOPIC_MISSING
    assert "recreated" in failure
    assert target.loaded() == 300  # nothing of the new topic was taken for the old one


def test_a_topic_recreated_while_loading_stops_the_run(target: Target, tmp_path: Path) -> None:
    history = ("--count", "300", "--seed", "13", "--backfill", "3", "--until", HISTORY_UNTIL)
    target.simulate(*history)
    log = tmp_path / "pipeline.log"
    process = target.start_pipeline(log, "--follow")
    deadline = time.monotonic() + 60
    while target.loaded() < 300:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    delete_topic(target.settings.kafka, target.topic)
    ensure_topic(target.settings.kafka, target.topic, target.settings.topic_partitions)
    target.simulate(*history)
    code = process.wait(timeout=60)
    output = log.read_text()
    assert code == ExitCode.TOPIC_MISSING, output[-3000:]
    assert "recreated" in output or "is gone" in output
    assert "Traceback" not in output
    assert target.loaded() == 300
