"""The local single-node KRaft Kafka broker.

Debian packages no Kafka broker and the release tarball is out of reach, so the broker runs
from its Maven Central jars (see stack/pom.xml) with the machine's `java`. State lives in
`.stack/kafka/`: `libs/` (jars), `data/` (log dirs), the generated `server.properties`,
`broker.pid` and `broker.log`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import string
import subprocess
import time
import uuid
import warnings
from pathlib import Path

from lmnh import config
from lmnh.config import KafkaSettings, Settings
from lmnh.errors import FatalError
from lmnh.kafka_admin import wait_until_ready
from stack import STACK_DIR, StackError, print_tail
from stack.topics import ensure_topic, topic_partition_counts

TOPIC = "lmnh"

_HERE = Path(__file__).resolve().parent
POM = _HERE / "pom.xml"
TEMPLATE = _HERE / "server.properties"
LOG4J2 = _HERE / "log4j2.properties"

KAFKA_DIR = STACK_DIR / "kafka"
LIBS = KAFKA_DIR / "libs"
POM_DIGEST = KAFKA_DIR / "libs.pom-sha256"
DATA = KAFKA_DIR / "data"
CONFIG = KAFKA_DIR / "server.properties"
PID_FILE = KAFKA_DIR / "broker.pid"
LOG_FILE = KAFKA_DIR / "broker.log"

# Pinned so Maven does not look up the newest plugin version on every run.
COPY_DEPENDENCIES = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
# C1-only JIT and the serial GC start the broker ~0.5 s faster (2.0 s vs 2.5 s measured on
# 2 cores) and keep compiler/GC threads off the cores PostgreSQL and pytest need.
JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)
READY_TIMEOUT_S = 90.0
EXTERNAL_READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
MAIN_CLASS = "kafka.Kafka"
LISTENERS = (config.LOCAL_KAFKA_PLAINTEXT, config.LOCAL_KAFKA_CONTROLLER, config.LOCAL_KAFKA_SASL)


def up(settings: Settings) -> None:
    """Start the broker unless it runs already, then make sure the topic exists."""
    if not settings.kafka.local:
        print(
            f"kafka: using the external cluster at {settings.kafka.bootstrap_servers} "
            "(BOOTSTRAP_SERVERS is set); not starting a local broker"
        )
        wait_until_ready(settings.kafka, EXTERNAL_READY_TIMEOUT_S)
        _ensure_topic(settings.kafka, settings.topic_partitions)
        return
    kafka = _local_settings()
    pid = running_pid()
    if pid is None:
        resolve_jars()
        write_config()
        format_storage()
        pid, seconds = start(kafka)
        print(f"kafka: broker ready in {seconds:.1f} s (pid {pid}); log {LOG_FILE}")
    else:
        wait_until_ready(kafka, READY_TIMEOUT_S)
        print(f"kafka: broker already running (pid {pid})")
    _ensure_topic(kafka, settings.topic_partitions)


def down(settings: Settings, wipe: bool) -> None:
    """Stop the local broker (whatever BOOTSTRAP_SERVERS says); `wipe` also drops its data."""
    pid = running_pid()
    if pid is None:
        print("kafka: local broker not running")
    else:
        print(f"kafka: stopping broker (pid {pid})")
        print(f"kafka: {stop(pid)}")
    PID_FILE.unlink(missing_ok=True)
    if wipe and DATA.exists():
        shutil.rmtree(DATA)
        print(f"kafka: deleted {DATA} (every topic, message and committed offset)")
    if not settings.kafka.local:
        print(f"kafka: the external cluster at {settings.kafka.bootstrap_servers} is untouched")


def status(settings: Settings) -> bool:
    """Print what runs where; True if the broker (or external cluster) answers."""
    if settings.kafka.local:
        pid = running_pid()
        if pid is None:
            print("kafka: not running (start it with `python -m stack up kafka`)")
            return False
        kafka = _local_settings()
        print(f"kafka: running, pid {pid}, data {DATA}")
        print(
            f"  listeners: PLAINTEXT {config.LOCAL_KAFKA_PLAINTEXT}, SASL_PLAINTEXT "
            f"{config.LOCAL_KAFKA_SASL} (PLAIN, user {config.LOCAL_KAFKA_SASL_USER}), "
            f"CONTROLLER {config.LOCAL_KAFKA_CONTROLLER}"
        )
    else:
        kafka = settings.kafka
        print(f"kafka: external cluster at {kafka.bootstrap_servers} (BOOTSTRAP_SERVERS)")
    try:
        wait_until_ready(kafka, 5.0)
    except FatalError as exc:
        print(f"  not answering: {exc}")
        return False
    counts = topic_partition_counts(kafka)
    listed = ", ".join(f"{name} {n}" for name, n in counts.items())
    print(f"  topics (partitions): {listed or 'none'}")
    return True


def _local_settings() -> KafkaSettings:
    """The local broker's PLAINTEXT listener, whatever the environment says."""
    return config.load_config({}).kafka


def _ensure_topic(kafka: KafkaSettings, partitions: int) -> None:
    if ensure_topic(kafka, TOPIC, partitions):
        print(f"kafka: created topic {TOPIC!r} with {partitions} partitions")
    else:
        count = topic_partition_counts(kafka)[TOPIC]
        print(f"kafka: topic {TOPIC!r} exists ({count} partitions)")


