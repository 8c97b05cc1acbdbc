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
