"""The one place that reads the environment and `.env` files.

Every other module receives a frozen `Settings`; none reads `os.environ`. When
`BOOTSTRAP_SERVERS` is unset the local broker started by `python -m stack up` is used, and
when `DB_HOST` is unset the local PostgreSQL server is used, so a fresh clone needs no `.env`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from lmnh.errors import ConfigError

LOCAL_KAFKA_PLAINTEXT = "127.0.0.1:19092"
LOCAL_KAFKA_CONTROLLER = "127.0.0.1:19093"
LOCAL_KAFKA_SASL = "127.0.0.1:19094"
LOCAL_KAFKA_SASL_USER = "etl"
LOCAL_KAFKA_SASL_PASSWORD = "etl-secret"  # noqa: S105 - the local test broker's documented user

LOCAL_DB_HOST = "127.0.0.1"
LOCAL_DB_PORT = 55432
LOCAL_DB_NAME = "lmnh"
LOCAL_DB_USERNAME = "lmnh"
LOCAL_DB_PASSWORD = "lmnh-local"  # noqa: S105 - the local server's documented password

# Every variable load_config reads (documented in .env.example): where the Kafka cluster and
# the database are and how to log in, then the pipeline's own tuning.
KAFKA_VARIABLES = (
    "BOOTSTRAP_SERVERS",
    "SECURITY_PROTOCOL",
    "SASL_MECHANISM",
    "SASL_USERNAME",
    "SASL_PASSWORD",
    "SSL_CA_LOCATION",
)
DATABASE_VARIABLES = (
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_USERNAME",
    "DB_PASSWORD",
    "DB_SSLMODE",
    "DB_SSLROOTCERT",
    "DB_TARGET_SESSION_ATTRS",
)
# How soon a silent peer is noticed: the same for every program, so not among the variables
# that pick the services (tests choose these themselves).
DATABASE_TIMEOUT_VARIABLES = (
    "DB_CONNECT_TIMEOUT",
    "DB_KEEPALIVES_IDLE",
    "DB_KEEPALIVES_INTERVAL",
    "DB_KEEPALIVES_COUNT",
    "DB_TCP_USER_TIMEOUT_MS",
)
# Partition maintenance (`lmnh-schema maintain`): how long raw rejects and load minutes are
# kept, and how many months ahead partitions are made.
RETENTION_VARIABLES = (
    "RETENTION_REJECTED_DAYS",
    "RETENTION_LOAD_MINUTE_DAYS",
    "PARTITION_MONTHS_AHEAD",
)
# The dashboard's staff roles, and its sign-in: how long a staff session lasts, the scrape
# token of /metrics, and the museum's identity provider (OpenID Connect) with the groups that
# give each role.
STAFF_ROLES = ("exhibitions", "security", "operations", "admin")
ACCESS_VARIABLES = (
    "DASHBOARD_SESSION_IDLE_MINUTES",
    "DASHBOARD_SESSION_HOURS",
    "DASHBOARD_METRICS_TOKEN",
    "OIDC_ISSUER",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
    "OIDC_PROVIDER_NAME",
    "OIDC_SCOPES",
    "OIDC_GROUPS_CLAIM",
    *(f"OIDC_GROUPS_{role.upper()}" for role in STAFF_ROLES),
)
METRICS_TOKEN_MIN = 32
VARIABLES = frozenset(
    {
        *KAFKA_VARIABLES,
        *DATABASE_VARIABLES,
        *DATABASE_TIMEOUT_VARIABLES,
        "KAFKA_GROUP_ID",
        "KAFKA_MAX_POLL_INTERVAL_MS",
        "KAFKA_PARTITIONS",
        "KAFKA_SOCKET_TIMEOUT_MS",
        *RETENTION_VARIABLES,
        *ACCESS_VARIABLES,
    }
)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MAX_PORT = 65535
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
# Hosts where the traffic never leaves the machine: TLS is not needed to trust them.
_LOOPBACK = ("localhost", "::1")


class Secret:
    """A string that never shows itself in `repr`, `str`, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: Secret | None
    ssl_ca_location: str | None
    group_id: str
    max_poll_interval_ms: int  # the longest a consumer may go without polling
    local: bool  # True when the project's own local broker is meant
    # A request to a broker unanswered this long: the connection is given up and made anew.
    socket_timeout_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class Liveness:
    """How soon a connection to PostgreSQL notices a silent server (libpq's settings): TCP
    keepalives on an idle connection, `tcp_user_timeout` for data sent and never acknowledged,
    and `connect_timeout` for each host tried."""

    connect_timeout_s: int = 5
    keepalives_idle_s: int = 5
    keepalives_interval_s: int = 2
    keepalives_count: int = 3
    tcp_user_timeout_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    host: str  # one host, or several separated by commas (libpq's multi-host form)
    port: int  # the port of every host, unless `ports` gives one per host
    name: str
    username: str
    password: Secret
    sslmode: str | None
    local: bool  # True when the project's own local PostgreSQL server is meant
    ports: tuple[int, ...] = ()  # one per host, when DB_PORT lists several
    sslrootcert: str | None = None  # the CA bundle that verify-ca/verify-full trust
    # `read-write` follows a promoted standby when several hosts are named.
    target_session_attrs: str | None = None
    liveness: Liveness = Liveness()

    @property
    def where(self) -> str:
        """host:port, for the pipeline's own log lines (never for a web answer)."""
        ports = ",".join(map(str, self.ports)) if self.ports else str(self.port)
        return f"{self.host}:{ports}"


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """What partition maintenance keeps: raw rejects and load minutes for so many days (their
    counts for ever, in the daily rollups; facts are never dropped), and partitions made so
    many months ahead."""

    rejected_days: int = 90
    load_minute_days: int = 35
    months_ahead: int = 3


