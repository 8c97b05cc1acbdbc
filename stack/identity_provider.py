"""A real OpenID Connect provider on 127.0.0.1 for the dashboard's sign-in tests.

`identity/provider.mjs` runs the certified `oidc-provider` library under Node.js with the
accounts and clients a test gives it, so that sign-in is tested against a real authorization
server (login page, PKCE, signed ID tokens) rather than a mock. Its npm packages are installed
on demand from `identity/package-lock.json` into `identity/node_modules` (git-ignored).
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from stack import StackError

IDENTITY_DIR = Path(__file__).resolve().parent / "identity"
PROVIDER_SCRIPT = IDENTITY_DIR / "provider.mjs"
LOCK_FILE = IDENTITY_DIR / "package-lock.json"
# npm writes this copy of the lock last, so it exists only after a complete install.
INSTALLED_LOCK = IDENTITY_DIR / "node_modules" / ".package-lock.json"
INSTALL_TIMEOUT_S = 300
START_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.05
READY_LINE = re.compile(r"^listening on (?P<issuer>http://\S+)$", re.MULTILINE)
NEEDS_NODE = "the local identity provider needs Node.js 20 or later, with npm"


@dataclass(frozen=True)
class Account:
    """A staff member who can sign in; `groups` goes into the ID token's `groups` claim."""

    username: str
    password: str
    name: str
    email: str
    groups: Sequence[str]


@dataclass(frozen=True)
class Client:
    """An application registered with the provider (client_secret_basic at the token endpoint)."""

    client_id: str
    client_secret: str
    redirect_uris: Sequence[str]
    post_logout_redirect_uris: Sequence[str] = ()


@dataclass(frozen=True)
class Provider:
    """A running provider: point an OpenID Connect client at `discovery_url`."""

    issuer: str

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"


def install() -> None:
    """Install the provider's npm packages exactly as locked, unless they are installed already
    from the current lock (then this only compares two timestamps)."""
    if INSTALLED_LOCK.is_file() and INSTALLED_LOCK.stat().st_mtime >= LOCK_FILE.stat().st_mtime:
        return
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise StackError(NEEDS_NODE)
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=IDENTITY_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(
            f"npm ci in {IDENTITY_DIR} took over {INSTALL_TIMEOUT_S} s; is the npm registry"
            " reachable?"
        ) from exc
    if result.returncode != 0:
        raise StackError(f"npm ci in {IDENTITY_DIR} failed:\n{_tail(result.stderr)}")


@contextmanager
def identity_provider(
    accounts: Iterable[Account], clients: Iterable[Client], port: int | None = None
) -> Iterator[Provider]:
    """Run a provider that knows exactly these accounts and clients, on `port` (default: any
    free port), until the block ends. Its keys, sessions and codes die with it."""
    install()
    node = shutil.which("node")
    if node is None:
        raise StackError(NEEDS_NODE)
    config = {
        "accounts": [
            {
                "username": account.username,
                "password": account.password,
                "name": account.name,
                "email": account.email,
                "groups": list(account.groups),
            }
            for account in accounts
        ],
        "clients": [
            {
                "client_id": client.client_id,
                "client_secret": client.client_secret,
                "redirect_uris": list(client.redirect_uris),
                "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
            }
            for client in clients
        ],
    }
    with tempfile.TemporaryDirectory(prefix="lmnh-identity-") as folder:
        config_path = Path(folder) / "config.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        log_path = Path(folder) / "provider.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [node, str(PROVIDER_SCRIPT), str(config_path), str(port or 0)],
                cwd=IDENTITY_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            yield Provider(_wait_until_ready(process, log_path))
        finally:
            _stop(process)


def _wait_until_ready(process: subprocess.Popen[bytes], log_path: Path) -> str:
    """The issuer, once the provider has said where it listens and serves its discovery
    document there."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        exited = process.poll() is not None
        output = log_path.read_text(encoding="utf-8", errors="replace")
        if exited:
            raise StackError(
                f"the identity provider exited with code {process.returncode}:\n{_tail(output)}"
            )
        ready = READY_LINE.search(output)
        if ready is not None and _serves_discovery(ready.group("issuer")):
            return ready.group("issuer")
        time.sleep(POLL_INTERVAL_S)
    output = log_path.read_text(encoding="utf-8", errors="replace")
    raise StackError(
        f"the identity provider did not answer within {START_TIMEOUT_S:.0f} s:\n{_tail(output)}"
    )


def _serves_discovery(issuer: str) -> bool:
    connection = http.client.HTTPConnection(urlsplit(issuer).netloc, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("GET", "/.well-known/openid-configuration")
        return connection.getresponse().status == http.client.OK
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def _tail(output: str, lines: int = 20) -> str:
    return "\n".join(deque(output.rstrip().splitlines(), maxlen=lines))
