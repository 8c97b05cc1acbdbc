"""Kafka faults that do not announce themselves: the pipeline's connections to the broker
silenced (every packet dropped, nothing closed), and the broker frozen. Either way the
pipeline notices within seconds, says so, stores the next emergency within a stated bound, and
stores every message exactly once."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import string
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lmnh.config import LOCAL_KAFKA_SASL_PASSWORD, LOCAL_KAFKA_SASL_USER, load_config
from lmnh.database import connect
from lmnh.kafka_admin import wait_until_ready
from stack import kafka_broker
from stack.topics import ensure_topic
from tests.integration.silent import connections, frozen, require_nft, silenced
from tests.integration.support import (
    Target,
    copy_waits_on_a_lock,
    free_port,
    high_watermarks,
    stored_coordinates,
    wait_until,
)
from tests.integration.test_faults import end_all, stop

pytestmark = pytest.mark.integration

LOADED = 200  # messages stored before the fault
AFTER = 50  # messages produced at or after the fault
SILENCE_SAID_WITHIN_S = 10.0  # from the fault to the first log line that names it
STORED_WITHIN_S = 30.0  # from the connections silenced to the next emergency stored
FROZEN_FOR_S = 12.0  # longer than the group's session (10 s) and the socket timeout (10 s)
RECOVERED_WITHIN_S = 20.0  # from the thaw to everything stored
# The topic check's own line (its connection replaced), and librdkafka's about the consumer's
# connections (a request timed out: the connection is closed and made anew; the session).
CHECK_SILENT = re.compile(r"lmnh\.kafka_admin: Kafka did not say which topic .* presumed silent")
CONSUMER_SILENT = re.compile(r"lmnh\.kafka_source: (REQTMOUT|SESSTMOUT) .*[Tt]imed out")
BATCH_WAITS = re.compile(r"fetched messages wait for Kafka to confirm")


def emergency() -> bytes:
    """An emergency pressed at kiosk 5 now."""
    at = datetime.now(UTC).isoformat()
    return json.dumps({"at": at, "site": "5", "val": -1, "type": 1}).encode()


def broker_port(target: Target) -> int:
    return int(target.settings.kafka.bootstrap_servers.rsplit(":", 1)[1])


def said_after(output: str, since: float, pattern: re.Pattern[str]) -> float | None:
    """Seconds from Unix time `since` to the first log line after it matching `pattern`."""
    for line in output.splitlines():
        stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line)
        if stamp is None or not pattern.search(line):
            continue
        said = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(stamp[2]) / 1000
        if said >= since:
            return said - since
    return None


def about_kafka(output: str) -> str:
    """The pipeline's log without its lines about rejected messages."""
    return "\n".join(line for line in output.splitlines() if "lmnh.kafka" in line)


def assert_each_stored_once(target: Target, sent: int) -> None:
    """Every message in the topic is stored, none twice, and the database's offsets are the
    partitions' ends."""
    coordinates = stored_coordinates(target)
    assert len(coordinates) == len(set(coordinates)), "a message was stored twice"
    assert len(coordinates) == sent, f"{sent - len(coordinates)} messages were lost"
    partitions = target.settings.topic_partitions
    assert target.database_offsets() == high_watermarks(target, partitions)


def test_silenced_broker_connections_are_noticed_and_the_next_emergency_stored(
    local_kafka: None, target: Target, tmp_path: Path
) -> None:
    """The consumer's two connections (fetches, group coordinator) and the topic check's go
    silent: packets dropped, nothing closed; new connections pass."""
    require_nft()
    port = broker_port(target)
    target.produce([emergency() for _ in range(LOADED)])
    log = tmp_path / "pipeline.log"
    process = target.start_pipeline(log, "--follow")
    try:
        target.wait_until_loaded(LOADED, 60)
        wait_until(lambda: len(connections(process.pid, [port])) >= 3, 30, "3 connections")
        with silenced(process.pid, [port]) as silent:
            since, started = time.time(), time.monotonic()
            target.produce([emergency()])
            target.wait_until_loaded(LOADED + 1, STORED_WITHIN_S)
            stored_after = time.monotonic() - started
        assert process.poll() is None, log.read_text()[-3000:]
        target.produce([emergency() for _ in range(AFTER - 1)])
        target.wait_until_loaded(LOADED + AFTER, 60)
        assert stop(process) == 0, log.read_text()[-3000:]
    finally:
        end_all([process])
    output = log.read_text()
    check_said = said_after(output, since, CHECK_SILENT)
    consumer_said = said_after(output, since, CONSUMER_SILENT)
    print(
        f"{len(silent)} connections silenced: the topic check said so after {check_said} s,"
        f" the consumer after {consumer_said} s; the next emergency stored after"
        f" {stored_after:.1f} s\n{about_kafka(output)}"
    )
    assert check_said is not None and check_said < SILENCE_SAID_WITHIN_S, about_kafka(output)
    assert consumer_said is not None and consumer_said < STORED_WITHIN_S, about_kafka(output)
    assert_each_stored_once(target, LOADED + AFTER)
    assert "Traceback" not in output


