"""Account records: User, Session and Signature, and the users and signatures tables."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from plant.guards import append_only
from plant.records import UTCDateTime, metadata
from plant.roles import ROLES
from plant.samples import TS_DTYPE


@dataclass(frozen=True, slots=True)
class User:
    """A user account; users are never deleted (deactivate instead) so records stay attributable."""

    username: str
    full_name: str
    role: str
    active: bool
    locked: bool


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in user; idle longer than `timeout_s` it expires (`Users.touch` keeps it alive)."""

    token: str
    username: str
    full_name: str
    role: str
    started_ts: datetime
    last_seen_ts: datetime
    timeout_s: float

    @property
    def expires_ts(self) -> datetime:
        return self.last_seen_ts + timedelta(seconds=self.timeout_s)


@dataclass(frozen=True, slots=True)
class Signature:
    """An electronic signature: who (printed name), what it means, when, and the record's hash."""

    id: int
    username: str
    full_name: str
    meaning: str
    record_type: str
    record_id: str
    record_hash: str
    ts: datetime
    reason: str = ""

    def manifest(self) -> str:
        """The human-readable signature shown with the record (21 CFR 11.50)."""
        return (f"{self.full_name} ({self.username}) - {self.meaning} - "
                f"{self.ts:%Y-%m-%d %H:%M:%S} UTC")


users_table = Table(
    "users", metadata,
    Column("username", String(64), primary_key=True),
    Column("full_name", String(128), nullable=False), Column("role", String(32), nullable=False),
    Column("active", Boolean, nullable=False), Column("locked", Boolean, nullable=False),
    Column("password_hash", String(256)), Column("failures", Integer, nullable=False),
    Column("created_ts", UTCDateTime(), nullable=False),
    CheckConstraint("role IN ({})".format(", ".join(f"'{r}'" for r in ROLES)), name="role"),
)
signatures_table = Table(
    "signatures", metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(64), nullable=False), Column("full_name", String(128), nullable=False),
    Column("meaning", String(32), nullable=False), Column("record_type", String(64), nullable=False),
    Column("record_id", String(128), nullable=False), Column("record_hash", String(64), nullable=False),
    Column("ts", UTCDateTime(), nullable=False), Column("reason", Text, nullable=False),
    Index(None, "record_type", "record_id"),
)
append_only(signatures_table)

USER_SCHEMA: dict[str, pl.DataType] = {
    "username": pl.String(), "full_name": pl.String(), "role": pl.Enum(ROLES),
    "active": pl.Boolean(), "locked": pl.Boolean(), "failures": pl.Int64(), "created_ts": TS_DTYPE,
}


def fingerprint(stored: str | None) -> str | None:
    """A short hash of a stored credential, put on the audit trail so a credential swapped in
    the database shows up (`plant.account_check`) without disclosing the hash itself."""
    return None if stored is None else hashlib.sha256(stored.encode()).hexdigest()[:16]


def _user(row: Any) -> User:
    return User(row.username, row.full_name, row.role, bool(row.active), bool(row.locked))
