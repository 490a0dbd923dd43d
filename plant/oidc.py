"""OIDC login for sites with an identity provider: verifies ID tokens (RS256/ES256) from the IdP.

The browser flow that obtains the token (authorization code + PKCE, `prompt=login` and `max_age`
for a signature's re-authentication) belongs to the panel; this adapter checks the token it gets.
Offline tests cover token checking with a local key; fetching the JWKS from the IdP is not tested.
"""

from __future__ import annotations

import base64
import json
import os
import tomllib
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from argon2 import PasswordHasher
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from plant.identity import IdentityProvider, LocalPasswords

UTC = timezone.utc


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _int(value: str) -> int:
    return int.from_bytes(_b64(value), "big")


def _public_key(jwk: Mapping[str, Any]) -> Any:
    if jwk.get("kty") == "RSA":
        return rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        return ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]),
                                             ec.SECP256R1()).public_key()
    raise ValueError(f"unsupported JWK (kty={jwk.get('kty')!r}, crv={jwk.get('crv')!r})")


class OIDCProvider:
    """Checks an OIDC ID token as the user's secret; stores no password (roles stay local)."""

    name = "oidc"
    manages_passwords = False

    def __init__(self, issuer: str, client_id: str, *, jwks: Mapping[str, Any] | None = None,
                 jwks_uri: str | None = None, username_claim: str = "preferred_username",
                 max_auth_age_s: float = 300.0, leeway_s: float = 60.0,
                 clock: Callable[[], datetime] | None = None) -> None:
        if jwks is None and jwks_uri is None:
            raise ValueError("OIDCProvider needs jwks (the IdP's keys) or jwks_uri")
        self.issuer, self.client_id = issuer.rstrip("/"), client_id
        self.jwks_uri, self.username_claim = jwks_uri, username_claim
        self.max_auth_age_s, self.leeway_s = max_auth_age_s, leeway_s
        self._keys = {k.get("kid", ""): k for k in (jwks or {}).get("keys", [])}
        self._clock = clock or (lambda: datetime.now(UTC))
        self.last_error = ""  # why the last token was refused (for the audit trail reason)

    def hash_secret(self, username: str, secret: str) -> str:
        raise ValueError(f"passwords of {username!r} are managed by the OIDC identity provider")

    def needs_rehash(self, stored: str) -> bool:
        return False

    def _key(self, kid: str) -> Mapping[str, Any]:
        if kid not in self._keys and self.jwks_uri:  # key rotation: refetch once (untested offline)
            with urllib.request.urlopen(self.jwks_uri, timeout=10) as resp:
                self._keys = {k.get("kid", ""): k for k in json.load(resp).get("keys", [])}
        if kid not in self._keys:
            raise ValueError(f"no key {kid!r} in the IdP's JWKS")
        return self._keys[kid]

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of an ID token; ValueError naming the check that failed."""
        try:
            head_b, body_b, sig_b = token.split(".")
            header, claims = json.loads(_b64(head_b)), json.loads(_b64(body_b))
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"not a JWT: {exc}") from None
        key = _public_key(self._key(header.get("kid", "")))
        signed, sig = f"{head_b}.{body_b}".encode(), _b64(sig_b)
        try:
            if header.get("alg") == "RS256" and isinstance(key, rsa.RSAPublicKey):
                key.verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
            elif header.get("alg") == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
                der = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                           int.from_bytes(sig[32:], "big"))
                key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            else:
                raise ValueError(f"algorithm {header.get('alg')!r} not allowed with this key")
        except InvalidSignature:
            raise ValueError("bad token signature") from None
        now = self._clock().timestamp()
        aud = claims.get("aud")
        if claims.get("iss", "").rstrip("/") != self.issuer:
            raise ValueError(f"issuer {claims.get('iss')!r} is not {self.issuer!r}")
        if self.client_id not in (aud if isinstance(aud, list) else [aud]):
            raise ValueError(f"audience {aud!r} does not include {self.client_id!r}")
        if float(claims.get("exp", 0)) < now - self.leeway_s:
            raise ValueError("token expired")
        if float(claims.get("auth_time", 0)) < now - self.max_auth_age_s:
            raise ValueError(f"authentication older than {self.max_auth_age_s:.0f} s; "
                             "log in again (prompt=login)")
        return claims

    def verify(self, username: str, secret: str, stored: str | None) -> bool:
        try:
            claims = self.claims(secret)
        except ValueError as exc:
            self.last_error = str(exc)
            return False
        if claims.get(self.username_claim) != username:
            self.last_error = f"token is for {claims.get(self.username_claim)!r}, not {username!r}"
            return False
        return True


def load_identity(path: str | os.PathLike[str] | None = None) -> IdentityProvider:
    """The identity provider configured in a TOML file (`CELLWATCH_IDENTITY` names it), else
    local passwords. [identity] provider = "local" (argon2_* costs, min_password_length) or
    "oidc" (issuer, client_id, jwks_uri, username_claim, max_auth_age_s, leeway_s)."""
    path = path or os.environ.get("CELLWATCH_IDENTITY")
    if not path:
        return LocalPasswords()
    with open(path, "rb") as fh:
        cfg = tomllib.load(fh).get("identity", {})
    kind = cfg.pop("provider", "local")
    if kind == "local":  # argon2id cost: tune to the server (RFC 9106 low-memory profile default)
        hasher = PasswordHasher(time_cost=int(cfg.get("argon2_time_cost", 3)),
                                memory_cost=int(cfg.get("argon2_memory_kib", 65536)),
                                parallelism=int(cfg.get("argon2_parallelism", 4)))
        return LocalPasswords(hasher, min_length=int(cfg.get("min_password_length", 10)))
    if kind == "oidc":
        try:
            return OIDCProvider(cfg.pop("issuer"), cfg.pop("client_id"), **cfg)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: [identity] oidc needs issuer and client_id; {exc}") from None
    raise ValueError(f"{path}: [identity] provider must be 'local' or 'oidc', got {kind!r}")
