"""The librdkafka settings every client of the project gets: a silent broker is noticed within
the configured socket timeout, not librdkafka's 60 s."""

from __future__ import annotations

from dataclasses import replace

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from lmnh.config import load_config
from lmnh.kafka_admin import client_config


def test_a_silent_broker_is_given_up_after_the_socket_timeout() -> None:
    kafka = replace(load_config({}).kafka, socket_timeout_ms=7000)
    config = client_config(kafka)
    assert config["socket.timeout.ms"] == 7000
    assert config["socket.connection.setup.timeout.ms"] == 7000
    assert config["socket.keepalive.enable"] is True
    assert config["reconnect.backoff.max.ms"] <= 2000


def test_librdkafka_accepts_the_settings_for_consumers_and_admin_clients() -> None:
    """Creating a client connects to nothing yet: an unknown or out-of-range setting fails
    here, without a broker."""
    config = client_config(load_config({}).kafka)
    AdminClient(config)
    Consumer({**config, "group.id": "settings-check"}).close()
