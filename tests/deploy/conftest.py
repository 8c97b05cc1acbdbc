"""Fixtures of the deploy tests: the images (tests/deploy/images.py), a fresh topic and an empty
database per test on the tests' services, and how to hand those services to a container.

The integration fixtures (`services`, `settings`, `target`: the local stack unless the test
run's environment names external services) are shared from tests/integration/conftest.py.
Tests that need an image skip, saying why, where podman or mmdebstrap cannot run (not root,
not installed); ./run_tests.sh installs them as root.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from dashboard.sessions import COOKIE
from lmnh.config import Settings
from tests.deploy import images
from tests.integration.conftest import (
    fresh_target,
    pytest_sessionfinish,
    services,
    settings,
    target,
)
from tests.integration.support import Target

# Shared with tests/integration, the end-of-run drops of its databases too.
__all__ = ["pytest_sessionfinish", "services", "settings", "target"]


@pytest.fixture(scope="session")
def podman_usable() -> None:
    reason = images.unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def project_image(podman_usable: None) -> str:
    """deploy/image/Containerfile built on the Debian-made base; its tag."""
    base = images.debian_base(images.BASE_PACKAGES)
    built = images.project_image(base.tag)
    print(f"{built.tag}: {'cached' if built.cached else 'built'} in {built.seconds:.1f} s")
    return built.tag


@pytest.fixture(scope="session")
def systemd_image(project_image: str) -> str:
    """The project image's virtualenv on a Debian-made base with systemd; its tag."""
    base = images.debian_base(images.SYSTEMD_PACKAGES)
    built = images.systemd_image(project_image, base.tag)
    print(f"{built.tag}: {'cached' if built.cached else 'built'} in {built.seconds:.1f} s")
    return built.tag


@pytest.fixture
def bare_target(settings: Settings) -> Iterator[Target]:
    """A fresh topic and an EMPTY database (no schema): what a first deployment meets."""
    yield from fresh_target(settings, schema=False)


def container_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The settings as the variables of .env.example, every connection setting spelled out as
    a host's environment file would (nothing left to the image's defaults)."""
    kafka, database = settings.kafka, settings.database
    env = {
        "BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "SECURITY_PROTOCOL": kafka.security_protocol,
        "KAFKA_GROUP_ID": kafka.group_id,
        "DB_HOST": database.host,
        "DB_PORT": str(database.port),
        "DB_NAME": database.name,
        "DB_USERNAME": database.username,
        "DB_PASSWORD": database.password.reveal(),
    }
    optional = {
        "SASL_MECHANISM": kafka.sasl_mechanism,
        "SASL_USERNAME": kafka.sasl_username,
        "SASL_PASSWORD": kafka.sasl_password.reveal() if kafka.sasl_password else None,
        "SSL_CA_LOCATION": kafka.ssl_ca_location,
        "DB_SSLMODE": database.sslmode,
    }
    env.update({name: value for name, value in optional.items() if value})
    return {**env, **extra}


# The member of staff the deploy tests make with the deployed `lmnh-accounts`, and sign in as.
STAFF, STAFF_PASSWORD = "deploy.check", "a deploy rehearsal passphrase"


def sign_in(base: str) -> str:
    """Sign in as STAFF through the dashboard's own form at `base`, as a browser does; the
    Cookie header of the session it gives."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{base}/signin", timeout=10) as form:
        token = re.search(r'name="csrf" value="([^"]+)"', form.read().decode())
    assert token, "no sign-in form"
    fields = {"csrf": token.group(1), "username": STAFF, "password": STAFF_PASSWORD}
    with opener.open(f"{base}/signin", urllib.parse.urlencode(fields).encode(), timeout=10):
        pass
    [session] = [c for c in jar if c.name == COOKIE]
    return f"{COOKIE}={session.value}"


def get_json(url: str, cookie: str = "") -> tuple[int, Any]:
    """The status and JSON body of a GET (with `cookie`, signed in); (0, None) when nothing
    answers."""
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local http
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except OSError:
        return 0, None