def resolve_jars() -> None:
    """Copy the broker's runtime jars into `libs/`, unless the pom is unchanged since."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    stored = POM_DIGEST.read_text().strip() if POM_DIGEST.is_file() else None
    if stored == digest and any(LIBS.glob("*.jar")):
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) not found: install it with `sudo apt-get install maven`")
    print("kafka: resolving broker jars with Maven (the first run downloads about 45 MB)")
    shutil.rmtree(LIBS, ignore_errors=True)
    command = [mvn, "-B", "-q", "-f", str(POM), COPY_DEPENDENCIES]
    command += ["-DincludeScope=runtime", f"-DoutputDirectory={LIBS}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).splitlines()
        reason = next(
            (line for line in output if line.startswith("[ERROR]")), f"exit {result.returncode}"
        )
        raise StackError(
            f"mvn could not fetch the broker jars: {reason}; check access to Maven Central "
            "(proxies go in ~/.m2/settings.xml)"
        )
    POM_DIGEST.write_text(digest + "\n")


def write_config() -> None:
    """Render `stack/server.properties` with the ports and user from lmnh/config.py."""
    rendered = string.Template(TEMPLATE.read_text()).substitute(
        plaintext=config.LOCAL_KAFKA_PLAINTEXT,
        controller=config.LOCAL_KAFKA_CONTROLLER,
        sasl=config.LOCAL_KAFKA_SASL,
        sasl_user=config.LOCAL_KAFKA_SASL_USER,
        sasl_password=config.LOCAL_KAFKA_SASL_PASSWORD,
        log_dirs=DATA,
    )
    CONFIG.write_text(rendered)


def format_storage() -> None:
    """Format `data/` once; formatting again would fail, and reformatting would lose data."""
    if (DATA / "meta.properties").is_file():
        return
    DATA.mkdir(parents=True, exist_ok=True)
    command = _java_command("kafka.tools.StorageTool", "format", "--standalone")
    command += ["--cluster-id", _cluster_id(), "--config", str(CONFIG)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).strip().splitlines() or ["no output"]
        raise StackError(
            f"formatting {DATA} failed: {lines[-1]}; "
            "start afresh with `python -m stack down kafka --wipe`"
        )
    print(f"kafka: formatted {DATA}")


def _cluster_id() -> str:
    """Kafka's Uuid form (22 URL-safe base64 characters), made here to save a JVM start;
    a leading '-' is avoided as Kafka does, since it reads as a command-line option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _java_command(main_class: str, *args: str) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "java not found: Kafka 4.3 needs Java 17+, "
            "e.g. `sudo apt-get install openjdk-17-jre-headless`"
        )
    # Java expands the classpath wildcard itself.
    classpath = f"{LIBS}/*"
    logging = f"-Dlog4j2.configurationFile={LOG4J2}"
    return [java, *JVM_OPTIONS, logging, "-cp", classpath, main_class, *args]


def start(kafka: KafkaSettings) -> tuple[int, float]:
    """Launch the broker detached and wait until it serves metadata; (pid, seconds)."""
    for address in LISTENERS:
        host, port = _host_port(address)
        if _port_open(host, port):
            raise StackError(
                f"{address} is taken by another process; stop it (see `ss -ltnp 'sport = :{port}'`)"
            )
    started = time.monotonic()
    with warnings.catch_warnings():
        # Nobody waits for the broker once it is up (it outlives this command); dropping
        # its Popen object would otherwise raise a ResourceWarning.
        warnings.simplefilter("ignore", ResourceWarning)
        process = _launch()
        pid = process.pid
        PID_FILE.write_text(f"{pid}\n")
        print(f"kafka: starting broker (pid {pid})")
        try:
            _wait_until_serving(process, kafka, started + READY_TIMEOUT_S)
        except StackError:
            PID_FILE.unlink(missing_ok=True)
            raise
        finally:
            del process
    return pid, time.monotonic() - started


def _launch() -> subprocess.Popen[bytes]:
    """Start java in a new session, so the broker outlives this command and ignores Ctrl-C."""
    with LOG_FILE.open("wb") as log:
        return subprocess.Popen(
            _java_command(MAIN_CLASS, str(CONFIG)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=KAFKA_DIR,
            start_new_session=True,
        )


def _wait_until_serving(
    process: subprocess.Popen[bytes], kafka: KafkaSettings, deadline: float
) -> None:
    """Poll with metadata requests (the broker opens its port only once it is unfenced and
    caught up) and check between them that java still runs, so a broker that dies while
    starting fails at once rather than at the deadline."""
    while True:
        code = process.poll()
        if code is not None:
            print_tail(LOG_FILE)
            raise StackError(
                f"the broker exited with code {code} while starting; see the log above"
            )
        try:
            wait_until_ready(kafka, 1.0)
            return
        except FatalError:
            if time.monotonic() < deadline:
                continue
            print_tail(LOG_FILE)
            stop(process.pid)
            raise StackError(
                f"the broker did not answer within {READY_TIMEOUT_S:g} s; see the log above"
            ) from None


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def running_pid() -> int | None:
    """The broker's pid if the pid file names a live broker of ours, else None."""
    try:
        pid = int(PID_FILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_our_broker(pid) else None


def _is_our_broker(pid: int) -> bool:
    # The command line guards against a recycled pid; a zombie has an empty one.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MAIN_CLASS.encode() in cmdline and str(CONFIG).encode() in cmdline


def stop(pid: int) -> str:
    """SIGTERM (Kafka's shutdown hook closes the logs cleanly), SIGKILL after 30 s."""
    started = time.monotonic()
    _signal(pid, signal.SIGTERM)
    if _wait_until_gone(pid, STOP_TIMEOUT_S):
        return f"broker stopped in {time.monotonic() - started:.1f} s"
    _signal(pid, signal.SIGKILL)
    _wait_until_gone(pid, 5.0)
    return f"broker did not stop within {STOP_TIMEOUT_S:g} s and was killed"


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        os.kill(pid, signum)


def _wait_until_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _is_our_broker(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True
