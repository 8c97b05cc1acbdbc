"""The local PostgreSQL server: the machine's (Debian) binaries running a private cluster.

The cluster's data dir, Unix socket and log live in `.stack/postgres/` (or in the fallback
directory named by `.stack/postgres/location`, see `_prepare_home`). It listens on
127.0.0.1 only, on the port from lmnh/config.py (55432 unless DB_PORT says otherwise), so it
never clashes with a system PostgreSQL on 5432.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2.extensions import connection

from lmnh import backoff
from lmnh.config import DatabaseSettings, Settings
from lmnh.database import ensure_database
from stack import REPO_ROOT, STACK_DIR, StackError, print_tail

PG_DIR = STACK_DIR / "postgres"
LOCATION_FILE = PG_DIR / "location"
# Checked by _owned_dir before use, since /var/tmp is world-writable.
FALLBACK_ROOT = Path("/var/tmp/lmnh-stack")  # noqa: S108
OS_USER = "postgres"
START_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 30.0
# Modest for a 2-core machine shared with Kafka and pytest; fsync and synchronous_commit
# keep their safe defaults, since the pipeline's exactly-once claim is tested against them.
SERVER_SETTINGS = ("shared_buffers=256MB", "max_connections=50")
# A Unix socket path (sun_path) holds at most 107 bytes; the socket is <home>/.s.PGSQL.<port>.
MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")


@dataclass(frozen=True)
class Cluster:
    """Where the server's binaries and files are, and which OS user runs them."""

    bindir: Path
    home: Path
    owner: pwd.struct_passwd | None  # set when we are root: PostgreSQL refuses to run as root

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log(self) -> Path:
        return self.home / "postgres.log"

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / tool), *args]
        return subprocess.run(
            command, capture_output=True, text=True, check=False, **_as_user(self.owner)
        )


def up(settings: Settings) -> None:
    """Start the local server unless it runs already, and create the database if missing."""
    db = settings.database
    if not db.local:
        _check_external(db)
        return
    if _find_bindir() is None:
        _install_postgres()
    if os.geteuid() == 0:
        _ensure_os_user()
    cluster = _cluster()
    if cluster is None:
        raise StackError("no pg_ctl found after installing postgresql; set DB_HOST instead")
    if not (cluster.data / "PG_VERSION").is_file():
        cluster = _initdb(cluster, db)
    pid = _running_pid(cluster)
    if pid is None:
        _start(cluster, db.port)
    else:
        print(f"postgres: server already running (pid {pid})")
    _wait_for_connection(db)
    if ensure_database(db, db.name):
        print(f"postgres: created database {db.name!r}")
    else:
        print(f"postgres: database {db.name!r} exists")


def down(settings: Settings, wipe: bool) -> None:
    """Stop the local server (whatever DB_HOST says); `wipe` also deletes its data dir."""
    cluster = _cluster()
    pid = _running_pid(cluster) if cluster else None
    if cluster is None or pid is None:
        print("postgres: local server not running")
    else:
        started = time.monotonic()
        result = cluster.run("pg_ctl", "stop", "--wait", "--mode=fast", f"--pgdata={cluster.data}")
        if result.returncode != 0:
            raise StackError(f"pg_ctl stop failed: {_last_line(result)}; stop pid {pid} by hand")
        print(f"postgres: stopped server (pid {pid}) in {time.monotonic() - started:.1f} s")
    data = cluster.data if cluster else _home() / "data"
    if wipe and data.exists():
        shutil.rmtree(data)
        print(f"postgres: deleted {data} (every database, table and row)")
    if not settings.database.local:
        print(f"postgres: the external server at {settings.database.host} is untouched")


def status(settings: Settings) -> bool:
    """Print what runs where; True if the server accepts connections."""
    db = settings.database
    if not db.local:
        print(f"postgres: external server at {db.host}:{db.port}/{db.name} (DB_HOST)")
        problem = _external_problem(db)
        print(f"  {problem or 'accepting connections'}")
        return problem is None
    cluster = _cluster()
    pid = _running_pid(cluster) if cluster else None
    if cluster is None or pid is None:
        print("postgres: not running (start it with `python -m stack up postgres`)")
        return False
    print(f"postgres: running, pid {pid}, PostgreSQL {cluster.bindir.parent.name}")
    print(f"  data {cluster.data}, log {cluster.log}")
    print(f"  listening on {db.host}:{db.port} and socket dir {cluster.home}; user {db.username}")
    try:
        with closing(_connect(db, "postgres")) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1")
            names = [row[0] for row in cursor.fetchall()]
    except psycopg2.Error as exc:
        print(f"  refusing connections: {_one_line(exc)}")
        return False
    print(f"  databases: {', '.join(names)}")
    return True