@dataclass(frozen=True, slots=True)
class IdentityProvider:
    """The museum's OpenID Connect provider, where staff sign in with their own identity: its
    issuer (discovery at issuer + /.well-known/openid-configuration), the dashboard's client
    registration, the scopes asked for, the claim that lists a person's groups, and which
    groups give which role."""

    issuer: str
    client_id: str
    client_secret: Secret
    name: str = "the museum's sign-in"
    scopes: str = "openid profile email"
    groups_claim: str = "groups"
    role_groups: tuple[tuple[str, frozenset[str]], ...] = ()


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """Who may use the dashboard: how long a staff session lasts without a request and at
    most (a shift), the token that lets Prometheus scrape /metrics without a session, and the
    identity provider, if staff sign in through one (local accounts work either way)."""

    session_idle_minutes: int = 30
    session_hours: int = 12
    metrics_token: Secret | None = None
    identity_provider: IdentityProvider | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaSettings
    database: DatabaseSettings
    topic_partitions: int
    retention: RetentionSettings = RetentionSettings()
    access: AccessSettings = AccessSettings()


def read_environment(env_file: Path | None = None) -> dict[str, str]:
    """Merge a `.env` file (default `./.env`, if present) under the process environment.

    Real environment variables win over the file, as in python-dotenv's default.
    """
    path = env_file if env_file is not None else Path(".env")
    if env_file is not None and not path.exists():
        raise ConfigError([f"--env-file {path}: no such file"])
    file_values = dotenv_values(path) if path.exists() else {}
    merged = {key: value for key, value in file_values.items() if value is not None}
    merged.update(os.environ)
    return merged


