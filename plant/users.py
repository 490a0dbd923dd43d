"""Users, roles and permissions, sessions, lockout and electronic signatures (21 CFR 11.50-11.300).

Every change and every authentication failure goes on the audit trail in the same transaction.
An e-signature is a re-authentication plus a meaning, bound to the hash of the signed record.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import polars as pl
from sqlalchemy import (
    Connection,
    select,
    update,
)

from plant.accounts import (
    USER_SCHEMA,
    Session,
    Signature,
    User,
    _user,
    fingerprint,
    signatures_table,
    users_table,
)
from plant.audit import AuditTrail, record_hash
from plant.identity import IdentityProvider, LocalPasswords
from plant.records import Records, metadata
from plant.roles import (
    ALL_PERMISSIONS,
    MEANINGS,
    PERMISSIONS,
    ROLES,
    AccessDenied,
    AccountLocked,
    AuthError,
    SessionExpired,
    check_permission,
)

__all__ = ["ALL_PERMISSIONS", "MEANINGS", "PERMISSIONS", "ROLES", "AccessDenied", "AccountLocked",
           "AuthError", "Session", "SessionExpired", "Signature", "User", "Users"]

UTC = timezone.utc
_USERNAME = re.compile(r"[a-z][a-z0-9._-]{1,63}")


class Users:
    """User accounts, authentication, permissions and e-signatures on a `Records` database."""

    def __init__(self, records: Records, audit: AuditTrail, session_timeout_s: float = 900,
                 max_failures: int = 5, *, identity: IdentityProvider | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        if session_timeout_s <= 0 or max_failures < 1:
            raise ValueError("session_timeout_s must be > 0 and max_failures >= 1")
        self._engine = records.engine
        self.audit = audit
        self.session_timeout_s = float(session_timeout_s)
        self.max_failures = max_failures
        self.identity: IdentityProvider = identity or LocalPasswords()
        self._clock = clock or (lambda: datetime.now(UTC))
        metadata.create_all(self._engine, tables=[users_table, signatures_table])

    # -- accounts --------------------------------------------------------------------------

    def _row(self, username: str, conn: Connection | None = None) -> Any:
        stmt = select(users_table).where(users_table.c.username == username)
        if conn is not None:
            return conn.execute(stmt).first()
        with self._engine.connect() as c:
            return c.execute(stmt).first()

    def get(self, username: str) -> User:
        """The account of `username`; KeyError naming it when there is none."""
        row = self._row(username)
        if row is None:
            raise KeyError(f"unknown user {username!r}")
        return _user(row)

    def list(self) -> pl.DataFrame:
        """All accounts (USER_SCHEMA) by username; no password hashes."""
        t = users_table
        with self._engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(select(*(t.c[n] for n in USER_SCHEMA))
                                                   .order_by(t.c.username))]
        return pl.DataFrame(rows, schema=USER_SCHEMA, orient="row")

    def init_admin(self, username: str, full_name: str, password: str) -> User:
        """Create the first admin at set-up; refused once any account exists."""
        return self._create("system:init", username, full_name, "admin", password, first=True)

    def create(self, actor: str, username: str, full_name: str, role: str, password: str) -> User:
        """Create an account; `actor` needs "user.manage". The password is hashed, never stored."""
        self.require(actor, "user.manage")
        return self._create(actor, username, full_name, role, password)

    def _create(self, actor: str, username: str, full_name: str, role: str, password: str | None,
                first: bool = False) -> User:
        if not isinstance(username, str) or not _USERNAME.fullmatch(username):
            raise ValueError(f"username must be 2-64 of a-z 0-9 . _ - starting with a letter, "
                             f"got {username!r}")
        if not isinstance(full_name, str) or not full_name.strip():
            raise ValueError(f"full_name of {username!r} must be a printed name, got {full_name!r}")
        if role not in ROLES:
            raise ValueError(f"role of {username!r} must be one of {ROLES}, got {role!r}")
        stored = None
        if self.identity.manages_passwords:
            stored = self.identity.hash_secret(username, password or "")
        user = User(username, full_name.strip(), role, True, False)
        with self.audit.transaction() as conn:
            if first and conn.execute(select(users_table.c.username).limit(1)).first() is not None:
                raise ValueError("users init: accounts exist already; an admin creates users")
            if self._row(username, conn) is not None:
                raise ValueError(f"user {username!r} exists already")
            conn.execute(users_table.insert().values(
                username=username, full_name=user.full_name, role=role, active=True, locked=False,
                password_hash=stored, failures=0, created_ts=self._clock()))
            self.audit.append(actor, "create", "user", username, None,
                              {"full_name": user.full_name, "role": role,
                               "credential": fingerprint(stored)}, conn=conn)
        return user

    def _change(self, actor: str, username: str, reason: str, action: str,
                **values: Any) -> User:
        self.require(actor, "user.manage")
        if not reason.strip():
            raise ValueError(f"{action} of {username!r}: a reason is required")
        with self.audit.transaction() as conn:
            row = self._row(username, conn)
            if row is None:
                raise KeyError(f"unknown user {username!r}")
            shown = {k: v for k, v in values.items() if k not in ("password_hash", "failures")}
            old = {k: getattr(row, k) for k in shown}
            if "password_hash" in values:
                shown["credential"] = fingerprint(values["password_hash"])
            if self._would_orphan_admins(conn, row, values):
                raise ValueError(f"{action} of {username!r} refused: it is the last active admin")
            conn.execute(update(users_table).where(users_table.c.username == username)
                         .values(**values))
            self.audit.append(actor, action, "user", username, old, shown or None, reason,
                              conn=conn)
            return _user(self._row(username, conn))

    @staticmethod
    def _would_orphan_admins(conn: Connection, row: Any, values: dict[str, Any]) -> bool:
        t = users_table
        if row.role != "admin" or not row.active or row.locked:
            return False
        if values.get("role", "admin") == "admin" and values.get("active", True) \
                and not values.get("locked", False):
            return False
        others = conn.execute(select(t.c.username).where(
            t.c.role == "admin", t.c.active.is_(True), t.c.locked.is_(False),
            t.c.username != row.username)).first()
        return others is None

    def set_role(self, actor: str, username: str, role: str, reason: str) -> User:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return self._change(actor, username, reason, "set_role", role=role)

    def lock(self, actor: str, username: str, reason: str) -> User:
        return self._change(actor, username, reason, "lock", locked=True)

    def unlock(self, actor: str, username: str, reason: str) -> User:
        """Unlock and clear the failure count."""
        return self._change(actor, username, reason, "unlock", locked=False, failures=0)

    def set_active(self, actor: str, username: str, active: bool, reason: str) -> User:
        """Deactivate (or reactivate) an account; accounts are never deleted."""
        return self._change(actor, username, reason, "activate" if active else "deactivate",
                            active=active)

    def reset_password(self, actor: str, username: str, password: str, reason: str) -> User:
        """Set a new password (admin); also unlocks and clears the failure count."""
        if not self.identity.manages_passwords:
            raise ValueError(f"passwords are managed by the {self.identity.name} identity provider")
        stored = self.identity.hash_secret(username, password)
        return self._change(actor, username, reason, "reset_password", password_hash=stored,
                            locked=False, failures=0)

    def change_password(self, username: str, old: str, new: str) -> None:
        """A user changes their own password, proving the old one first."""
        self._verify(username, old, "password_change_failed")
        stored = self.identity.hash_secret(username, new)
        with self.audit.transaction() as conn:
            conn.execute(update(users_table).where(users_table.c.username == username)
                         .values(password_hash=stored))
            self.audit.append(username, "change_password", "user", username, None,
                              {"credential": fingerprint(stored)}, conn=conn)

    # -- authentication --------------------------------------------------------------------

    def _verify(self, username: str, secret: str, failed_action: str) -> Any:
        """Check `secret` for `username`; record and raise on any failure; returns the row."""
        if not isinstance(username, str) or not isinstance(secret, str):
            raise TypeError("username and secret must be strings")
        row = self._row(username)
        if row is not None and (row.locked or not row.active):
            why = "account locked" if row.locked else "account deactivated"
            self.audit.append(username, failed_action, "user", username, reason=why)
            exc = AccountLocked if row.locked else AuthError
            raise exc(f"{why}: {username!r}" + (" (an admin must unlock it)" if row.locked else ""))
        ok = self.identity.verify(username, secret, None if row is None else row.password_hash)
        if row is None:
            who = username.strip()[:64] or "?"
            self.audit.append(who, failed_action, "user", who,
                              reason="unknown user")
            raise AuthError(f"authentication failed for {username!r}")
        if not ok:
            if self._record_failure(username, failed_action):
                raise AccountLocked(f"account locked: {username!r} after {self.max_failures} "
                                    "failed attempts (an admin must unlock it)")
            raise AuthError(f"authentication failed for {username!r}")
        if row.failures or (row.password_hash and self.identity.needs_rehash(row.password_hash)):
            values: dict[str, Any] = {"failures": 0}
            if row.password_hash and self.identity.needs_rehash(row.password_hash):
                values["password_hash"] = self.identity.hash_secret(username, secret)
            with self.audit.transaction() as conn:
                conn.execute(update(users_table).where(users_table.c.username == username)
                             .values(**values))
                if "password_hash" in values:  # stronger hashing settings: same password
                    self.audit.append("system", "rehash_password", "user", username, None,
                                      {"credential": fingerprint(values["password_hash"])},
                                      conn=conn)
        return row

    def _record_failure(self, username: str, action: str) -> bool:
        """Count a failure (atomically across processes); lock at `max_failures`. True if locked."""
        t = users_table
        with self.audit.transaction() as conn:
            conn.execute(update(t).where(t.c.username == username)
                         .values(failures=t.c.failures + 1))
            failures, locked = conn.execute(select(t.c.failures, t.c.locked)
                                            .where(t.c.username == username)).one()
            detail = getattr(self.identity, "last_error", "")  # e.g. why an OIDC token failed
            self.audit.append(username, action, "user", username, conn=conn,
                              reason=f"wrong secret ({failures} of {self.max_failures})"
                              + (f": {detail}" if detail else ""))
            if failures >= self.max_failures and not locked:
                conn.execute(update(t).where(t.c.username == username).values(locked=True))
                self.audit.append("system", "lock", "user", username, {"locked": False},
                                  {"locked": True}, f"{failures} consecutive failed attempts",
                                  conn=conn)
                return True
        return bool(locked)

    def authenticate(self, username: str, password: str) -> Session:
        """Log in: a new session; failures are recorded and `max_failures` of them lock."""
        row = self._verify(username, password, "login_failed")
        now = self._clock()
        self.audit.append(username, "login", "user", username)
        return Session(secrets.token_urlsafe(24), username, row.full_name, row.role, now, now,
                       self.session_timeout_s)

    def touch(self, session: Session) -> Session:
        """The session with its idle timer restarted; SessionExpired when it already timed out."""
        self._live(session)
        return replace(session, last_seen_ts=self._clock())

    def logout(self, session: Session) -> None:
        self.audit.append(session.username, "logout", "user", session.username)

    def _live(self, session: Session) -> None:
        now = self._clock()
        if now >= session.expires_ts:
            idle = (now - session.last_seen_ts).total_seconds()
            raise SessionExpired(f"session of {session.username!r} expired after {idle:.0f} s idle "
                                 f"(timeout {session.timeout_s:.0f} s); log in again")

    # -- permissions -----------------------------------------------------------------------

    def _denial(self, session_or_user: Session | User | str, permission: str) -> AccessDenied | None:
        check_permission(permission)
        if isinstance(session_or_user, Session):
            self._live(session_or_user)
        username = session_or_user if isinstance(session_or_user, str) else session_or_user.username
        row = self._row(username)  # today's role and state, not the one at login
        if row is None:
            return AccessDenied(username, "-", permission, f"unknown user {username!r} "
                                f"cannot {permission!r}")
        if row.locked or not row.active:
            state = "locked" if row.locked else "deactivated"
            return AccessDenied(username, row.role, permission,
                                f"user {username!r} (role {row.role}) is {state}: {permission!r} refused")
        if permission not in PERMISSIONS[row.role]:
            return AccessDenied(username, row.role, permission)
        return None

    def allowed(self, session_or_user: Session | User | str, permission: str) -> bool:
        """Whether the user may do `permission` now (for showing buttons; records nothing)."""
        return self._denial(session_or_user, permission) is None

    def require(self, session_or_user: Session | User | str, permission: str) -> None:
        """Raise AccessDenied naming user, role and permission (and record it) unless allowed."""
        denial = self._denial(session_or_user, permission)
        if denial is not None:
            self.audit.append(denial.username[:128], "access_denied", "permission", permission,
                              reason=str(denial))
            raise denial

    # -- electronic signatures -------------------------------------------------------------

    def sign(self, username: str, password: str, meaning: str, record_type: str, record_id: str,
             record: object, reason: str = "", *, permission: str | None = None,
             on_signed: Callable[[Connection, Signature], None] | None = None) -> Signature:
        """Re-authenticate and sign `record` with a meaning; a wrong password is refused and
        recorded. `permission`: the signer's role must hold it. `on_signed(conn, signature)` runs
        in the signature's transaction, to store the signed change atomically with it."""
        if meaning not in MEANINGS:
            raise ValueError(f"signature meaning must be one of {MEANINGS}, got {meaning!r}")
        for name, value in (("record_type", record_type), ("record_id", record_id)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"signature {name} must be a non-empty string, got {value!r}")
        digest = record_hash(record)  # before re-authenticating: an unhashable record fails early
        row = self._verify(username, password, "signature_failed")
        if permission is not None:
            self.require(username, permission)
        with self.audit.transaction() as conn:
            ts = self._clock()
            values = {"username": username, "full_name": row.full_name, "meaning": meaning,
                      "record_type": record_type, "record_id": record_id, "record_hash": digest,
                      "ts": ts, "reason": reason}
            sig_id = conn.execute(signatures_table.insert().values(values)).inserted_primary_key[0]
            sig = Signature(int(sig_id), **values)
            self.audit.append(username, "sign", record_type, record_id, None,
                              {"signature_id": sig.id, "meaning": meaning, "record_hash": digest,
                               "full_name": row.full_name, "ts": ts}, reason, conn=conn)
            if on_signed is not None:
                on_signed(conn, sig)
        return sig

    def signatures(self, record_type: str | None = None,
                   record_id: str | None = None) -> list[Signature]:
        """Signatures, oldest first, optionally of one record type and id."""
        t = signatures_table
        stmt = select(t).order_by(t.c.id)
        if record_type is not None:
            stmt = stmt.where(t.c.record_type == record_type)
        if record_id is not None:
            stmt = stmt.where(t.c.record_id == record_id)
        with self._engine.connect() as conn:
            return [Signature(**row._mapping) for row in conn.execute(stmt)]

    @staticmethod
    def signature_matches(signature: Signature, record: object) -> bool:
        """True when `record` is still exactly what was signed (its hash is unchanged)."""
        return signature.record_hash == record_hash(record)