def _check_external(db: DatabaseSettings) -> None:
    problem = _external_problem(db)
    if problem is not None:
        raise StackError(problem)
    print(f"postgres: using the external server at {db.host}:{db.port}/{db.name} (DB_HOST is set)")


def _external_problem(db: DatabaseSettings) -> str | None:
    try:
        _connect(db, db.name).close()
    except psycopg2.Error as exc:
        return (
            f"cannot connect to PostgreSQL at {db.host}:{db.port}/{db.name} as {db.username}: "
            f"{_one_line(exc)}; check DB_HOST, DB_PORT, DB_NAME, DB_USERNAME, DB_PASSWORD, "
            "DB_SSLMODE"
        )
    return None


def _connect(db: DatabaseSettings, dbname: str, timeout_s: int = 5) -> connection:
    return psycopg2.connect(
        host=db.host,
        port=db.port,
        dbname=dbname,
        user=db.username,
        password=db.password.reveal(),
        connect_timeout=timeout_s,
        sslmode=db.sslmode or None,  # psycopg2 leaves out a None: libpq then uses its default
    )


def _find_bindir() -> Path | None:
    """The newest Debian-installed server, else whatever `pg_config --bindir` names."""
    installed = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")]
    if installed:
        return max(installed, key=lambda bindir: _version(bindir.parent.name))
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    bindir = Path(result.stdout.strip())
    # libpq-dev's pg_config names a bindir even when no server is installed.
    return bindir if result.returncode == 0 and (bindir / "pg_ctl").is_file() else None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _install_postgres() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError(
            "PostgreSQL server binaries not found: install them with "
            "`sudo apt-get install postgresql`, or set DB_HOST to use an existing server"
        )
    print(
        "postgres: server binaries not found; running apt-get update && apt-get install postgresql"
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "-qq", "update"],
        ["apt-get", "-qq", "install", "-y", "postgresql"],
    ):
        if subprocess.run(command, env=env, check=False).returncode != 0:
            raise StackError(
                f"`{' '.join(command)}` failed (see above); install PostgreSQL by hand "
                "or set DB_HOST to use an existing server"
            )


def _ensure_os_user() -> None:
    """Debian's package creates the `postgres` user; binaries from elsewhere may not."""
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        print(f"postgres: creating the system user {OS_USER!r} to run the server")
        command = ["useradd", "--system", "--user-group", "--no-create-home", OS_USER]
        if subprocess.run(command, check=False).returncode != 0:
            raise StackError(f"`{' '.join(command)}` failed; create the user by hand") from None


def _cluster() -> Cluster | None:
    """None when no server is installed (or, as root, no user exists to run it)."""
    bindir = _find_bindir()
    if bindir is None:
        return None
    if os.geteuid() != 0:
        return Cluster(bindir, _home(), None)
    try:
        return Cluster(bindir, _home(), pwd.getpwnam(OS_USER))
    except KeyError:
        return None


def _home() -> Path:
    if LOCATION_FILE.is_file():
        return Path(LOCATION_FILE.read_text().strip())
    return PG_DIR


