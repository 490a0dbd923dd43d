"""How a user proves who they are: the `IdentityProvider` hook and local argon2id passwords.

Sites with an identity provider plug in `plant.oidc.OIDCProvider` instead; roles, lockout,
sessions and signatures stay in `plant.users` either way.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


@runtime_checkable
class IdentityProvider(Protocol):
    """Checks a user's secret (a password, or an OIDC ID token) for `Users`."""

    name: str
    manages_passwords: bool  # False: cellwatch stores no secret (create/reset-password refuse)

    def hash_secret(self, username: str, secret: str) -> str:
        """What to store for a new or reset secret; raise ValueError when it breaks policy."""
        ...

    def verify(self, username: str, secret: str, stored: str | None) -> bool:
        """True when `secret` proves `username`; `stored` is what `hash_secret` returned."""
        ...

    def needs_rehash(self, stored: str) -> bool:
        """True when `stored` was made with weaker settings than today's (rehash on login)."""
        ...


class LocalPasswords:
    """Local passwords hashed with argon2id (memory-hard); a policy on length and username."""

    name = "local"
    manages_passwords = True

    def __init__(self, hasher: PasswordHasher | None = None, min_length: int = 10) -> None:
        # argon2-cffi's default is RFC 9106's low-memory profile: argon2id, 64 MiB, t=3, p=4
        self.hasher = hasher or PasswordHasher()
        self.min_length = min_length
        self._dummy: str | None = None

    def hash_secret(self, username: str, secret: str) -> str:
        if not isinstance(secret, str) or len(secret) < self.min_length:
            raise ValueError(f"password for {username!r} must have at least {self.min_length} "
                             "characters")
        if username.lower() in secret.lower():
            raise ValueError(f"password for {username!r} must not contain the username")
        return self.hasher.hash(secret)

    def verify(self, username: str, secret: str, stored: str | None) -> bool:
        if stored is None:
            # hash anyway so an unknown user takes as long as a wrong password (no user probing)
            self._dummy = self._dummy or self.hasher.hash("not-a-password")
            stored = self._dummy
            secret = secret + "\0"
        try:
            return self.hasher.verify(stored, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return False
