"""Roles, their stated permissions, signature meanings and the access errors (see docs/compliance.md)."""

from __future__ import annotations

ROLES = ("operator", "engineer", "qa", "data_scientist", "admin")
_OPERATE = frozenset({"alarm.ack", "deviation.open", "recommendation.decide", "setpoint.write",
                      "batch.record"})
# Stated per role (docs/compliance.md shows this table; a test keeps the two equal). Separation of
# duties: admin manages accounts but approves nothing; QA approves but writes no setpoints.
PERMISSIONS: dict[str, frozenset[str]] = {
    "operator": _OPERATE,
    "engineer": _OPERATE | {"alarm.shelve", "deviation.investigate", "connector.manage",
                            "site.configure", "audit.read"},
    "qa": frozenset({"deviation.open", "deviation.approve", "deviation.close", "batch.release",
                     "audit.read", "audit.review", "audit.export", "model.approve"}),
    "data_scientist": frozenset({"model.train", "model.promote", "data.export", "audit.read"}),
    "admin": frozenset({"user.manage", "audit.read", "audit.export", "connector.manage",
                        "site.configure"}),
}
ALL_PERMISSIONS = frozenset().union(*PERMISSIONS.values())
MEANINGS = ("authored", "reviewed", "approved", "rejected", "released", "closed", "accepted",
            "modified", "verified", "acknowledged", "shelved", "opened", "investigated",
            "promoted", "cancelled", "reopened")


class AccessDenied(PermissionError):
    """A user's role lacks a permission (or the account cannot act); names user, role, permission."""

    def __init__(self, username: str, role: str, permission: str, why: str = "") -> None:
        self.username, self.role, self.permission = username, role, permission
        super().__init__(why or f"user {username!r} (role {role}) lacks permission {permission!r}")


class AuthError(Exception):
    """Authentication failed: unknown user, wrong secret, deactivated account or expired session."""


class AccountLocked(AuthError):
    """The account is locked after repeated failures (or by an admin); an admin must unlock it."""


class SessionExpired(AuthError):
    """The session was idle longer than the timeout; log in again."""


def check_permission(permission: str) -> None:
    """ValueError naming an unknown permission (a typo must not silently deny or allow)."""
    if permission not in ALL_PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}; known: {sorted(ALL_PERMISSIONS)}")