def _as_user(owner: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess arguments that run a tool as `owner` (from `/`, which it can always read)."""
    if owner is None:
        return {}
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": [], "cwd": "/"}


def _prepare_home(cluster: Cluster) -> Cluster:
    """A home the server's user can write and whose socket path fits in sun_path.

    As root the server runs as `postgres`, which cannot traverse a repository kept in, say,
    /root (mode 700); and a deep checkout can make the socket path too long. Either way the
    cluster then lives in /var/tmp/lmnh-stack/<hash of the repo path>/ instead, and
    `.stack/postgres/location` records that, so later commands find it.
    """
    for home in (cluster.home, FALLBACK_ROOT / _repo_hash()):
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if not (_owned_dir(home.parent, cluster.owner) and _owned_dir(home, cluster.owner)):
            continue
        if cluster.owner is not None:
            os.chown(home, cluster.owner.pw_uid, cluster.owner.pw_gid, follow_symlinks=False)
        if _usable(home, cluster.owner):
            if home != cluster.home:
                PG_DIR.mkdir(parents=True, exist_ok=True)
                LOCATION_FILE.write_text(f"{home}\n")
                print(f"postgres: {cluster.home} is out of reach for the server; using {home}")
            return Cluster(cluster.bindir, home, cluster.owner)
    raise StackError(
        f"no directory the {OS_USER!r} user can write for the cluster (tried {cluster.home} "
        f"and {FALLBACK_ROOT}); run as a normal user or set DB_HOST"
    )


def _repo_hash() -> str:
    return hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]


def _owned_dir(path: Path, owner: pwd.struct_passwd | None) -> bool:
    """A real directory of ours (or the server's): not a symlink someone planted."""
    info = path.lstat()
    owners = {os.geteuid()} | ({owner.pw_uid} if owner else set())
    return stat.S_ISDIR(info.st_mode) and info.st_uid in owners


def _usable(home: Path, owner: pwd.struct_passwd | None) -> bool:
    if len(str(home)) > MAX_SOCKET_DIR_LEN:
        return False
    if owner is None:
        return True
    check = ["test", "-w", str(home), "-a", "-x", str(home)]
    return subprocess.run(check, check=False, **_as_user(owner)).returncode == 0


def _initdb(cluster: Cluster, db: DatabaseSettings) -> Cluster:
    cluster = _prepare_home(cluster)
    started = time.monotonic()
    pwfile = cluster.home / "initdb.pw"
    # Created 0600 and deleted right after: the password never shows in a process list.
    descriptor = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(db.password.reveal() + "\n")
    try:
        if cluster.owner is not None:
            os.chown(pwfile, cluster.owner.pw_uid, cluster.owner.pw_gid)
        result = cluster.run(
            "initdb",
            f"--pgdata={cluster.data}",
            f"--username={db.username}",
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise StackError(
            f"initdb failed: {_last_line(result)}; start afresh with "
            "`python -m stack down postgres --wipe`"
        )
    print(f"postgres: initialised {cluster.data} in {time.monotonic() - started:.1f} s")
    return cluster


def _start(cluster: Cluster, port: int) -> None:
    started = time.monotonic()
    options = ["-p", str(port), "-k", shlex.quote(str(cluster.home))]
    options += ["-c", "listen_addresses=127.0.0.1"]
    for setting in SERVER_SETTINGS:
        options += ["-c", setting]
    result = cluster.run(
        "pg_ctl",
        "start",
        "-w",
        f"--timeout={START_TIMEOUT_S}",
        f"--pgdata={cluster.data}",
        f"--log={cluster.log}",
        # pg_ctl hands these to a shell, hence the quoted socket dir.
        f"--options={' '.join(options)}",
    )
    if result.returncode != 0:
        print_tail(cluster.log)
        raise StackError(f"PostgreSQL did not start ({_last_line(result)}); see the log above")
    pid = _running_pid(cluster)
    print(f"postgres: server ready in {time.monotonic() - started:.1f} s (pid {pid})")


def _running_pid(cluster: Cluster) -> int | None:
    result = cluster.run("pg_ctl", "status", f"--pgdata={cluster.data}")
    match = re.search(r"PID: (\d+)", result.stdout)
    return int(match.group(1)) if result.returncode == 0 and match else None


def _wait_for_connection(db: DatabaseSettings) -> None:
    """pg_ctl -w saw the server up; this proves the TCP + password path the pipeline uses."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    for delay in backoff.delays(0.1, 1.0):
        try:
            _connect(db, "postgres").close()
            return
        except psycopg2.OperationalError as exc:
            reason = _one_line(exc)
            if "authentication failed" in reason or time.monotonic() >= deadline:
                raise StackError(
                    f"cannot connect to the local PostgreSQL at {db.host}:{db.port} as "
                    f"{db.username}: {reason}; if DB_USERNAME/DB_PASSWORD changed since it was "
                    "created, re-create it with `python -m stack down postgres --wipe`"
                ) from None
        time.sleep(delay)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"