def load_config(env: Mapping[str, str]) -> Settings:
    """Build validated settings from `env`, listing every problem at once."""
    problems: list[str] = []

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def integer(name: str, default: int, low: int, high: int) -> int:
        raw = get(name)
        if raw is None:
            return default
        if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
            problems.append(f"{name}={raw!r} must be a whole number from {low} to {high}")
            return default
        return int(raw)

    bootstrap = get("BOOTSTRAP_SERVERS")
    mechanism = get("SASL_MECHANISM")
    username = get("SASL_USERNAME")
    password = get("SASL_PASSWORD")
    protocol = get("SECURITY_PROTOCOL")
    if protocol is None:
        # The museum's hosted cluster speaks SASL over TLS; a bare local broker does not.
        protocol = "SASL_SSL" if mechanism else "PLAINTEXT"
    protocol = protocol.upper()
    if protocol not in SECURITY_PROTOCOLS:
        problems.append(
            f"SECURITY_PROTOCOL={protocol!r} must be one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    if protocol.startswith("SASL"):
        if mechanism is None:
            mechanism = "PLAIN"
        if mechanism.upper() not in SASL_MECHANISMS:
            problems.append(
                f"SASL_MECHANISM={mechanism!r} must be one of {', '.join(SASL_MECHANISMS)}"
            )
        if username is None or password is None:
            problems.append(f"SECURITY_PROTOCOL={protocol} needs SASL_USERNAME and SASL_PASSWORD")
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap or LOCAL_KAFKA_PLAINTEXT,
        security_protocol=protocol,
        sasl_mechanism=mechanism.upper() if mechanism and protocol.startswith("SASL") else None,
        sasl_username=username if protocol.startswith("SASL") else None,
        sasl_password=Secret(password) if password and protocol.startswith("SASL") else None,
        ssl_ca_location=get("SSL_CA_LOCATION"),
        group_id=get("KAFKA_GROUP_ID") or "lmnh-pipeline",
        max_poll_interval_ms=integer("KAFKA_MAX_POLL_INTERVAL_MS", 300_000, 10_000, 86_400_000),
        local=bootstrap is None,
        socket_timeout_ms=integer("KAFKA_SOCKET_TIMEOUT_MS", 10_000, 1_000, 300_000),
    )

    db_host = get("DB_HOST")
    hosts = [h.strip() for h in db_host.split(",")] if db_host else [LOCAL_DB_HOST]
    if any(not h for h in hosts):
        problems.append(f"DB_HOST={db_host!r} has an empty host name between commas")
    port, ports = _ports(get("DB_PORT"), 5432 if db_host else LOCAL_DB_PORT, len(hosts), problems)
    sslmode = get("DB_SSLMODE")
    if sslmode is not None and sslmode.lower() not in SSL_MODES:
        problems.append(f"DB_SSLMODE={sslmode!r} must be one of {', '.join(SSL_MODES)}")
    elif sslmode is None:
        # A server across a network is verified by default; on this machine there is no one
        # between us to verify against.
        sslmode = "prefer" if all(_on_this_machine(h) for h in hosts) else "verify-full"
    attrs = get("DB_TARGET_SESSION_ATTRS")
    if attrs is not None and attrs.lower() not in SESSION_ATTRS:
        problems.append(
            f"DB_TARGET_SESSION_ATTRS={attrs!r} must be one of {', '.join(SESSION_ATTRS)}"
        )
    elif attrs is None and len(hosts) > 1:
        attrs = "read-write"  # the pipeline writes: follow whichever host is the primary
    default = Liveness()
    liveness = Liveness(
        connect_timeout_s=integer("DB_CONNECT_TIMEOUT", default.connect_timeout_s, 2, 300),
        keepalives_idle_s=integer("DB_KEEPALIVES_IDLE", default.keepalives_idle_s, 1, 7200),
        keepalives_interval_s=integer(
            "DB_KEEPALIVES_INTERVAL", default.keepalives_interval_s, 1, 600
        ),
        keepalives_count=integer("DB_KEEPALIVES_COUNT", default.keepalives_count, 1, 100),
        tcp_user_timeout_ms=integer(
            "DB_TCP_USER_TIMEOUT_MS", default.tcp_user_timeout_ms, 0, 3_600_000
        ),
    )
    database = DatabaseSettings(
        host=",".join(hosts),
        port=port,
        name=get("DB_NAME") or LOCAL_DB_NAME,
        username=get("DB_USERNAME") or LOCAL_DB_USERNAME,
        password=Secret(get("DB_PASSWORD") or ("" if db_host else LOCAL_DB_PASSWORD)),
        sslmode=sslmode.lower(),
        local=db_host is None,
        ports=ports,
        sslrootcert=get("DB_SSLROOTCERT"),
        target_session_attrs=attrs.lower() if attrs else None,
        liveness=liveness,
    )
    partitions = integer("KAFKA_PARTITIONS", 6, 1, 1000)
    retention = _retention(integer)
    access = _access(get, integer, problems)
    if problems:
        raise ConfigError(problems)
    return Settings(
        kafka=kafka,
        database=database,
        topic_partitions=partitions,
        retention=retention,
        access=access,
    )


