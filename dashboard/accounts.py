"""Staff accounts for a museum without single sign-on, and `lmnh-accounts`, the command that
manages them (`python -m dashboard.accounts` from a checkout).

An account has a username, a name shown to colleagues ("taken by R. Pelkman"), its roles (which
pages it may open) and an argon2id hash of its password; nothing else of the password is kept.
Disabling an account ends its sessions at once; accounts are never deleted, so that what a
person did stays attributed to them.

Exit codes: 0 done, 2 a username, role or password refused (or an unknown account), 5 the
database does not answer, 6 its schema is not this release's.
"""

from __future__ import annotations

import argparse
import getpass
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from lmnh.cli import load_settings, run
from lmnh.config import STAFF_ROLES
from lmnh.database import connect, require_schema
from lmnh.errors import ConfigError

# What each role opens: exhibitions the Exhibitions page, security the Safety page and its live
# Now, operations the Feed page and the metrics, admin the accounts.
ROLES = STAFF_ROLES
USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,99}")
# ASVS 2.1.1 and 2.1.2: at least 12 characters, and long passphrases allowed; the upper bound
# keeps one sign-in from costing the server more than hashing a sentence does.
PASSWORD_MIN, PASSWORD_MAX = 12, 128
NAME_MAX = 200

HASHER = PasswordHasher()  # argon2id, RFC 9106's second recommended profile (64 MiB, t=3)
# Verified against when the username is unknown, so that it takes as long to refuse as a wrong
# password does and the timing tells no one which usernames exist.
_DECOY_HASH = HASHER.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class Account:
    account_id: int
    username: str
    display_name: str
    roles: tuple[str, ...]
    disabled: bool


def username_problem(username: str) -> str | None:
    if not USERNAME.fullmatch(username):
        return (
            f"username {username!r}: 1 to 100 of a-z, 0-9 and . _ @ -, starting with a letter"
            " or digit"
        )
    return None


def roles_problem(roles: Sequence[str]) -> str | None:
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        return f"no role {', '.join(map(repr, unknown))}; roles: {', '.join(ROLES)}"
    return None


def password_problem(password: str) -> str | None:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return f"a password has {PASSWORD_MIN} to {PASSWORD_MAX} characters"
    if "\x00" in password:
        return "a password cannot hold a NUL character"
    return None


def verify(cur: Cursor, username: str, password: str) -> Account | None:
    """The enabled account that `password` opens, or None: an unknown username, a disabled
    account or a wrong password, each refused in the same time."""
    row = None
    if USERNAME.fullmatch(username) and len(password) <= PASSWORD_MAX:
        cur.execute(
            "SELECT account_id, username, display_name, roles, disabled_at IS NOT NULL,"
            " password_hash FROM staff_account WHERE username = %s",
            (username,),
        )
        row = cur.fetchone()
    try:
        HASHER.verify(row[5] if row else _DECOY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row[4]:
        return None
    return Account(row[0], row[1], row[2], tuple(row[3]), disabled=False)


def add(
    conn: Connection, username: str, display_name: str, roles: Sequence[str], password: str
) -> None:
    _check(username_problem(username), roles_problem(roles), password_problem(password))
    if not 1 <= len(display_name.strip()) <= NAME_MAX:
        raise ConfigError([f"a name has 1 to {NAME_MAX} characters"])
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO staff_account (username, display_name, roles, password_hash)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (username) DO NOTHING",
            (username, display_name.strip(), sorted(set(roles)), HASHER.hash(password)),
        )
        if cur.rowcount == 0:
            raise ConfigError([f"an account {username!r} exists already"])


def set_roles(conn: Connection, username: str, roles: Sequence[str]) -> None:
    _check(roles_problem(roles))
    _update(conn, username, sql.SQL("roles = %s"), sorted(set(roles)))


