"""The systemd units of deploy/systemd/: checked by `systemd-analyze verify` where their
programs exist (inside the image), scored by `systemd-analyze security`, and run for real under
systemd as PID 1 in a container (podman --systemd=always), against the tests' Kafka and
PostgreSQL on the host's network.

The units are bind-mounted from the checkout, and so is the host's caddy (Debian's, the same
suite as the image's) for the TLS proxy's unit. The running tests add one drop-in per unit,
which appends `--topic` (a fresh topic per test) and a free port to the unit's own command
line; everything else (sandbox, restart and stop policy, environment files) is the unit's.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from bench.proxy import throwaway_certificates
from bench.proxy import unavailable as proxy_unavailable
from tests.deploy import images
from tests.deploy.conftest import STAFF, STAFF_PASSWORD, container_env, get_json, sign_in
from tests.integration.support import (
    Target,
    assert_exactly_once,
    free_port,
    start_live_simulator,
    stop_simulator,
    wait_until,
)

pytestmark = pytest.mark.integration

UNITS = sorted(images.UNITS.glob("*.service"))
TIMERS = sorted(images.UNITS.glob("*.timer"))  # verified and mounted with their services
UNIT_DIR = "/etc/systemd/system"
# The exposure `systemd-analyze security` gives each unit (0 best, 10 worst): 1.1, "OK"; the
# proxy's 1.4, "OK", for the one capability it needs (ports 80 and 443) and no PrivateUsers.
# --threshold takes it times ten.
EXPOSURE = {"lmnh-proxy.service": 1.4}
DEFAULT_EXPOSURE = 1.1
CADDY = Path("/usr/bin/caddy")
CADDYFILE = images.ROOT / "deploy" / "caddy" / "Caddyfile"
PIPELINE_STOP_TIMEOUT_S = 90


def mounts() -> list[str]:
    """The checkout's units in place, and systemd's tools' output plain (no colours, no
    hyperlinks)."""
    units = [
        arg for unit in [*UNITS, *TIMERS] for arg in ("-v", f"{unit}:{UNIT_DIR}/{unit.name}:ro")
    ]
    if CADDY.exists():
        units += ["-v", f"{CADDY}:{CADDY}:ro"]
    return [*units, "-e", "SYSTEMD_COLORS=0", "-e", "SYSTEMD_URLIFY=0"]


def exec_start(unit: str) -> str:
    """The unit's own command line, as written in deploy/systemd/."""
    text = (images.UNITS / unit).read_text()
    [line] = re.findall(r"^ExecStart=(.+)$", text, re.MULTILINE)
    return line


def test_the_units_are_the_ones_expected() -> None:
    assert [unit.name for unit in UNITS] == [
        "lmnh-dashboard.service",
        "lmnh-maintain.service",
        "lmnh-pipeline.service",
        "lmnh-proxy.service",
        "lmnh-schema.service",
    ]
    assert [timer.name for timer in TIMERS] == ["lmnh-maintain.timer"]


