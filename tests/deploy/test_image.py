"""The container image (deploy/image/Containerfile), built on a Debian-made base by
tests/deploy/images.py, and a deploy rehearsal: the image's pipeline and dashboard run as
containers on the host's network against the tests' Kafka and PostgreSQL, the way an EC2 host
runs them, with their settings from environment variables only."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping

import pytest

from lmnh.config import VARIABLES
from tests.deploy import images
from tests.deploy.conftest import STAFF, STAFF_PASSWORD, container_env, get_json, sign_in
from tests.integration.support import (
    ROOT,
    Target,
    assert_exactly_once,
    consumed,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.integration

# The official python:3.11-slim image is about this size; the Debian-made base is close to it.
MAX_IMAGE_MB = 200
PINNED = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)", re.MULTILINE)


def run_image(
    image: str, *command: str, env: Mapping[str, str] | None = None, network: str = "none"
) -> subprocess.CompletedProcess[str]:
    """A program of the image in a throw-away container; `env` is all the settings it gets."""
    settings = [arg for name, value in (env or {}).items() for arg in ("-e", f"{name}={value}")]
    return images.podman(
        "run",
        "--rm",
        *images.LIMITS,
        f"--network={network}",
        *settings,
        image,
        *command,
        check=False,
        timeout=120,
    )


def python_in(image: str, code: str) -> str:
    result = run_image(image, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_image_runs_as_a_user_of_its_own_with_no_settings_inside(project_image: str) -> None:
    inspect = json.loads(images.podman("image", "inspect", project_image).stdout)[0]
    config = inspect["Config"]
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["kafka-pipeline", "--follow"]
    baked = {entry.split("=", 1)[0] for entry in config["Env"]}
    assert not baked & VARIABLES, f"settings baked into the image: {baked & VARIABLES}"
    assert "PIP_CERT" not in baked
    assert run_image(project_image, "id", "-u").stdout.strip() == "10001"
    # No settings file and no build-time CA anywhere; nothing writable for its user in the
    # program's folders.
    found = run_image(
        project_image,
        "sh",
        "-c",
        "find / -xdev \\( -name .env -o -name pip-ca \\) -print; find /opt/lmnh -writable -print",
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout == ""


def test_entry_points_and_london_time_without_the_os_zone_data(project_image: str) -> None:
    for program in ("kafka-pipeline", "lmnh-dashboard", "lmnh-stack", "kiosk-simulator"):
        result = run_image(project_image, program, "--help")
        assert result.returncode == 0, f"{program}: {result.stderr}"
    assert "--metrics-port" in run_image(project_image, "kafka-pipeline", "--help").stdout
    # The Debian-made base, like python:3.11-slim, has no /usr/share/zoneinfo: the museum's
    # clock comes from the PyPI tzdata package the project depends on.
    assert run_image(project_image, "test", "-e", "/usr/share/zoneinfo").returncode == 1
    out = python_in(
        project_image,
        "from datetime import datetime, UTC; from lmnh.museum import LONDON;"
        "print(datetime(2026, 7, 1, 11, tzinfo=UTC).astimezone(LONDON).isoformat(),"
        " datetime(2026, 12, 1, 11, tzinfo=UTC).astimezone(LONDON).isoformat())",
    )
    assert out.split() == ["2026-07-01T12:00:00+01:00", "2026-12-01T11:00:00+00:00"]


def test_the_image_holds_exactly_the_lock(project_image: str) -> None:
    """pip install --require-hashes -r requirements.lock, then the project with --no-deps:
    every distribution at the lock's version, nothing else (pip and setuptools removed)."""
    lock = (ROOT / "requirements.lock").read_text()
    expected = {name.lower().replace("_", "-"): version for name, version in PINNED.findall(lock)}
    expected["lmnh-pipeline"] = "0.1.0"
    listed = python_in(
        project_image,
        "import importlib.metadata as m, json;"
        "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version"
        " for d in m.distributions()}))",
    )
    assert json.loads(listed) == expected


def test_settings_come_from_the_environment(project_image: str) -> None:
    """No ./.env in the image is fine; a variable of .env.example set on the container is read
    (a bad one is a configuration error, exit 2, which systemd does not restart)."""
    result = run_image(
        project_image,
        "kafka-pipeline",
        "--limit",
        "1",
        env={"KAFKA_MAX_POLL_INTERVAL_MS": "5", "SECURITY_PROTOCOL": "CARRIER_PIGEON"},
    )
    assert result.returncode == 2, result.stderr
    assert "KAFKA_MAX_POLL_INTERVAL_MS='5'" in result.stderr
    assert "SECURITY_PROTOCOL='CARRIER_PIGEON'" in result.stderr


