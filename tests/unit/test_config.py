"""The one config loader: defaults, the original .env names, every problem listed at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmnh.config import (
    LOCAL_DB_PORT,
    LOCAL_KAFKA_PLAINTEXT,
    VARIABLES,
    Secret,
    load_config,
    read_environment,
)
from lmnh.database import tried_last
from lmnh.errors import ConfigError
from lmnh.kafka_admin import client_config

HOSTED = {
    "BOOTSTRAP_SERVERS": "pkc-1.example.net:9092",
    "SASL_MECHANISM": "PLAIN",
    "SASL_USERNAME": "museum",
    "SASL_PASSWORD": "s3cret-value",
    "DB_HOST": "db.example.net",
    "DB_NAME": "museum",
    "DB_USERNAME": "etl",
    "DB_PASSWORD": "db-s3cret",
    "DB_PORT": "6543",
}


def test_nothing_set_means_the_local_stack() -> None:
    settings = load_config({})
    assert settings.kafka.local and settings.database.local
    assert settings.kafka.bootstrap_servers == LOCAL_KAFKA_PLAINTEXT
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert settings.database.port == LOCAL_DB_PORT
    assert settings.topic_partitions == 6


def test_the_original_variables_configure_a_hosted_cluster_over_sasl_ssl() -> None:
    settings = load_config(HOSTED)
    assert not settings.kafka.local and not settings.database.local
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert (settings.database.host, settings.database.port) == ("db.example.net", 6543)
    config = client_config(settings.kafka)
    assert config["sasl.mechanism"] == "PLAIN"
    assert config["sasl.password"] == "s3cret-value"


def test_secrets_never_show_in_repr() -> None:
    settings = load_config(HOSTED)
    shown = repr(settings) + str(settings.kafka.sasl_password)
    assert "s3cret-value" not in shown
    assert "db-s3cret" not in shown
    assert Secret("x").reveal() == "x"


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(
            {
                "SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "SASL_MECHANISM": "GSSAPI",
                "DB_PORT": "0",
                "KAFKA_PARTITIONS": "six",
            }
        )
    problems = " ".join(raised.value.problems)
    for name in ("SASL_MECHANISM", "SASL_USERNAME", "DB_PORT", "KAFKA_PARTITIONS"):
        assert name in problems
    assert len(raised.value.problems) == 4


@pytest.mark.parametrize("port", ["١٢٣", "12a", "1e3", "-5", "70000"])
def test_ports_must_be_plain_numbers_in_range(port: str) -> None:
    with pytest.raises(ConfigError):
        load_config({"DB_PORT": port})


def test_the_environment_wins_over_the_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "museum.env"
    env_file.write_text("DB_NAME=from_file\nDB_USERNAME=file_user\n")
    monkeypatch.setenv("DB_NAME", "from_environment")
    env = read_environment(env_file)
    assert (env["DB_NAME"], env["DB_USERNAME"]) == ("from_environment", "file_user")


def test_a_missing_env_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        read_environment(tmp_path / "absent.env")


def test_env_example_documents_exactly_the_variables_read() -> None:
    example = Path(__file__).resolve().parents[2] / ".env.example"
    names = {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert names == VARIABLES


# --- the database: several hosts, TLS by default across a network, bounded waits ---------------


def test_a_remote_database_is_verified_by_default_and_this_machines_is_not() -> None:
    assert load_config(HOSTED).database.sslmode == "verify-full"
    assert load_config({}).database.sslmode == "prefer"
    for here in ("127.0.0.1", "localhost", "::1", "127.1.2.3", "/var/run/postgresql"):
        assert load_config({"DB_HOST": here}).database.sslmode == "prefer", here
    assert load_config({"DB_HOST": "127.0.0.1,db.example.net"}).database.sslmode == "verify-full"
    assert load_config({**HOSTED, "DB_SSLMODE": "Require"}).database.sslmode == "require"


def test_sslmode_and_session_attrs_are_checked() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({"DB_SSLMODE": "verify_full", "DB_TARGET_SESSION_ATTRS": "writable"})
    assert len(raised.value.problems) == 2
    assert "DB_SSLMODE='verify_full' must be one of" in raised.value.problems[0]


def test_several_hosts_follow_the_writable_one() -> None:
    db = load_config({"DB_HOST": "a.example.net, b.example.net", "DB_PORT": "5432,6543"}).database
    assert (db.host, db.port, db.ports) == ("a.example.net,b.example.net", 5432, (5432, 6543))
    assert db.target_session_attrs == "read-write"
    assert db.where == "a.example.net,b.example.net:5432,6543"
    one = load_config({"DB_HOST": "a.example.net,b.example.net", "DB_PORT": "5433"}).database
    assert (one.port, one.ports) == (5433, ())
    assert load_config(HOSTED).database.target_session_attrs is None
    chosen = load_config({**HOSTED, "DB_TARGET_SESSION_ATTRS": "any"}).database
    assert chosen.target_session_attrs == "any"


@pytest.mark.parametrize(
    ("hosts", "ports"), [("a,b", "1,2,3"), ("a,,b", "5432"), ("a,b", "1,x"), ("a", "0")]
)
def test_hosts_and_ports_must_agree(hosts: str, ports: str) -> None:
    with pytest.raises(ConfigError):
        load_config({"DB_HOST": hosts, "DB_PORT": ports})


def test_silent_peers_are_noticed_within_seconds_by_default() -> None:
    settings = load_config({})
    live = settings.database.liveness
    # A silent idle connection is dead after idle + interval * count seconds.
    assert live.keepalives_idle_s + live.keepalives_interval_s * live.keepalives_count <= 15
    assert live.tcp_user_timeout_ms <= 15_000
    assert live.connect_timeout_s <= 10
    assert settings.kafka.socket_timeout_ms <= 15_000
    tuned = load_config(
        {
            "DB_KEEPALIVES_IDLE": "30",
            "DB_TCP_USER_TIMEOUT_MS": "0",
            "KAFKA_SOCKET_TIMEOUT_MS": "5000",
        }
    )
    assert tuned.database.liveness.keepalives_idle_s == 30
    assert tuned.database.liveness.tcp_user_timeout_ms == 0
    assert tuned.kafka.socket_timeout_ms == 5000
    with pytest.raises(ConfigError) as raised:
        load_config({"DB_CONNECT_TIMEOUT": "0", "DB_KEEPALIVES_COUNT": "-1"})
    assert len(raised.value.problems) == 2


def test_a_host_that_does_not_answer_is_tried_last() -> None:
    both = load_config({"DB_HOST": "a,b,c", "DB_PORT": "1,2,3"}).database
    moved = tried_last(both, "a", 1)
    assert (moved.host, moved.port, moved.ports) == ("b,c,a", 2, (2, 3, 1))
    assert tried_last(moved, "a", 1) == moved
    assert tried_last(both, "a", 2) == both  # no such server
    one_port = load_config({"DB_HOST": "a,b", "DB_PORT": "5433"}).database
    assert (tried_last(one_port, "a", 5433).host, tried_last(one_port, "a", 5433).ports) == (
        "b,a",
        (),
    )
    single = load_config(HOSTED).database
    assert tried_last(single, "db.example.net", 6543) == single
