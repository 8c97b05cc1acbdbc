"""Fixtures of the deploy tests: the images (tests/deploy/images.py), a fresh topic and an empty
database per test on the tests' services, and how to hand those services to a container.

The integration fixtures (`services`, `settings`, `target`: the local stack unless the test
run's environment names external services) are shared from tests/integration/conftest.py.
Tests that need an image skip, saying why, where podman or mmdebstrap cannot run (not root,
not installed); ./run_tests.sh installs them as root.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

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


def free_port() -> int:
    """A TCP port nothing listens on now, for a server on the host's network."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def get_json(url: str) -> tuple[int, Any]:
    """The status and JSON body of a GET; (0, None) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local http
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except OSError:
        return 0, None