def test_the_schema_is_applied_by_a_one_shot_container(
    project_image: str, bare_target: Target
) -> None:
    """`lmnh-stack schema` from the image on an empty database: tables, the dashboard's views
    and the roles' grants, with nothing but the image (no checkout, no psql); twice is fine."""
    env = container_env(bare_target.settings)
    for _ in range(2):
        result = run_image(project_image, "lmnh-stack", "schema", env=env, network="host")
        assert result.returncode == 0, result.stderr
        assert f"schema: applied to {bare_target.topic} on" in result.stdout
    tables = {
        name
        for (name,) in bare_target.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    assert {"rating_interaction", "request_interaction", "rejected_message", "kafka_offset"} <= (
        tables
    )
    assert {"exhibition_overview", "rating_hourly", "request_quarter_hourly"} <= tables
    # lmnh_dashboard's too: the AWS host grants it to the dashboard's login (deploy/aws/).
    granted = bare_target.query(
        "SELECT DISTINCT grantee FROM information_schema.role_table_grants"
        " WHERE grantee IN ('lmnh_pipeline', 'lmnh_reader', 'lmnh_dashboard')"
    )
    assert {grantee for (grantee,) in granted} == {"lmnh_pipeline", "lmnh_reader", "lmnh_dashboard"}


def test_the_image_size(project_image: str) -> None:
    size = images.image_size_mb(project_image)
    print(f"{project_image}: {size:.0f} MB")
    assert size < MAX_IMAGE_MB


# --- the deploy rehearsal ---------------------------------------------------------------------


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers a test starts; removed at the end, whatever happened."""
    started: list[str] = []
    yield started
    for name in started:
        images.podman("rm", "--force", "--time", "5", name, check=False)


def start(containers: list[str], image: str, env: Mapping[str, str], *command: str) -> str:
    name = f"lmnh-test-{uuid.uuid4().hex[:10]}"
    containers.append(name)  # removed at the end even if it fails to start
    settings = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    images.podman(
        "run",
        "--detach",
        "--name",
        name,
        *images.LIMITS,
        "--network=host",
        *settings,
        image,
        *command,
    )
    return name


def logs(name: str) -> str:
    result = images.podman("logs", name, check=False)
    return result.stdout + result.stderr


def test_deploy_rehearsal(project_image: str, bare_target: Target, containers: list[str]) -> None:
    """A first deployment on an empty database, as the EC2 host runs it: the schema by the
    image's one-shot command, then the pipeline and the dashboard as containers on the host's
    network, settings from environment variables alone. Simulated kiosk traffic goes in; the
    database holds exactly what the simulator's broker acknowledged, the dashboard's API
    answers with it, and a stop (SIGTERM) ends the pipeline cleanly (exit 0)."""
    target = bare_target
    env = container_env(target.settings, KAFKA_GROUP_ID=target.topic)
    schema = run_image(project_image, "lmnh-stack", "schema", env=env, network="host")
    assert schema.returncode == 0, schema.stderr

    metrics_port, dashboard_port = free_port(), free_port()
    pipeline = start(
        containers,
        project_image,
        env,
        "kafka-pipeline",
        "--follow",
        "--from-beginning",
        "--topic",
        target.topic,
        "--metrics-port",
        str(metrics_port),
    )
    dashboard = start(
        containers,
        project_image,
        env,
        "lmnh-dashboard",
        "--host",
        "127.0.0.1",
        "--port",
        str(dashboard_port),
    )
    report = target.history(20_000, 14)
    assert report["failed"] == 0
    target.wait_until_loaded(report["sent"], timeout_s=120)
    assert_exactly_once(target, report)

    # The first account, as the operator makes it: the image's own lmnh-accounts.
    added = images.podman(
        "run",
        "--rm",
        "-i",
        *images.LIMITS,
        "--network=host",
        *[arg for key, value in env.items() for arg in ("-e", f"{key}={value}")],
        project_image,
        "lmnh-accounts",
        "add",
        STAFF,
        "--name",
        "Deploy check",
        "--role",
        "exhibitions",
        "--password-stdin",
        check=False,
        timeout=120,
        stdin=f"{STAFF_PASSWORD}\n",
    )
    assert added.returncode == 0, added.stderr
    base = f"http://127.0.0.1:{dashboard_port}"
    api = f"{base}/api"
    wait_until(lambda: get_json(f"{base}/healthz")[0] == 200, 60, "the dashboard answers", 0.5)
    cookie = sign_in(base)
    _, meta = get_json(f"{api}/meta", cookie)
    assert meta["freshness"]["latest_interaction_at"] is not None
    assert {e["public_id"] for e in meta["exhibitions"]} >= set(report["ratings"])
    status, chart = get_json(f"{api}/charts/popularity?from=2026-01-01&to=2026-12-31", cookie)
    assert status == 200, chart
    ratings: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    for public_id, values in report["ratings"].items():
        ratings[public_id] += sum(values.values())
    for public_id, values in report["requests"].items():
        requests[public_id] += sum(values.values())
    shown = {row["public_id"]: (row["ratings"], row["requests"]) for row in chart["rows"]}
    assert shown == {p: (ratings[p], requests[p]) for p in shown}
    assert sum(r for r, _ in shown.values()) == sum(ratings.values()) > 0

    started = time.monotonic()
    images.podman("stop", "--time", "90", pipeline)
    stopped_in = time.monotonic() - started
    state = json.loads(images.podman("inspect", pipeline).stdout)[0]["State"]
    output = logs(pipeline)
    assert state["ExitCode"] == 0, output[-3000:]
    assert "SIGTERM: stopping after the batch in hand" in output
    summary = [line for line in output.splitlines() if line.startswith("consumed ")]
    assert summary, output[-3000:]
    assert consumed(summary[-1]) == report["sent"]
    print(f"rehearsal: {report['sent']} messages loaded; pipeline stopped in {stopped_in:.1f} s")
    for name, said in ((pipeline, output), (dashboard, logs(dashboard))):
        where = said.find("Traceback")
        assert where < 0, f"{name}: {said[max(0, where - 500) : where + 3000]}"
