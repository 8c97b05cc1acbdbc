"""The dashboard behind deploy/caddy/Caddyfile on this machine, as a museum runs it but with a
throwaway certificate authority: `python -m bench.live --proxy` and the proxy's browser test put
Caddy (Debian's package) between chromium and `python -m dashboard`.

The CA and the server's certificate are made with openssl for one run; chromium trusts the CA
through an NSS database in a home folder of its own (the trust path a browser really takes,
not an ignored certificate error), and Python clients through an SSL context.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.local import ROOT, BenchError, stop

CADDY = "caddy"
CADDYFILE = ROOT / "deploy" / "caddy" / "Caddyfile"
SITE = "localhost"  # the name on the certificate, and the address the browser opens
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_TOOL_TIMEOUT_S = 30.0
# A certificate's life for one run: long enough for a soak, short enough to be useless later.
_DAYS = "2"


@dataclass(frozen=True, slots=True)
class Certificates:
    """A throwaway CA and the server certificate it signed for `SITE` (and 127.0.0.1)."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this CA alone."""
        return ssl.create_default_context(cafile=self.ca)


@dataclass(frozen=True, slots=True)
class Proxy:
    """Caddy running deploy/caddy/Caddyfile in front of a dashboard."""

    url: str  # https://localhost:<port>
    http_url: str  # http://localhost:<port>, which redirects
    https_port: int
    process: subprocess.Popen[bytes]


def unavailable() -> str | None:
    """Why the proxy cannot run here, or None."""
    missing = [tool for tool in (CADDY, "openssl", "certutil") if shutil.which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} missing: apt-get install caddy openssl libnss3-tools"
            " (./run_tests.sh installs them as root)"
        )
    return None


def _tool(*command: str | Path) -> None:
    done = subprocess.run(  # noqa: S603 - our own command lines
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=_TOOL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"{command[0]} {command[1]} failed: {done.stderr.strip()[-1000:]}")


def throwaway_certificates(folder: Path) -> Certificates:
    """A CA of this run's own (EC P-256), and a server certificate it signed for `SITE`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, request, cert = (
        folder / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc")
    _tool(
        "openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", _DAYS,
        "-subj", "/CN=LMNH throwaway test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _tool("openssl", "req", *ec, "-keyout", key, "-out", request, "-subj", f"/CN={SITE}")
    extensions = folder / "server.ext"
    extensions.write_text(
        f"subjectAltName=DNS:{SITE},IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n",
        encoding="utf-8",
    )
    _tool(
        "openssl", "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key,
        "-CAcreateserial", "-days", _DAYS, "-extfile", extensions, "-out", cert,
    )  # fmt: skip
    return Certificates(ca=ca, cert=cert, key=key)


def browser_home(folder: Path, certificates: Certificates) -> Path:
    """A home folder whose NSS database trusts the run's CA for web sites: chromium started
    with HOME set to it verifies the proxy's certificate as it would a real one."""
    nssdb = folder / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    _tool("certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password")
    _tool(
        "certutil", "-A", "-d", f"sql:{nssdb}", "-n", "LMNH throwaway test CA", "-t", "C,,",
        "-i", certificates.ca,
    )  # fmt: skip
    return folder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def proxy_env(
    upstream: str, certificates: Certificates, ports: tuple[int, int], scratch: Path
) -> dict[str, str]:
    """The Caddyfile's settings for one run, and a home and data folder of the run's own (so
    that nothing of Caddy's lands in the user's)."""
    http_port, https_port = ports
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(scratch),
        "XDG_DATA_HOME": str(scratch / "data"),
        "XDG_CONFIG_HOME": str(scratch / "config"),
        # The port in the site's address: Caddy's redirect from plain HTTP names it.
        "LMNH_SITE": f"{SITE}:{https_port}",
        "LMNH_TLS": "files",
        "LMNH_TLS_CERT": str(certificates.cert),
        "LMNH_TLS_KEY": str(certificates.key),
        "LMNH_DASHBOARD": upstream,
        "LMNH_HTTP_PORT": str(http_port),
    }


@contextlib.contextmanager
def running_proxy(upstream: str, certificates: Certificates, scratch: Path) -> Iterator[Proxy]:
    """`caddy run` with deploy/caddy/Caddyfile in front of `upstream` (host:port), on free
    ports, until the block ends; it answers /healthz through TLS before this yields."""
    scratch.mkdir(parents=True, exist_ok=True)
    ports = (_free_port(), _free_port())
    env = proxy_env(upstream, certificates, ports, scratch)
    log = scratch / "caddy.log"
    command = [CADDY, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    with log.open("w") as out:
        process = subprocess.Popen(  # noqa: S603 - our own command line
            command, cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    proxy = Proxy(f"https://{SITE}:{ports[1]}", f"http://{SITE}:{ports[0]}", ports[1], process)
    try:
        context = certificates.client_context()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(f"{proxy.url}/healthz", context):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"caddy did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield proxy
    finally:
        stop(process, STOP_TIMEOUT_S)


def _answers(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context):  # noqa: S310 - local
            return True
    except urllib.error.HTTPError:
        return True  # the proxy answers; what is behind it is the caller's business
    except OSError:
        return False