def _retention(integer: Callable[[str, int, int, int], int]) -> RetentionSettings:
    kept = RetentionSettings()
    return RetentionSettings(
        rejected_days=integer("RETENTION_REJECTED_DAYS", kept.rejected_days, 1, 36_500),
        load_minute_days=integer("RETENTION_LOAD_MINUTE_DAYS", kept.load_minute_days, 1, 36_500),
        months_ahead=integer("PARTITION_MONTHS_AHEAD", kept.months_ahead, 0, 120),
    )


def _access(
    get: Callable[[str], str | None],
    integer: Callable[[str, int, int, int], int],
    problems: list[str],
) -> AccessSettings:
    """DASHBOARD_* and OIDC_*: the dashboard's sign-in."""
    metrics_token = get("DASHBOARD_METRICS_TOKEN")
    if metrics_token is not None and len(metrics_token) < METRICS_TOKEN_MIN:
        problems.append(
            f"DASHBOARD_METRICS_TOKEN has {len(metrics_token)} characters; use at least"
            f" {METRICS_TOKEN_MIN} random ones (e.g. `openssl rand -hex 32`)"
        )
        metrics_token = None
    usual = AccessSettings()
    return AccessSettings(
        session_idle_minutes=integer(
            "DASHBOARD_SESSION_IDLE_MINUTES", usual.session_idle_minutes, 1, 24 * 60
        ),
        session_hours=integer("DASHBOARD_SESSION_HOURS", usual.session_hours, 1, 7 * 24),
        metrics_token=Secret(metrics_token) if metrics_token else None,
        identity_provider=_identity_provider(get, problems),
    )


def _identity_provider(
    get: Callable[[str], str | None], problems: list[str]
) -> IdentityProvider | None:
    """OIDC_*: all three of issuer, client id and secret, or none (local accounts only)."""
    issuer, client_id = get("OIDC_ISSUER"), get("OIDC_CLIENT_ID")
    secret = get("OIDC_CLIENT_SECRET")
    if issuer is None and client_id is None and secret is None:
        return None
    if issuer is None or client_id is None or secret is None:
        problems.append("OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET go together")
        return None
    parts = urlsplit(issuer)
    local = parts.hostname is not None and _on_this_machine(parts.hostname)
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        problems.append(f"OIDC_ISSUER={issuer!r} must be an https:// URL")
        return None
    role_groups = tuple(
        (role, frozenset(_names(get(f"OIDC_GROUPS_{role.upper()}")))) for role in STAFF_ROLES
    )
    usual = IdentityProvider(issuer, client_id, Secret(secret))
    return IdentityProvider(
        issuer=issuer.rstrip("/"),
        client_id=client_id,
        client_secret=Secret(secret),
        name=get("OIDC_PROVIDER_NAME") or usual.name,
        scopes=get("OIDC_SCOPES") or usual.scopes,
        groups_claim=get("OIDC_GROUPS_CLAIM") or usual.groups_claim,
        role_groups=role_groups,
    )


def _names(listed: str | None) -> list[str]:
    """A comma-separated list, each name stripped, empty ones dropped."""
    return [name.strip() for name in (listed or "").split(",") if name.strip()]


def _ports(
    raw: str | None, default: int, hosts: int, problems: list[str]
) -> tuple[int, tuple[int, ...]]:
    """DB_PORT: one port for every host, or one per host (libpq's form). Returns the first
    port and, when there are several, all of them."""
    if raw is None:
        return default, ()
    parts = [p.strip() for p in raw.split(",")]
    if not all(p.isascii() and p.isdigit() and 1 <= int(p) <= MAX_PORT for p in parts):
        problems.append(f"DB_PORT={raw!r} must be a port from 1 to {MAX_PORT}, or one per host")
        return default, ()
    if len(parts) == 1:
        return int(parts[0]), ()
    if len(parts) != hosts:
        problems.append(f"DB_PORT={raw!r} lists {len(parts)} ports for {hosts} hosts in DB_HOST")
        return default, ()
    ports = tuple(int(p) for p in parts)
    return ports[0], ports


def _on_this_machine(host: str) -> bool:
    """A loopback address, localhost, or a Unix socket's directory."""
    if host.startswith("/") or host.lower() in _LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
