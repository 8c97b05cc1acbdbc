"""The Quix Streams peer: its own virtualenv, made on demand, and its run.

Quix pins its own confluent-kafka, so it gets a virtualenv of its own under
`.stack/peers/quix-venv`, installed from bench/peers/quix-requirements.lock (exact versions
with hashes) and made again only when that lock or the Python version changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from psycopg2 import sql

from bench.local import PYTHON, BenchError, Progress, child_env, query
from bench.peers.harness import (
    Description,
    PeerProcess,
    PeerResult,
    Stage,
    result,
    run_and_time,
    table_rows,
)
from bench.peers.records import TABLE, digest
from lmnh.config import DatabaseSettings
from lmnh.validation import REQUEST_MARKER
from stack import STACK_DIR

HERE = Path(__file__).resolve().parent
LOCK = HERE / "quix-requirements.lock"
APP = HERE / "quix_app.py"
QUIX_VERSION = "3.28.1"  # as pinned in quix-requirements.in

VENV = STACK_DIR / "peers" / "quix-venv"
VENV_PYTHON = VENV / "bin" / "python"
VENV_DIGEST = VENV / "requirements-sha256"
INSTALL_TIMEOUT_S = 900

PER_MESSAGE = (
    "JSON decode, a 4-key shape check, one row of a multi-row INSERT (execute_values, 100 a"
    " statement) into a bare table"
)


def ensure_venv(progress: Progress) -> bool:
    """Make Quix's virtualenv unless one from the same lock and Python exists; True if it
    made one."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    wanted = digest(LOCK.read_bytes(), python.encode())
    stored = VENV_DIGEST.read_text().strip() if VENV_DIGEST.is_file() else None
    if stored == wanted and VENV_PYTHON.exists():
        return False
    progress(f"quix: making its virtualenv (Quix Streams {QUIX_VERSION}, about 150 MB)")
    shutil.rmtree(VENV, ignore_errors=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    _run([PYTHON, "-m", "venv", str(VENV)], "making Quix's virtualenv")
    install = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*install, "--require-hashes", "-r", str(LOCK)], "installing Quix Streams")
    VENV_DIGEST.write_text(wanted + "\n")
    return True


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(  # noqa: S603 - our own command line
            command, capture_output=True, text=True, check=False, timeout=INSTALL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: not done in {INSTALL_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}")


def run_quix(stage: Stage, topic: str) -> PeerResult:
    """Run the Quix app over the benchmark's topic into the stage's database (empty: the
    sink makes its own table) and time it from its first row to its last."""
    database = stage.database
    workdir = stage.scratch / "quix"
    workdir.mkdir()
    env = {
        **child_env(),
        "PGHOST": database.host,
        "PGPORT": str(database.port),
        "PGDATABASE": database.name,
        "PGUSER": database.username,
        "PGPASSWORD": database.password.reveal(),
    }
    if database.sslmode:
        env["PGSSLMODE"] = database.sslmode
    command = [
        str(VENV_PYTHON),
        str(APP),
        "--broker",
        stage.resources.settings.kafka.bootstrap_servers,
    ]
    command += ["--topic", topic, "--group", stage.resources.group("peer_quix")]
    command += ["--table", TABLE, "--state-dir", str(workdir / "state")]
    process = PeerProcess(command, env, workdir, stage.scratch, "quix")
    timed = run_and_time(process, stage, TABLE)
    typed = stage.tally.typed_requests
    lost = typed - typed_requests(database)
    return result(
        timed,
        Description(
            key="quix",
            label=f"Quix Streams {QUIX_VERSION} PostgreSQLSink, defaults",
            per_message=PER_MESSAGE,
            how=(
                "its own virtualenv; Application (JSON value deserializer, from the earliest"
                " offset) -> filter (the shape check) -> PostgreSQLSink at its defaults, which"
                " makes its own table and flushes at each 5 s checkpoint, then commits"
            ),
            notes=(
                f"{lost:,} of {typed:,} request rows landed without their type: the sink"
                " takes each batch's columns from the batch's first row",
                "its rows commit only at its 5 s checkpoints, so the span from its first row"
                " to its last leaves out what it consumed before the first; the wall rate"
                " counts it",
            ),
            lost_request_types=lost,
        ),
    )


def typed_requests(database: DatabaseSettings) -> int:
    """Request rows that kept their type. The sink adds a column only once a batch holds a
    value for it, so the column may be missing altogether."""
    [(columns,)] = query(
        database,
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = %s AND column_name = 'type'",
        (TABLE,),
    )
    if columns == 0:
        return 0
    condition = sql.SQL("{} = {} AND {} IS NOT NULL").format(
        sql.Identifier("val"), sql.Literal(REQUEST_MARKER), sql.Identifier("type")
    )
    return table_rows(database, TABLE, condition)
