"""Credentials kept out of the site file: a TOML secrets file (owner-only) and environment variables.

    [opcua."twin-opcua"]      # what cellwatch uses to log in to endpoint twin-opcua
    username = "ingest"
    password = "..."

    [twin_users.engineer]     # users of the twin's own OPC UA server (cellwatch plant serve)
    role = "engineer"         # engineer: may write setpoints; operator: read only
    password = "..."

CELLWATCH_OPCUA_<ENDPOINT>_USERNAME / _PASSWORD (endpoint id upper-cased, other characters as "_")
override the file for a client.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("operator", "engineer")


class SecretsError(ValueError):
    """A secrets file problem; names the file and key, never a password."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password for one endpoint (the password is never shown in repr)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ServerUser:
    name: str
    role: str
    password: str = field(repr=False)


def env_key(endpoint_id: str) -> str:
    return "CELLWATCH_OPCUA_" + re.sub(r"[^A-Z0-9]", "_", endpoint_id.upper())


def load_secrets(path: Path | None) -> dict:
    """The parsed secrets file ({} when path is None)."""
    if path is None:
        return {}
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SecretsError(f"{path}: readable by others (mode {mode:o}); run chmod 600 {path}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretsError(f"{path}: cannot read secrets file: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SecretsError(f"{path}: not valid TOML: {exc}") from None


def client_credentials(endpoint_id: str, path: Path | None, env: Mapping[str, str] = os.environ) -> Credentials | None:
    """Credentials for an endpoint: environment first, then the secrets file; None when neither has any."""
    key = env_key(endpoint_id)
    user, pw = env.get(f"{key}_USERNAME"), env.get(f"{key}_PASSWORD")
    if user and pw is not None:
        return Credentials(user, pw)
    entry = load_secrets(path).get("opcua", {}).get(endpoint_id)
    if entry is None:
        return None
    where = f"{path}: opcua.{endpoint_id}"
    if not isinstance(entry, dict):
        raise SecretsError(f"{where}: must be a table with username and password")
    for k in ("username", "password"):
        if not isinstance(entry.get(k), str) or not entry.get(k):
            raise SecretsError(f"{where}.{k}: missing or not a string")
    return Credentials(entry["username"], entry["password"])


def server_users(path: Path) -> dict[str, ServerUser]:
    """Users of the twin's OPC UA server from [twin_users.<name>]."""
    table = load_secrets(path).get("twin_users")
    if not isinstance(table, dict) or not table:
        raise SecretsError(f"{path}: twin_users: missing; the twin's server needs at least one user")
    out = {}
    for name, entry in table.items():
        where = f"{path}: twin_users.{name}"
        if not isinstance(entry, dict):
            raise SecretsError(f"{where}: must be a table with role and password")
        role = entry.get("role")
        if role not in ROLES:
            raise SecretsError(f"{where}.role: must be one of {ROLES} (value: {role!r})")
        if not isinstance(entry.get("password"), str) or len(entry["password"]) < 8:
            raise SecretsError(f"{where}.password: missing or shorter than 8 characters")
        out[name] = ServerUser(name, role, entry["password"])
    return out


def ensure_demo_secrets(path: Path, endpoint_ids: list[str]) -> bool:
    """Write a secrets file with random passwords if there is none; True when one was written."""
    if path.exists():
        return False
    ingest, engineer = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    lines = ["# cellwatch secrets (generated). Keep out of version control; owner-only (chmod 600).", ""]
    for ep in endpoint_ids:
        lines += [f'[opcua."{ep}"]', 'username = "ingest"', f'password = "{ingest}"', ""]
    lines += ["[twin_users.ingest]", 'role = "operator"', f'password = "{ingest}"', "",
              "[twin_users.engineer]", 'role = "engineer"', f'password = "{engineer}"', ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return True
