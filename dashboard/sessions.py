"""Who is signed in: each session a row of `staff_session`, found by the SHA-256 of the random
token its browser holds in an HttpOnly cookie.

Sessions live in the database rather than in a signed cookie so that signing out, disabling an
account or changing its password ends them at once, on every server. A session ends after
`idle` without a request and, however busy, `lifetime` after sign-in (a shift).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from dashboard.pool import ConnectionPool
from lmnh.config import DatabaseSettings

# The cookie's name over HTTPS: the __Host- prefix makes the browser refuse it unless it is
# Secure, for this host alone and for every path. Plain HTTP (this machine) cannot use it.
SECURE_COOKIE = "__Host-lmnh_session"
COOKIE = "lmnh_session"
TOKEN_BYTES = 32
# last_seen_at is written at most this often, not on every request of a page that polls.
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Staff:
    """A signed-in person, as the pages and the incident log name them."""

    username: str
    display_name: str
    roles: frozenset[str]
    csrf_token: str


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Sessions:
    def __init__(self, pool: ConnectionPool, idle: timedelta, lifetime: timedelta) -> None:
        self._pool = pool
        self._idle = idle
        self._lifetime = lifetime

    def start(
        self,
        username: str,
        display_name: str,
        roles: Sequence[str],
        account_id: int | None = None,
    ) -> str:
        """A new session's token, for the cookie. `account_id`: a local account's, whose roles
        then count as they are at each request; None for one signed in through the identity
        provider, whose `roles` are kept. Sessions long over are cleared on the way."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._pool.cursor(write=True) as cur:
            cur.execute("DELETE FROM staff_session WHERE expires_at < now() - interval '1 day'")
            cur.execute(
                "INSERT INTO staff_session (token_sha256, account_id, username, display_name,"
                " roles, csrf_token, expires_at) VALUES (%s, %s, %s, %s, %s, %s, now() + %s)",
                (
                    digest(token),
                    account_id,
                    username,
                    display_name,
                    sorted(set(roles)),
                    secrets.token_urlsafe(TOKEN_BYTES),
                    self._lifetime,
                ),
            )
        return token

    def find(self, token: str) -> Staff | None:
        """The session of `token` if it is current: not signed out, not idle for longer than
        `idle`, not past its lifetime, and its local account (if any) not disabled."""
        if not token or len(token) > 2 * TOKEN_BYTES:
            return None
        key = digest(token)
        with self._pool.cursor() as cur:
            cur.execute(
                "SELECT s.username, s.display_name,"
                " CASE WHEN s.account_id IS NULL THEN s.roles ELSE a.roles END,"
                " s.csrf_token, s.last_seen_at < now() - %s"
                " FROM staff_session AS s LEFT JOIN staff_account AS a USING (account_id)"
                " WHERE s.token_sha256 = %s AND s.expires_at > now()"
                " AND s.last_seen_at > now() - %s"
                " AND (s.account_id IS NULL OR a.disabled_at IS NULL)",
                (TOUCH_EVERY, key, self._idle),
            )
            row = cur.fetchone()
        if row is None:
            return None
        if row[4]:
            with self._pool.cursor(write=True) as cur:
                cur.execute(
                    "UPDATE staff_session SET last_seen_at = now() WHERE token_sha256 = %s",
                    (key,),
                )
        return Staff(row[0], row[1], frozenset(row[2]), row[3])

    def end(self, token: str) -> None:
        with self._pool.cursor(write=True) as cur:
            cur.execute("DELETE FROM staff_session WHERE token_sha256 = %s", (digest(token),))


def session_without_sign_in(
    database: DatabaseSettings, roles: Sequence[str], display_name: str, username: str
) -> str:
    """A new session's token for a program acting as a member of staff with `roles` (the
    benchmarks' browsers, the tests), made as a sign-in through the identity provider makes
    one: no local account, the roles kept, twelve hours."""
    pool = ConnectionPool(database, 1)
    try:
        sessions = Sessions(pool, idle=timedelta(minutes=30), lifetime=timedelta(hours=12))
        return sessions.start(username, display_name, roles)
    finally:
        pool.close()
