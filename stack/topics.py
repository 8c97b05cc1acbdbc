"""Topic administration for the local stack, the simulator, the benchmark and the tests:
create, delete, list and count. The pipeline never creates or deletes a topic."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec  # not re-exported for mypy
from confluent_kafka.admin._metadata import ClusterMetadata  # not re-exported for mypy
from confluent_kafka.cimpl import NewTopic

from lmnh.config import KafkaSettings
from lmnh.errors import ExitCode, FatalError
from lmnh.kafka_admin import admin_client

_REQUEST_TIMEOUT_S = 30.0


def topic_partition_counts(kafka: KafkaSettings) -> dict[str, int]:
    """Every topic the cluster reports, with its number of partitions."""
    metadata = _list_topics(admin_client(kafka))
    return {name: len(topic.partitions) for name, topic in sorted(metadata.topics.items())}


def topic_message_count(kafka: KafkaSettings, topic: str) -> int:
    """Messages the topic holds now (latest minus earliest offset, over its partitions)."""
    admin = admin_client(kafka)
    metadata = _list_topics(admin, topic).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise FatalError(f"topic {topic!r} does not exist", ExitCode.TOPIC_MISSING)
    count = 0
    ends = ((OffsetSpec.latest(), 1), (OffsetSpec.earliest(), -1))  # type: ignore[no-untyped-call]
    for spec, sign in ends:
        requests = {TopicPartition(topic, p): spec for p in metadata.partitions}
        for future in admin.list_offsets(requests, request_timeout=_REQUEST_TIMEOUT_S).values():
            count += sign * future.result().offset
    return count


def ensure_topic(kafka: KafkaSettings, topic: str, partitions: int) -> bool:
    """Create `topic` if missing; True if this call created it.

    Returns only once every partition has a leader, so producing right after cannot hit
    "unknown topic or partition" while the new topic propagates.
    """
    admin = admin_client(kafka)
    created = topic not in _list_topics(admin).topics
    if created:
        # The cluster's default replication factor: 1 on the local broker, 3 on a hosted one.
        future = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions)], request_timeout=_REQUEST_TIMEOUT_S
        )[topic]
        try:
            future.result()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise FatalError(
                    f"cannot create topic {topic!r}: {error.str()}", ExitCode.TOPIC_MISSING
                ) from None
            created = False  # another client won the race
    _wait_for_leaders(admin, topic, partitions if created else 1)
    return created


def delete_topic(kafka: KafkaSettings, topic: str) -> bool:
    """Delete `topic`; True if it existed. Returns once metadata no longer lists it, so
    the topic can be re-created straight away."""
    admin = admin_client(kafka)
    future = admin.delete_topics([topic], request_timeout=_REQUEST_TIMEOUT_S)[topic]
    try:
        future.result()
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return False
        raise FatalError(
            f"cannot delete topic {topic!r}: {error.str()}", ExitCode.UNEXPECTED
        ) from None
    deadline = time.monotonic() + _REQUEST_TIMEOUT_S
    while topic in _list_topics(admin).topics:
        if time.monotonic() >= deadline:
            raise FatalError(f"topic {topic!r} still listed after deletion", ExitCode.UNEXPECTED)
        time.sleep(0.1)
    return True


def _list_topics(admin: AdminClient, topic: str | None = None) -> ClusterMetadata:
    try:
        return admin.list_topics(topic=topic, timeout=_REQUEST_TIMEOUT_S)
    except KafkaException as exc:
        raise FatalError(
            f"Kafka metadata request failed: {exc.args[0].str()}", ExitCode.BROKER_UNREACHABLE
        ) from None


def _wait_for_leaders(admin: AdminClient, topic: str, partitions: int) -> None:
    deadline = time.monotonic() + _REQUEST_TIMEOUT_S
    while True:
        metadata = _list_topics(admin, topic).topics.get(topic)
        if (
            metadata is not None
            and metadata.error is None
            and len(metadata.partitions) >= partitions
            and all(p.leader >= 0 and p.error is None for p in metadata.partitions.values())
        ):
            return
        if time.monotonic() >= deadline:
            raise FatalError(
                f"topic {topic!r} has no leader for every partition after {_REQUEST_TIMEOUT_S:g} s",
                ExitCode.TOPIC_MISSING,
            )
        time.sleep(0.1)