def set_password(conn: Connection, username: str, password: str) -> None:
    """A new password; the account's sessions end, as after a suspected compromise they must."""
    _check(password_problem(password))
    hashed = HASHER.hash(password)
    _update(conn, username, sql.SQL("password_hash = %s"), hashed, end_sessions=True)


def disable(conn: Connection, username: str) -> None:
    disabled = sql.SQL("disabled_at = coalesce(disabled_at, now())")
    _update(conn, username, disabled, end_sessions=True)


def enable(conn: Connection, username: str) -> None:
    _update(conn, username, sql.SQL("disabled_at = NULL"))


def accounts(cur: Cursor) -> list[Account]:
    cur.execute(
        "SELECT account_id, username, display_name, roles, disabled_at IS NOT NULL"
        " FROM staff_account ORDER BY username"
    )
    return [Account(row[0], row[1], row[2], tuple(row[3]), row[4]) for row in cur.fetchall()]


def _update(
    conn: Connection,
    username: str,
    assignment: sql.Composable,
    *values: object,
    end_sessions: bool = False,
) -> None:
    update = sql.SQL("UPDATE staff_account SET {} WHERE username = %s RETURNING account_id")
    with conn, conn.cursor() as cur:
        cur.execute(update.format(assignment), (*values, username))
        row = cur.fetchone()
        if row is None:
            raise ConfigError([f"no account {username!r}"])
        if end_sessions:
            cur.execute("DELETE FROM staff_session WHERE account_id = %s", row)


def _check(*problems: str | None) -> None:
    found = [problem for problem in problems if problem]
    if found:
        raise ConfigError(found)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmnh-accounts",
        description="Manage the dashboard's local staff accounts. A new or changed password is"
        " asked for twice on the terminal, or read from the first line of stdin with"
        " --password-stdin.",
        epilog="Exit codes: 0 done, 2 refused (the message says why), 5 the database does not"
        " answer, 6 its schema is not this release's (run lmnh-schema apply).",
    )
    parser.add_argument("--env-file", type=Path, help="settings file (default ./.env)")
    commands = parser.add_subparsers(dest="command", required=True)
    add_parser = commands.add_parser("add", help="add an account")
    add_parser.add_argument("username")
    add_parser.add_argument("--name", required=True, help="as colleagues see it, e.g. R. Pelkman")
    for sub in (add_parser, commands.add_parser("set-role", help="replace an account's roles")):
        if sub is not add_parser:
            sub.add_argument("username")
        sub.add_argument(
            "--role", action="append", required=True, choices=ROLES, help="repeat for several"
        )
    set_password_parser = commands.add_parser("set-password", help="a new password")
    set_password_parser.add_argument("username")
    for sub in (add_parser, set_password_parser):
        sub.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    for name, text in (("disable", "stop an account and end its sessions"), ("enable", "undo")):
        commands.add_parser(name, help=text).add_argument("username")
    commands.add_parser("list", help="every account with its roles")
    return parser


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ConfigError(["the two passwords differ"])
    return first


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    conn = connect(settings.database, application_name="lmnh-accounts")
    try:
        require_schema(conn)
        if args.command == "list":
            with conn, conn.cursor() as cur:
                for account in accounts(cur):
                    state = "  (disabled)" if account.disabled else ""
                    roles = ",".join(account.roles) or "-"
                    print(f"{account.username}\t{account.display_name}\t{roles}{state}")
        elif args.command == "add":
            add(conn, args.username, args.name, args.role, _password(args.password_stdin))
        elif args.command == "set-role":
            set_roles(conn, args.username, args.role)
        elif args.command == "set-password":
            set_password(conn, args.username, _password(args.password_stdin))
        else:
            {"disable": disable, "enable": enable}[args.command](conn, args.username)
    finally:
        conn.close()
    if args.command != "list":
        print(f"lmnh-accounts: {args.command} {args.username}: done", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run("lmnh-accounts", partial(_run, args))


if __name__ == "__main__":
    sys.exit(main())
