"""TLS to PostgreSQL, verified: a private server with a certificate from a throwaway CA.

verify-full with the right CA and the name on the certificate loads messages; the wrong CA, or
a host name that is not the certificate's, is refused at start with one clear line and exit 5.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmnh.database import connect, create_database
from lmnh.errors import ExitCode
from tests.integration.replication import Server, private_server
from tests.integration.support import NO_ENV_FILE, PYTHON, ROOT, Target, clean_env

pytestmark = pytest.mark.integration

NAME_ON_CERTIFICATE = "localhost"


@dataclass(frozen=True)
class Authority:
    """A throwaway CA and the server's certificate it signed, for `localhost` only."""

    ca: Path
    other_ca: Path  # a CA that signed nothing of the server's
    certificate: Path
    key: Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_authority(folder: Path) -> Authority:
    ca_key, ca, other_key, other = (folder / n for n in ("ca.key", "ca.crt", "o.key", "o.crt"))
    for key, cert, name in ((ca_key, ca, "lmnh test CA"), (other_key, other, "someone else")):
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(cert),
        )  # fmt: skip
    key, request, certificate = folder / "server.key", folder / "server.csr", folder / "server.crt"
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={NAME_ON_CERTIFICATE}",
        "-keyout", str(key), "-out", str(request),
    )  # fmt: skip
    extensions = folder / "san.ext"
    extensions.write_text(f"subjectAltName=DNS:{NAME_ON_CERTIFICATE}\n")
    openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(certificate),
    )  # fmt: skip
    return Authority(ca, other, certificate, key)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a throwaway CA and the server's certificate")
    return make_authority(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(authority: Authority) -> Iterator[Server]:
    with private_server(tls=(authority.certificate, authority.key)) as server:
        yield server


def pipeline(
    target: Target, server: Server, home: Path | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **clean_env(),
        **({"HOME": str(home)} if home else {}),
        **{f"DB_{k.upper()}": v for k, v in settings.items()},
        "DB_PORT": str(server.port),
        "DB_NAME": target.topic,
        "DB_USERNAME": "lmnh",
        "DB_PASSWORD": server.password,
    }
    command = [PYTHON, "kafka_pipeline.py", "--topic", target.topic, "--from-beginning"]
    return subprocess.run(
        [*command, "--limit", "1", "--startup-timeout", "5", "--env-file", NO_ENV_FILE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_verify_full_with_the_servers_ca_loads_over_tls(
    target: Target, tls_server: Server, authority: Authority
) -> None:
    database = create_database(tls_server.database("postgres"), target.topic)
    target.produce([b'{"at": "2026-11-25T11:00:00+00:00", "site": "3", "val": 4}'])
    result = pipeline(
        target, tls_server, host=NAME_ON_CERTIFICATE, sslmode="verify-full",
        sslrootcert=str(authority.ca),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stored 1" in result.stdout or "rejected 1" in result.stdout, result.stdout
    conn = connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == (True,)
            cur.execute("SELECT sum(next_offset) FROM kafka_offset")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


@pytest.mark.parametrize(
    "case",
    [
        ("127.0.0.1", "ca", 'does not match host name "127.0.0.1"'),
        (NAME_ON_CERTIFICATE, "other_ca", "certificate verify failed"),
    ],
    ids=["wrong-host-name", "wrong-ca"],
)
def test_a_certificate_that_does_not_verify_is_refused_with_one_clear_line(
    target: Target, tls_server: Server, authority: Authority, case: tuple[str, str, str]
) -> None:
    host, ca, said = case
    result = pipeline(
        target,
        tls_server,
        host=host,
        sslmode="verify-full",
        sslrootcert=str(getattr(authority, ca)),
    )
    assert result.returncode == ExitCode.DATABASE_UNREACHABLE, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if "refused over TLS" in line]
    assert said in line
    assert "DB_SSLROOTCERT" in line
    assert "Traceback" not in result.stderr


def test_verify_full_without_a_ca_bundle_says_what_to_set(
    target: Target, tls_server: Server, tmp_path: Path
) -> None:
    """As with a remote DB_HOST and no DB_SSLROOTCERT: libpq looks in ~/.postgresql/root.crt
    (here an empty home), and the line says which setting names the CA."""
    result = pipeline(
        target, tls_server, home=tmp_path, host=NAME_ON_CERTIFICATE, sslmode="verify-full"
    )
    assert result.returncode == ExitCode.DATABASE_UNREACHABLE, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if "refused over TLS" in line]
    assert "root.crt" in line
    assert "DB_SSLROOTCERT" in line
