"""The database's login roles, none of them a superuser: the owner runs migrations (the only one
with DDL), the writer is the service, the reader is for auditors. A DBA creates them once with
the statements `coupon db roles` prints; the embedded PostgreSQL creates them itself."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from urllib.parse import quote

OWNER = "coupon_owner"
WRITER = "coupon_writer"
READER = "coupon_reader"
ROLES = (OWNER, WRITER, READER)

_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def new_passwords() -> dict[str, str]:
    """A fresh random password per role (URL- and SQL-literal-safe characters only)."""
    return {role: secrets.token_urlsafe(24) for role in ROLES}


def role_statements(passwords: Mapping[str, str]) -> list[str]:
    """The three login roles, created or given these passwords (safe to run again). The
    writer may drop to the reader's rights for auditor requests."""
    statements = []
    for role in ROLES:
        password = passwords[role]
        if not re.fullmatch(r"[A-Za-z0-9_\-]{16,128}", password):
            raise ValueError("passwords are 16..128 of [A-Za-z0-9_-]")
        statements.append(
            f"DO $$ BEGIN CREATE ROLE {role} LOGIN; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        statements.append(
            f"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
            f"NOBYPASSRLS PASSWORD '{password}'"
        )
    statements.append(f"GRANT {READER} TO {WRITER}")
    return statements


def database_statements(database: str) -> list[str]:
    """The database, owned by the owner role; only the three roles may connect."""
    if not _DATABASE_NAME.match(database):
        raise ValueError("a database name is [a-z_][a-z0-9_]*")
    return [
        f"CREATE DATABASE {database} OWNER {OWNER}",
        f"REVOKE ALL ON DATABASE {database} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {database} TO {WRITER}, {READER}",
    ]


def dsn_for(
    dsn: str, *, database: str | None = None, role: str | None = None, password: str = ""
) -> str:
    """The same server (or servers: a multi-host DSN), in another database and/or logged in as
    another role."""
    scheme, _, rest = dsn.partition("://")
    location, mark, query = rest.partition("?")
    userinfo, at, hostpath = location.rpartition("@")
    hosts, slash, path = hostpath.partition("/")
    if role is not None:
        userinfo = quote(role, safe="") + (":" + quote(password, safe="") if password else "")
        at = "@"
    if database is not None:
        slash, path = "/", quote(database, safe="")
    return f"{scheme}://{userinfo}{at}{hosts}{slash}{path}{mark}{query}"