@pytest.fixture
def private_broker(local_kafka: None, target: Target, tmp_path: Path) -> Iterator[Target]:
    """The target's database with a topic on a broker of this test's own (the local stack's
    jars, other ports, its own data), so that freezing it disturbs no other test."""
    if shutil.which("java") is None or not any(kafka_broker.LIBS.glob("*.jar")):
        pytest.skip("the local broker's java and jars are needed: run `python -m stack up kafka`")
    plaintext, controller, sasl = (f"127.0.0.1:{free_port()}" for _ in range(3))
    home = tmp_path / "broker"
    home.mkdir()
    config = home / "server.properties"
    config.write_text(
        string.Template(kafka_broker.TEMPLATE.read_text()).substitute(
            plaintext=plaintext,
            controller=controller,
            sasl=sasl,
            sasl_user=LOCAL_KAFKA_SASL_USER,
            sasl_password=LOCAL_KAFKA_SASL_PASSWORD,
            log_dirs=home / "data",
        )
    )
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    cluster_id = "A" + cluster_id[1:]  # never a leading '-', read as an option
    java = [
        shutil.which("java") or "java",
        *kafka_broker.JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={kafka_broker.LOG4J2}",
        "-cp",
        f"{kafka_broker.LIBS}/*",
    ]
    storage = [*java, "kafka.tools.StorageTool", "format", "--standalone"]
    storage += ["--cluster-id", cluster_id, "--config", str(config)]
    subprocess.run(storage, capture_output=True, check=True, timeout=120)
    with (home / "broker.log").open("wb") as broker_log:
        broker = subprocess.Popen(
            [*java, kafka_broker.MAIN_CLASS, str(config)],
            cwd=home,
            stdout=broker_log,
            stderr=subprocess.STDOUT,
        )
    try:
        env = {**target.env, "BOOTSTRAP_SERVERS": plaintext}
        kafka = load_config(env).kafka
        # The port opens once the broker serves (a client would log every refused connect).
        wait_until(lambda: listening(plaintext, broker), 90, "the private broker listens", 0.2)
        wait_until_ready(kafka, 30)
        ensure_topic(kafka, target.topic, target.settings.topic_partitions)
        yield replace(target, settings=replace(target.settings, kafka=kafka), env=env)
    finally:
        broker.kill()
        broker.wait()


def listening(address: str, broker: subprocess.Popen[bytes]) -> bool:
    assert broker.poll() is None, f"the private broker exited with code {broker.returncode}"
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.mark.slow  # a broker of its own to freeze: about 40 s in all
def test_a_frozen_broker_is_waited_out_and_nothing_is_lost_or_doubled(
    private_broker: Target, tmp_path: Path
) -> None:
    """The broker stopped (SIGSTOP) with batches in hand: one in the writer, held there by a
    table lock until the freeze, and the next one fetched behind it."""
    target = private_broker
    broker_pid = broker_process(target)
    target.produce([emergency() for _ in range(LOADED)])
    log = tmp_path / "pipeline.log"
    process = target.start_pipeline(log, "--follow")
    locker = connect(target.settings.database)
    try:
        target.wait_until_loaded(LOADED, 60)
        with locker.cursor() as cur:
            cur.execute(
                "LOCK TABLE rating_interaction, request_interaction, rejected_message"
                " IN ACCESS EXCLUSIVE MODE"
            )
        target.produce([emergency() for _ in range(AFTER)])
        wait_until(lambda: copy_waits_on_a_lock(target), 30, "a batch waits in the writer")
        with frozen([broker_pid]):
            since = time.time()
            locker.rollback()  # the batch in hand is stored while the broker is frozen
            time.sleep(FROZEN_FOR_S)
            assert process.poll() is None, log.read_text()[-3000:]
            stored_while_frozen = target.loaded() - LOADED
        thawed = time.monotonic()
        target.wait_until_loaded(LOADED + AFTER, RECOVERED_WITHIN_S)
        recovered_after = time.monotonic() - thawed
        target.produce([emergency()])
        target.wait_until_loaded(LOADED + AFTER + 1, RECOVERED_WITHIN_S)
        next_stored_after = time.monotonic() - thawed
        assert stop(process) == 0, log.read_text()[-3000:]
    finally:
        locker.close()
        end_all([process])
    output = log.read_text()
    waits_said = said_after(output, since, BATCH_WAITS)
    check_said = said_after(output, since, CHECK_SILENT)
    print(
        f"broker frozen {FROZEN_FOR_S:g} s: a fetched batch said to wait after {waits_said} s,"
        f" the topic check's connection said silent after {check_said} s; stored while"
        f" frozen {stored_while_frozen} of {AFTER}; all stored {recovered_after:.1f} s after"
        f" the thaw, the next emergency {next_stored_after:.1f} s after it\n{about_kafka(output)}"
    )
    assert 0 < stored_while_frozen < AFTER, "no batch was in hand, or none waited"
    assert waits_said is not None and waits_said < SILENCE_SAID_WITHIN_S, about_kafka(output)
    assert check_said is not None and check_said < SILENCE_SAID_WITHIN_S, about_kafka(output)
    assert_each_stored_once(target, LOADED + AFTER + 1)
    assert "Traceback" not in output


def broker_process(target: Target) -> int:
    """The pid of the process listening on the target's broker port."""
    port = broker_port(target)
    listening = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"pid=(\d+)", listening)
    assert match, listening
    return int(match[1])