def test_systemd_analyze_verify_inside_the_image(systemd_image: str) -> None:
    """Clean where the units run (every program they name exists there), and the check is
    not vacuous: on a base without the virtualenv it names each missing program."""
    if not CADDY.exists():
        pytest.skip(f"{CADDY} is missing (Debian's caddy; ./run_tests.sh installs it)")
    paths = [f"{UNIT_DIR}/{unit.name}" for unit in [*UNITS, *TIMERS]]
    result = images.podman(
        "run", "--rm", *images.LIMITS, "--network=none", *mounts(), systemd_image,
        "systemd-analyze", "verify", *paths, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    without_venv = images.base_tag(images.SYSTEMD_PACKAGES)
    result = images.podman(
        "run", "--rm", *images.LIMITS, "--network=none", *mounts(), without_venv,
        "systemd-analyze", "verify", *paths, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    for program in ("kafka-pipeline", "lmnh-dashboard", "lmnh-schema"):
        assert f"Command /opt/lmnh/venv/bin/{program} is not executable" in result.stderr


def test_systemd_analyze_security_score(systemd_image: str) -> None:
    for unit in UNITS:
        limit = EXPOSURE.get(unit.name, DEFAULT_EXPOSURE)
        result = images.podman(
            "run", "--rm", *images.LIMITS, "--network=none", *mounts(), systemd_image,
            "systemd-analyze", "security", "--offline=true", f"--threshold={round(limit * 10)}",
            f"{UNIT_DIR}/{unit.name}", check=False,
        )  # fmt: skip
        score = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
        assert score, result.stdout + result.stderr
        print(f"{unit.name}: exposure {score.group(1)}")
        assert result.returncode == 0, result.stdout[-3000:]
        assert float(score.group(1)) <= limit


class Systemd:
    """A container whose PID 1 is systemd, with the units and /etc/lmnh of a test."""

    def __init__(self, image: str, etc_lmnh: Path) -> None:
        self.name = f"lmnh-systemd-{uuid.uuid4().hex[:10]}"
        self.image = image
        self.etc_lmnh = etc_lmnh

    def boot(self) -> None:
        images.podman(
            "run", "--detach", "--name", self.name, "--systemd=always", *images.LIMITS,
            "--network=host", *mounts(), "-v", f"{self.etc_lmnh}:/etc/lmnh:ro", self.image,
        )  # fmt: skip

        # Until systemd listens, systemctl says "offline" at once; then --wait waits for the
        # boot to finish.
        def booted() -> bool:
            state = self.run("systemctl", "is-system-running", "--wait", check=False).stdout
            return state.strip() in ("running", "degraded")

        wait_until(booted, 60, f"systemd in {self.name} finishes booting", 0.2)

    def run(
        self, *command: str, check: bool = True, timeout: float = 150
    ) -> subprocess.CompletedProcess[str]:
        return images.podman("exec", self.name, *command, check=check, timeout=timeout)

    def drop_in(self, unit: str, *extra: str) -> None:
        """Append `extra` to the unit's own ExecStart."""
        command = " ".join([exec_start(unit), *extra])
        self.drop_in_text(unit, f"[Service]\nExecStart=\nExecStart={command}\n")

    def drop_in_text(self, unit: str, text: str) -> None:
        folder = f"{UNIT_DIR}/{unit}.d"
        self.run("sh", "-c", f"mkdir -p {folder} && printf '%s' '{text}' > {folder}/test.conf")
        self.run("systemctl", "daemon-reload")

    def show(self, unit: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *match: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", *match).stdout

    def remove(self) -> None:
        images.podman("rm", "--force", "--time", "30", self.name, check=False, timeout=120)


@pytest.fixture
def etc_lmnh(tmp_path: Path) -> Path:
    folder = tmp_path / "etc-lmnh"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def boot(systemd_image: str, etc_lmnh: Path) -> Iterator[Callable[[], Systemd]]:
    """Boots containers under systemd for a test; removes them at its end."""
    booted: list[Systemd] = []

    def start() -> Systemd:
        machine = Systemd(systemd_image, etc_lmnh)
        booted.append(machine)  # removed at the end even if its boot fails
        machine.boot()
        return machine

    yield start
    for machine in booted:
        machine.remove()


def write_env(etc_lmnh: Path, name: str, settings: dict[str, str]) -> None:
    """An environment file as the host keeps it: .env.example's KEY=value lines."""
    path = etc_lmnh / name
    path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    path.chmod(0o600)


def resumed_at(journal: str) -> dict[int, int]:
    """Where a run's partitions started, by its log: `T[p]@offset (database)`."""
    found: dict[int, int] = {}
    for partition, offset in re.findall(r"\[(\d+)\]@(\d+) \(database\)", journal):
        found.setdefault(int(partition), int(offset))
    return found


def pipeline_sessions(target: Target) -> int:
    rows = target.query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        " AND application_name = 'lmnh-pipeline'",
        (target.topic,),
    )
    return int(rows[0][0])


UNIT = "lmnh-pipeline.service"


def test_pipeline_under_systemd_is_killed_restarted_and_loads_exactly_once(
    boot: Callable[[], Systemd], etc_lmnh: Path, bare_target: Target, tmp_path: Path
) -> None:
    """A first start on an empty database (the schema unit runs first), live kiosk traffic,
    SIGKILL of the service's main process, a restart by systemd that resumes at the
    database's offsets, a graceful stop (one SIGTERM, the batch in hand finished, exit 0), a
    start again, and in the end each acknowledged message stored exactly once; then the
    dashboard's unit serves the data."""
    target = bare_target
    write_env(etc_lmnh, "lmnh.env", container_env(target.settings, KAFKA_GROUP_ID=target.topic))
    machine = boot()
    metrics_port = str(free_port())
    machine.drop_in(UNIT, "--topic", target.topic, "--metrics-port", metrics_port)
    effective = machine.show(UNIT)
    assert effective["KillMode"] == "mixed"
    assert effective["KillSignal"] == str(int(signal.SIGTERM))
    assert effective["TimeoutStopUSec"] == "1min 30s"  # PIPELINE_STOP_TIMEOUT_S
    assert effective["Restart"] == "on-failure"
    assert effective["RestartPreventExitStatus"] == "2"
    assert effective["DynamicUser"] == "yes"

    machine.run("systemctl", "start", UNIT)  # pulls in lmnh-schema.service, ordered first
    schema = machine.show("lmnh-schema.service")
    assert (schema["ActiveState"], schema["Result"]) == ("active", "success")
    assert "schema: applied to" in machine.journal("-u", "lmnh-schema.service")
    # What the daily timer starts, in the same sandbox: the months ahead made, exit 0.
    machine.run("systemctl", "start", "lmnh-maintain.service")
    maintained = machine.show("lmnh-maintain.service")
    assert (maintained["Result"], maintained["ExecMainStatus"]) == ("success", "0")
    assert re.search(
        r"^maintenance: \d+ made", machine.journal("-u", "lmnh-maintain.service"), re.MULTILINE
    )

    simulator_log = tmp_path / "simulator.log"
    simulator = start_live_simulator(target, simulator_log, rate=1500, seed=21)
    try:
        wait_until(lambda: target.loaded() > 0, 60, "the service stored a first batch", 0.2)
        at_kill = kill_and_see_it_resume(machine, target)
        stop_seconds = stop_gracefully(machine)
        machine.run("systemctl", "start", UNIT)
    finally:
        report = stop_simulator(simulator, simulator_log)
    assert report["failed"] == 0
    target.wait_until_loaded(report["sent"], timeout_s=120)
    assert_exactly_once(target, report)
    print(
        f"systemd: {report['sent']} messages acknowledged, SIGKILL with {sum(at_kill.values())}"
        f" loaded, restarted by systemd at the database's offsets {at_kill}, stopped gracefully in"
        f" {stop_seconds:.1f} s, started again: each message stored once"
    )
    dashboard_serves_the_data(machine, etc_lmnh)
    machine.run("systemctl", "stop", UNIT)


def kill_and_see_it_resume(machine: Systemd, target: Target) -> dict[int, int]:
    """SIGKILL the service's main process mid-run; systemd restarts it (Restart=on-failure)
    and the new run starts each partition at the database's offset. Returns those offsets."""
    first_pid = machine.show(UNIT)["MainPID"]
    assert_sandboxed(machine, first_pid)
    machine.run("systemctl", "kill", "--kill-who=main", "--signal=SIGKILL", UNIT)
    # Once its sessions are gone (their transaction rolled back), nothing writes until the
    # restart: the database's offsets now are where the next run must start.
    wait_until(lambda: pipeline_sessions(target) == 0, 30, "the killed run's sessions end")
    at_kill = target.database_offsets()
    assert machine.show(UNIT)["NRestarts"] == "0", "restarted before the offsets were read"

    def restarted() -> bool:
        state = machine.show(UNIT)
        return state["NRestarts"] == "1" and state["ActiveState"] == "active"

    wait_until(restarted, 30, "systemd restarts the service", 0.5)
    second_pid = machine.show(UNIT)["MainPID"]
    assert second_pid not in ("0", first_pid)
    wait_until(
        lambda: resumed_at(machine.journal(f"_PID={second_pid}")) != {},
        60,
        "the restarted run is assigned its partitions",
        0.5,
    )
    assert resumed_at(machine.journal(f"_PID={second_pid}")) == at_kill
    loaded = sum(at_kill.values())
    wait_until(lambda: target.loaded() > loaded, 60, "the restarted run loads", 0.2)
    return at_kill


def assert_sandboxed(machine: Systemd, pid: str) -> None:
    """The unit's sandbox is in force on its running process: a dynamic user, no
    capabilities, no new privileges, a seccomp filter, a read-only root."""
    status = dict(
        line.split(":\t", 1)
        for line in machine.run("cat", f"/proc/{pid}/status").stdout.splitlines()
        if ":\t" in line
    )
    uid = int(status["Uid"].split()[0])
    assert 61184 <= uid <= 65519, status["Uid"]  # systemd's range for dynamic users
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0
    assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
    mounts = machine.run("cat", f"/proc/{pid}/mountinfo").stdout.splitlines()
    [root] = [line for line in mounts if line.split()[4] == "/"]
    assert " ro," in root, root


def stop_gracefully(machine: Systemd) -> float:
    """`systemctl stop` while traffic flows: one SIGTERM, the batch in hand stored, exit 0,
    well within TimeoutStopSec (no SIGKILL). Returns how long the stop took."""
    pid = machine.show(UNIT)["MainPID"]
    started = time.monotonic()
    machine.run("systemctl", "stop", UNIT)
    seconds = time.monotonic() - started
    stopped = machine.show(UNIT)
    said = machine.journal(f"_PID={pid}")
    assert (stopped["Result"], stopped["ExecMainStatus"]) == ("success", "0"), said[-3000:]
    assert said.count("SIGTERM: stopping after the batch in hand") == 1, said[-3000:]
    assert re.search(r"^consumed \d+", said, re.MULTILINE), said[-3000:]
    assert seconds < PIPELINE_STOP_TIMEOUT_S
    return seconds


def dashboard_serves_the_data(machine: Systemd, etc_lmnh: Path) -> None:
    """The dashboard's unit, in the same sandbox, answers with the loaded data; then through
    the proxy's unit, over HTTPS."""
    port = free_port()
    machine.drop_in("lmnh-dashboard.service", "--port", str(port))
    machine.run("systemctl", "start", "lmnh-dashboard.service")
    base = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: get_json(f"{base}/healthz")[0] == 200, 60, "the dashboard's unit answers", 0.5
    )
    # The first account, made on the host as docs/deploy.md says, with the installed command.
    machine.run(
        "sh",
        "-c",
        f"echo '{STAFF_PASSWORD}' | /opt/lmnh/venv/bin/lmnh-accounts --env-file /etc/lmnh/lmnh.env"
        f" add {STAFF} --name 'Deploy check' --role operations --password-stdin",
    )
    status, meta = get_json(f"{base}/api/meta", sign_in(base))
    # The batches it stored, not an interaction: when the museum is closed the live kiosks'
    # messages are all out of hours, stored as rejected.
    assert status == 200, meta
    assert meta["freshness"]["last_loaded_at"] is not None
    if proxy_unavailable() is None:
        proxy_serves_the_dashboard(machine, etc_lmnh, port)
    machine.run("systemctl", "stop", "lmnh-dashboard.service")
    assert machine.show("lmnh-dashboard.service")["Result"] == "success"


def proxy_serves_the_dashboard(machine: Systemd, etc_lmnh: Path, dashboard_port: int) -> None:
    """lmnh-proxy.service as a museum with a certificate of its own sets it up (the
    Caddyfile, proxy.env and the certificate in /etc/lmnh, the files handed over as
    credentials), on free ports: HTTPS with HSTS, plain HTTP redirected; the running caddy
    holds no capability but the one to bind a low port."""
    tls = throwaway_certificates(etc_lmnh.parent / "tls")
    shutil.copy(tls.cert, etc_lmnh / "tls.crt")
    shutil.copy(tls.key, etc_lmnh / "tls.key")
    shutil.copy(CADDYFILE, etc_lmnh / "Caddyfile")
    https_port, http_port = free_port(), free_port()
    write_env(
        etc_lmnh,
        "proxy.env",
        {
            "LMNH_SITE": f"localhost:{https_port}",
            "LMNH_HTTP_PORT": str(http_port),
            "LMNH_TLS": "files",
            "LMNH_DASHBOARD": f"127.0.0.1:{dashboard_port}",
        },
    )
    unit = "lmnh-proxy.service"
    # PrivateUsers here only: this container's systemd may make a mount namespace only inside
    # a user namespace of its own (it has no CAP_SYS_ADMIN), and the test's ports are high.
    machine.drop_in_text(
        unit,
        "[Service]\nPrivateUsers=yes\nLoadCredential=tls.crt:/etc/lmnh/tls.crt\n"
        "LoadCredential=tls.key:/etc/lmnh/tls.key\n",
    )
    machine.run("systemctl", "start", unit)
    site = f"https://localhost:{https_port}"
    context = tls.client_context()

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{site}/healthz", timeout=5, context=context):  # noqa: S310
                return True
        except OSError:
            return False

    wait_until(answers, 30, "the proxy's unit answers over HTTPS", 0.2)
    with urllib.request.urlopen(f"{site}/healthz", timeout=10, context=context) as answer:  # noqa: S310
        assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
    plain = f"http://localhost:{http_port}/safety"
    with pytest.raises(urllib.error.HTTPError) as redirect:
        urllib.request.build_opener(NoRedirect).open(plain, timeout=10)
    assert (redirect.value.code, redirect.value.headers["Location"]) == (308, f"{site}/safety")
    redirect.value.close()
    pid = machine.show(unit)["MainPID"]
    status = machine.run("cat", f"/proc/{pid}/status").stdout
    caps = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(caps["CapEff"], 16) == 1 << 10  # CAP_NET_BIND_SERVICE alone
    assert 61184 <= int(caps["Uid"].split()[0]) <= 65519  # a dynamic user
    machine.run("systemctl", "stop", unit)
    assert machine.show(unit)["Result"] == "success"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects as answers, not followed."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def test_a_configuration_error_is_not_restarted(
    boot: Callable[[], Systemd], etc_lmnh: Path, bare_target: Target
) -> None:
    """Exit 2 (configuration) ends the units as failed, with no restart scheduled: a restart
    cannot fix a wrong setting."""
    settings = container_env(bare_target.settings, KAFKA_MAX_POLL_INTERVAL_MS="5")
    write_env(etc_lmnh, "lmnh.env", settings)
    machine = boot()
    machine.drop_in("lmnh-pipeline.service", "--topic", bare_target.topic)
    machine.run("systemctl", "start", "lmnh-pipeline.service", check=False)

    def failed(unit: str) -> bool:
        return machine.show(unit)["ActiveState"] == "failed"

    for unit in ("lmnh-schema.service", "lmnh-pipeline.service"):
        wait_until(partial(failed, unit), 30, f"{unit} fails", 0.2)
        state = machine.show(unit)
        assert (state["Result"], state["ExecMainStatus"], state["NRestarts"]) == (
            "exit-code",
            "2",
            "0",
        )
        assert "KAFKA_MAX_POLL_INTERVAL_MS='5'" in machine.journal("-u", unit)
