"""Client settings, readiness and the topic's identity: the Kafka questions the pipeline asks
outside its consumer. Creating and deleting topics is the stack's (`stack.topics`)."""

from __future__ import annotations

import logging
import math
import threading
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
        # A silent broker (dropped packets, a frozen process) is noticed by a request left
        # unanswered: after this long the connection is closed and made anew (socket.max.fails
        # stays 1), instead of after librdkafka's 60 s. A fetch gets fetch.wait.max.ms more.
        "socket.timeout.ms": kafka.socket_timeout_ms,
        # A new connection (TCP, TLS, SASL) to a frozen broker is given up as soon, not in 30 s.
        "socket.connection.setup.timeout.ms": kafka.socket_timeout_ms,
        # Lets the OS notice a dead peer on an idle connection where its keepalive timers are
        # tuned; librdkafka sets SO_KEEPALIVE only, so the timeout above is the real bound.
        "socket.keepalive.enable": True,
        # Reconnects back off up to 2 s, not 10: a broker back from a freeze is used at once.
        "reconnect.backoff.max.ms": 2000,
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
    try:
        return _describe(admin, topic, timeout_s)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        raise TransientError(f"Kafka did not say which topic {topic!r} is: {error.str()}") from None


class TopicIdentity:
    """Confirms, off the loop's thread, that a topic's name still means the topic a run
    started on.

    Messages fetched at time t are the run's topic's if the broker, asked after t, still gives
    the run's id (a recreated topic gets a new one; ids are never reused). The question is
    asked at once when a batch waits for it, and every `every_s` otherwise, so that this
    client's own connection is proven alive like the consumer's; one left unanswered for
    `timeout_s` is presumed silent, and a new client (a new connection) asks again.
    A batch is never returned unconfirmed: it waits, at most about `timeout_s` for a silent
    connection, and for as long as the broker itself does not answer.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        expected_id: str,
        *,
        timeout_s: float = 3.0,
        every_s: float = 2.0,
    ) -> None:
        self.topic = topic
        self._kafka = kafka
        self._expected_id = expected_id
        self._timeout_s = timeout_s
        self._every_s = every_s
        self._changed = threading.Condition()
        self._confirmed_asked_at = -math.inf  # when the latest confirming answer was asked
        self._wanted = False
        self._closed = False
        self._failure: FatalError | None = None
        self._thread = threading.Thread(target=self._watch, name="lmnh-topic-id", daemon=True)
        self._thread.start()

    def confirmed(self, fetched_at: float, wait_s: float) -> bool:
        """Whether the broker, asked after monotonic time `fetched_at`, said the topic is still
        the run's; waits up to `wait_s` for that answer. Raises the FatalError of a topic
        found recreated or gone."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            while True:
                if self._failure is not None:
                    raise self._failure
                if self._confirmed_asked_at >= fetched_at:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wanted = True
                self._changed.notify_all()
                self._changed.wait(left)

    def raise_if_changed(self) -> None:
        """Raise the FatalError of a topic found recreated or gone, if it was."""
        with self._changed:
            if self._failure is not None:
                raise self._failure

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _watch(self) -> None:
        admin = admin_client(self._kafka)
        unanswered_since: float | None = None  # the first of the questions left unanswered
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._wanted or self._closed, self._every_s)
                if self._closed:
                    return
                self._wanted = False
            asked_at = time.monotonic()
            try:
                now_id = _describe(admin, self.topic, self._timeout_s)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                silent = error.code() == KafkaError._TIMED_OUT
                if unanswered_since is None:  # said once per outage, and when it ends
                    unanswered_since = asked_at
                    _log.warning(
                        "Kafka did not say which topic %r is (%s)%s; fetched messages wait",
                        self.topic,
                        error.str(),
                        ": its connection is presumed silent, asking on a new one"
                        if silent
                        else "",
                    )
                if silent:
                    admin = admin_client(self._kafka)
                else:  # an answer, if an error: ask again shortly, on the same connection
                    with self._changed:
                        self._changed.wait_for(lambda: self._closed, _RETRY_S)
                continue
            except FatalError as gone:
                self._fail(gone)
                return
            except Exception:  # never a silent end of the check, which would hold every batch
                _log.exception("the topic check failed unexpectedly; asking again shortly")
                with self._changed:
                    self._changed.wait_for(lambda: self._closed, _RETRY_S)
                continue
            if now_id != self._expected_id:
                self._fail(
                    FatalError(
                        f"topic {self.topic!r} was deleted and recreated while loading (id"
                        f" {self._expected_id}, now {now_id}): restart to load the new one from"
                        " the database's offsets",
                        ExitCode.TOPIC_MISSING,
                    )
                )
                return
            if unanswered_since is not None:
                _log.info(
                    "Kafka says which topic %r is again, after %.1f s",
                    self.topic,
                    time.monotonic() - unanswered_since,
                )
                unanswered_since = None
            with self._changed:
                self._confirmed_asked_at = asked_at
                self._changed.notify_all()

    def _fail(self, failure: FatalError) -> None:
        with self._changed:
            self._failure = failure
            self._changed.notify_all()


_RETRY_S = 0.5  # after an error answer about the topic's id, before asking again


def _describe(admin: AdminClient, topic: str, timeout_s: float) -> str:
    """The topic's id; FatalError if it is gone, KafkaException if the broker did not say."""
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)[topic]
    try:
        return str(future.result().topic_id)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise FatalError(
                f"topic {topic!r} is gone: {error.str()}", ExitCode.TOPIC_MISSING
            ) from None
        raise
