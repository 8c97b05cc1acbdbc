"""Private PostgreSQL servers: a primary and its streaming-replication standby, for a failover
test, or one server alone (with TLS, for the database's TLS test).

Each runs from the machine's (Debian) server binaries, found as `python -m stack` finds them, as
the `postgres` OS user when the tests run as root, each with its own data directory on a free
port of 127.0.0.1. The standby is made by `pg_basebackup -R` after the test's database and
schema exist on the primary, so it inherits them (and the roles). Replication is asynchronous,
as a self-managed standby's usually is, or synchronous (a commit returns once the standby has
it on disk), as RDS Multi-AZ's is. Never the shared local server: a test may freeze the primary
whole.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from dashboard import VIEWS_FILE
from lmnh.config import DatabaseSettings, load_config
from lmnh.database import connect, create_database
from stack import postgres_server
from stack.postgres_server import Cluster
from tests.integration.silent import process_tree
from tests.integration.support import free_port, wait_until

HOST = "127.0.0.1"
SUPERUSER = "lmnh"
# Small: two more servers on a machine shared with the stack's own.
SERVER_SETTINGS = ("shared_buffers=32MB", "max_connections=40", "listen_addresses=127.0.0.1")
READY_TIMEOUT_S = 60


@dataclass(frozen=True)
class Server:
    """One private server: its files, port and superuser's password."""

    cluster: Cluster
    port: int
    password: str

    @property
    def pid(self) -> int:
        """The postmaster's process id; its backends and walsenders are its children."""
        return int((self.cluster.data / "postmaster.pid").read_text().split()[0])

    def database(self, name: str) -> DatabaseSettings:
        """Settings for database `name` on this server alone, as the superuser."""
        env = {
            "DB_HOST": HOST,
            "DB_PORT": str(self.port),
            "DB_NAME": name,
            "DB_USERNAME": SUPERUSER,
            "DB_PASSWORD": self.password,
        }
        return load_config(env).database

    def ask(self, statement: str) -> list[tuple[object, ...]]:
        """Run one statement in the `postgres` database (autocommit) and return its rows."""
        conn = connect(self.database("postgres"))
        conn.autocommit = True
        with closing(conn), conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else []

    def in_recovery(self) -> bool:
        return self.ask("SELECT pg_is_in_recovery()") == [(True,)]

    def walsenders(self) -> list[int]:
        """Process ids of the walsenders streaming to a standby."""
        rows = self.ask("SELECT pid FROM pg_stat_replication")
        return [pid for (pid,) in rows if isinstance(pid, int)]

    def promote(self) -> None:
        """Make a standby a primary (pg_ctl promote, waiting until it accepts writes)."""
        _run(self.cluster, "pg_ctl", "promote", "--wait", f"--pgdata={self.cluster.data}")

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend: a frozen old primary must never come back
        as a second primary (a fenced host, as a managed failover leaves it)."""
        for pid in process_tree(self.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if (self.cluster.data / "postmaster.pid").is_file():
            self.cluster.run(
                "pg_ctl", "stop", "--wait", "--mode=immediate", f"--pgdata={self.cluster.data}"
            )


@dataclass(frozen=True)
class Pair:
    """A primary and the standby streaming from it."""

    primary: Server
    standby: Server
    synchronous: bool

    @property
    def hosts(self) -> dict[str, str]:
        """The project's settings naming both servers, primary first (libpq's multi-host
        form), with the superuser's login."""
        return {
            "DB_HOST": f"{HOST},{HOST}",
            "DB_PORT": f"{self.primary.port},{self.standby.port}",
            "DB_USERNAME": SUPERUSER,
            "DB_PASSWORD": self.primary.password,
        }


def require_server() -> Cluster:
    """The machine's server binaries and the user to run them as, or skip saying why."""
    found = postgres_server._cluster()
    if found is None:
        pytest.skip(
            "no PostgreSQL server binaries (Debian's postgresql package) or no `postgres` user"
            " to run them: this test needs a private server of its own"
        )
    return found


@contextmanager
def private_server(*, tls: tuple[Path, Path] | None = None) -> Iterator[Server]:
    """One private server, stopped and deleted afterwards; with `tls` (a certificate and its
    key) it speaks TLS as well as plain TCP."""
    with _scratch("lmnh-server-") as (base, root):
        server = _server(base, root / "server", secrets.token_urlsafe(16))
        _initdb(server)
        with _running(server, *(_tls_settings(server, *tls) if tls else ())):
            yield server


