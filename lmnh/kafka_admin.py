"""Client settings, readiness and the topic's identity: the Kafka questions the pipeline asks
outside its consumer. Creating and deleting topics is the stack's (`stack.topics`)."""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from lmnh.config import KafkaSettings
from lmnh.errors import ExitCode, FatalError, TransientError


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka settings common to consumers, producers and admin clients."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
        # librdkafka resolves "localhost" to ::1 first; the local broker binds 127.0.0.1 only.
        "broker.address.family": "v4" if kafka.local else "any",
    }
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        config["sasl.username"] = kafka.sasl_username
        config["sasl.password"] = kafka.sasl_password.reveal() if kafka.sasl_password else ""
    if kafka.ssl_ca_location:
        config["ssl.ca.location"] = kafka.ssl_ca_location
    return config


# librdkafka's own log lines (connection refused, auth failures...) go through this logger
# instead of raw stderr; the application decides whether to show them. The same failures
# reach callers as exceptions below.
_log = logging.getLogger(__name__)
_log.addHandler(logging.NullHandler())

_POLL_S = 0.5  # short: an auth failure shows ~0.3 s after connecting


def admin_client(kafka: KafkaSettings, errors: list[KafkaError] | None = None) -> AdminClient:
    config = client_config(kafka)
    config["logger"] = _log
    if errors is not None:
        # Served by AdminClient.poll(): the only place the real cause of a failed request
        # (e.g. _AUTHENTICATION) shows; list_topics() itself just says _TRANSPORT.
        config["error_cb"] = errors.append
    return AdminClient(config)


def wait_until_ready(kafka: KafkaSettings, timeout_s: float) -> None:
    """Block until the cluster answers a metadata request.

    Rejected SASL credentials fail at once (librdkafka would retry them forever, and only
    `error_cb` says why); anything else is retried until `timeout_s`.
    """
    errors: list[KafkaError] = []
    admin = admin_client(kafka, errors)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            admin.list_topics(timeout=max(0.1, min(_POLL_S, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            last = exc.args[0].str()
        admin.poll(0)
        for error in errors:
            if error.code() == KafkaError._AUTHENTICATION:
                raise FatalError(
                    f"Kafka at {kafka.bootstrap_servers} rejected the SASL credentials "
                    f"({error.str()}); check SASL_USERNAME and SASL_PASSWORD",
                    ExitCode.AUTHENTICATION,
                )
        # "_ALL_BROKERS_DOWN" says less than the connect error that caused it.
        last = next((e.str() for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN), last)
        errors.clear()
        if time.monotonic() >= deadline:
            fix = (
                "start it with `python -m stack up kafka`"
                if kafka.local
                else "check BOOTSTRAP_SERVERS and that the cluster is reachable from here"
            )
            raise FatalError(
                f"Kafka at {kafka.bootstrap_servers} did not answer within {timeout_s:.3g} s "
                f"({last}); {fix}",
                ExitCode.BROKER_UNREACHABLE,
            )


def topic_id(admin: AdminClient, topic: str, timeout_s: float) -> str:
    """Kafka's id of the topic that `topic` names now. A topic deleted and recreated under the
    same name gets a new id, where its offsets may look just like the old one's."""
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)[topic]
    try:
        return str(future.result().topic_id)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise FatalError(
                f"topic {topic!r} is gone: {error.str()}", ExitCode.TOPIC_MISSING
            ) from None
        raise TransientError(f"Kafka did not say which topic {topic!r} is: {error.str()}") from None
