"""`pip install .` works: the project's files, copied out of the checkout, installed into a
fresh virtualenv with their dependencies resolved from the package's metadata, and its console
scripts run from a directory outside the checkout, one of them against the local stack.

The copy (the files git tracks or would track, never build artefacts) keeps the install's own
build/ and *.egg-info/ out of the checkout; pip's cache keeps a repeated run quick.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
import venv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from lmnh.config import Settings
from lmnh.database import connect, create_database, drop_database, missing_tables
from tests.integration.support import NO_ENV_FILE, ROOT, clean_env

pytestmark = pytest.mark.integration

INSTALL_TIMEOUT_S = 300
COMMAND_TIMEOUT_S = 60
# Settings of the Python running the tests that must not reach the installed package's.
PYTHON_VARIABLES = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")


@dataclass(frozen=True)
class Installed:
    """The fresh virtualenv with the package installed, and a directory outside the checkout
    to run its commands from."""

    venv: Path
    outside: Path
    env: Mapping[str, str]

    def run(
        self, *command: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(command),
            cwd=self.outside,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "python"), "-c", code)


def project_files() -> list[str]:
    """The files git tracks, and the new ones it would track (not ignored), that exist."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the project's files")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    copy = base / "project"
    for name in project_files():
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    environment = base / "venv"
    venv.EnvBuilder(with_pip=True).create(environment)
    outside = base / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in clean_env().items() if k not in PYTHON_VARIABLES}
    env["PATH"] = f"{environment / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
    pip = [str(environment / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run(
        [*pip, str(copy)],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Installed(environment, outside, env)


def test_the_console_scripts_run_from_outside_the_checkout(installed: Installed) -> None:
    pipeline = installed.run("kafka-pipeline", "--help")
    assert pipeline.returncode == 0, pipeline.stderr
    for option in ("--topic", "--limit", "--logfile"):
        assert option in pipeline.stdout
    for script in ("kiosk-simulator", "lmnh-stack", "lmnh-tableau"):
        result = installed.run(script, "--help")
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert result.stdout.startswith("usage:"), script
        assert (installed.venv / "bin" / script).is_file()


def test_the_installed_package_ships_its_data_and_not_the_checkouts_tools(
    installed: Installed,
) -> None:
    result = installed.python(
        "import importlib.util, dashboard, lmnh.database, stack.kafka_broker as k\n"
        "for path in (lmnh.database.SCHEMA_FILE, lmnh.database.ROLES_FILE, dashboard.VIEWS_FILE,"
        " k.POM, k.TEMPLATE, k.LOG4J2):\n"
        "    print(path, path.is_file())\n"
        "for name in ('bench', 'fuzz', 'tests'):\n"
        "    print(name, importlib.util.find_spec(name) is not None)\n"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    site_packages = str(installed.venv / "lib")
    for line in lines[:6]:
        path, found = line.rsplit(" ", 1)
        assert found == "True", f"missing from the installed package: {path}"
        assert path.startswith(site_packages), f"{path} is not the installed copy"
    assert lines[6:] == ["bench False", "fuzz False", "tests False"]


def test_the_dashboard_needs_its_extra(installed: Installed) -> None:
    assert installed.python("import dashboard.app").returncode != 0
    result = installed.run("lmnh-dashboard", "--env-file", NO_ENV_FILE)
    assert result.returncode == 2, result.stderr
    assert "is missing; install the dashboard extra" in result.stderr
    assert "[dashboard]" in result.stderr


def test_the_installed_stack_keeps_its_state_in_the_current_directory(
    installed: Installed,
) -> None:
    """Not in site-packages: in ./.stack of wherever `lmnh-stack` is run, beside ./.env."""
    result = installed.python("import stack; print(stack.IN_CHECKOUT, stack.STACK_DIR)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", str(installed.outside / ".stack")]


@pytest.fixture
def empty_database(settings: Settings) -> Iterator[str]:
    """A fresh database on the test run's PostgreSQL server, without the schema."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    create_database(settings.database, name, schema=False)
    try:
        yield name
    finally:
        drop_database(settings.database, name)


def test_the_installed_stack_applies_its_packaged_schema(
    installed: Installed, settings: Settings, empty_database: str
) -> None:
    """`lmnh-stack schema` reads schema.sql, views.sql and roles.sql from the installed package
    and applies them; its settings come from the environment alone."""
    assert not (installed.outside / ".env").exists()
    result = installed.run("lmnh-stack", "schema", env={"DB_NAME": empty_database})
    assert result.returncode == 0, result.stderr
    assert f"schema: applied to {empty_database}" in result.stdout
    conn = connect(replace(settings.database, name=empty_database))
    try:
        assert missing_tables(conn) == []
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('exhibition_overview') IS NOT NULL")
            assert cur.fetchone() == (True,)
    finally:
        conn.close()