@contextmanager
def replicated_pair(name: str, *, synchronous: bool = False) -> Iterator[Pair]:
    """A primary holding database `name` (schema, dashboard views and roles applied) and a
    standby streaming from it, `synchronous` or not, both stopped and deleted afterwards."""
    with _scratch("lmnh-failover-") as (base, root):
        password = secrets.token_urlsafe(16)
        primary = _server(base, root / "primary", password)
        _initdb(primary)
        with _running(primary):
            create_database(primary.database("postgres"), name, extensions=[VIEWS_FILE])
            standby = _server(base, root / "standby", password)
            _run(
                standby.cluster,
                "pg_basebackup",
                f"--pgdata={standby.cluster.data}",
                # The primary's socket, where initdb's pg_hba trusts replication by its own user.
                f"--host={primary.cluster.home}",
                f"--port={primary.port}",
                f"--username={SUPERUSER}",
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-sync",
            )
            with _running(standby):
                wait_until(
                    lambda: primary.walsenders() != [] and standby.in_recovery(),
                    READY_TIMEOUT_S,
                    "the standby streams from the primary",
                    0.1,
                )
                if synchronous:
                    _make_synchronous(primary)
                yield Pair(primary, standby, synchronous)


def _make_synchronous(primary: Server) -> None:
    """Every commit from now on waits until the standby has flushed it."""
    primary.ask("ALTER SYSTEM SET synchronous_standby_names = '*'")
    primary.ask("SELECT pg_reload_conf()")
    wait_until(
        lambda: primary.ask("SELECT sync_state FROM pg_stat_replication") == [("sync",)],
        READY_TIMEOUT_S,
        "the standby is synchronous",
        0.1,
    )


@contextmanager
def _scratch(prefix: str) -> Iterator[tuple[Cluster, Path]]:
    """The server binaries and a fresh directory for servers' homes, deleted afterwards."""
    base = require_server()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        _own(root, base)
        yield base, root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _running(server: Server, *settings: str) -> Iterator[Server]:
    """The server started with `settings` on top of SERVER_SETTINGS, stopped afterwards."""
    try:
        _start(server, *settings)
        yield server
    finally:
        server.stop()


def _tls_settings(server: Server, certificate: Path, key: Path) -> tuple[str, ...]:
    """Copy a certificate and its key into the server's home, owned by its OS user (the key
    readable by it alone, or PostgreSQL refuses to start), and the settings that use them."""
    copies = server.cluster.home / "server.crt", server.cluster.home / "server.key"
    for source, copy in zip((certificate, key), copies, strict=True):
        shutil.copyfile(source, copy)
        copy.chmod(0o600)
        _own(copy, server.cluster)
    return ("ssl=on", f"ssl_cert_file={copies[0]}", f"ssl_key_file={copies[1]}")


def _server(base: Cluster, home: Path, password: str) -> Server:
    home.mkdir()
    _own(home, base)
    return Server(Cluster(base.bindir, home, base.owner), free_port(), password)


def _own(path: Path, base: Cluster) -> None:
    if base.owner is not None:
        os.chown(path, base.owner.pw_uid, base.owner.pw_gid)


def _initdb(server: Server) -> None:
    pwfile = server.cluster.home / "initdb.pw"
    descriptor = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(server.password + "\n")
    _own(pwfile, server.cluster)
    try:
        _run(
            server.cluster,
            "initdb",
            f"--pgdata={server.cluster.data}",
            f"--username={SUPERUSER}",
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
    finally:
        pwfile.unlink(missing_ok=True)


def _start(server: Server, *settings: str) -> None:
    options = ["-p", str(server.port), "-k", shlex.quote(str(server.cluster.home))]
    for setting in (*SERVER_SETTINGS, *settings):
        options += ["-c", shlex.quote(setting)]
    _run(
        server.cluster,
        "pg_ctl",
        "start",
        "--wait",
        f"--timeout={READY_TIMEOUT_S}",
        f"--pgdata={server.cluster.data}",
        f"--log={server.cluster.home / 'postgres.log'}",
        f"--options={' '.join(options)}",
    )


def _run(cluster: Cluster, tool: str, *args: str) -> None:
    result = cluster.run(tool, *args)
    log = cluster.home / "postgres.log"
    assert result.returncode == 0, f"{tool} failed: {result.stdout}{result.stderr}" + (
        log.read_text()[-2000:] if log.is_file() else ""
    )
