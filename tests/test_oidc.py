"""OIDC adapter: ID tokens signed by a local key stand in for the site's identity provider."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from plant.audit import AuditTrail
from plant.identity import IdentityProvider, LocalPasswords
from plant.oidc import OIDCProvider, load_identity
from plant.records import Records
from plant.users import AuthError, Users

NOW = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
ISS, CLIENT = "https://idp.example.org/realms/plant", "cellwatch"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def num(n: int, size: int | None = None) -> str:
    return b64(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


def jwks() -> dict[str, object]:
    r, e = RSA_KEY.public_key().public_numbers(), EC_KEY.public_key().public_numbers()
    return {"keys": [{"kty": "RSA", "kid": "r1", "n": num(r.n), "e": num(r.e)},
                     {"kty": "EC", "kid": "e1", "crv": "P-256", "x": num(e.x, 32), "y": num(e.y, 32)}]}


def token(alg: str = "RS256", kid: str = "r1", **over: object) -> str:
    now = int(NOW.timestamp())
    claims = {"iss": ISS, "aud": CLIENT, "exp": now + 300, "iat": now - 5, "auth_time": now - 5,
              "preferred_username": "quinn", **over}
    signing = f"{b64(json.dumps({'alg': alg, 'kid': kid}).encode())}.{b64(json.dumps(claims).encode())}"
    if alg == "RS256":
        sig = RSA_KEY.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(EC_KEY.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing}.{b64(sig)}"


@pytest.fixture
def idp() -> OIDCProvider:
    return OIDCProvider(ISS, CLIENT, jwks=jwks(), clock=lambda: NOW)


def test_valid_tokens(idp: OIDCProvider) -> None:
    assert isinstance(idp, IdentityProvider)
    assert idp.verify("quinn", token(), None)
    assert idp.verify("quinn", token("ES256", "e1", aud=["other", CLIENT]), None)


@pytest.mark.parametrize("bad,why", [
    (token(aud="someone-else"), "audience"), (token(iss="https://evil.example"), "issuer"),
    (token(exp=int(NOW.timestamp()) - 3600), "expired"),
    (token(auth_time=int(NOW.timestamp()) - 3600), "log in again"),
    (token(preferred_username="mallory"), "not 'quinn'"), (token(kid="nope"), "no key"),
    (token("ES256", "r1"), "not allowed"), ("a.b", "not a JWT"),
])
def test_refused_tokens_say_why(idp: OIDCProvider, bad: str, why: str) -> None:
    assert not idp.verify("quinn", bad, None)
    assert why in idp.last_error


def test_tampered_token_is_refused(idp: OIDCProvider) -> None:
    head, body, sig = token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged = b64(json.dumps({**claims, "preferred_username": "quinn", "exp": 2**40}).encode())
    assert not idp.verify("quinn", f"{head}.{forged}.{sig}", None)
    assert idp.last_error == "bad token signature"


def test_users_with_oidc_sign_and_lock(idp: OIDCProvider, tmp_path: Path) -> None:
    with Records.open(tmp_path / "records.db") as records:
        users = Users(records, AuditTrail(records), identity=idp)
        users.init_admin("root", "Ada Admin", "")
        users.create("root", "quinn", "Quinn QA", "qa", "")
        with pytest.raises(ValueError, match="managed by the oidc identity provider"):
            users.reset_password("root", "quinn", "x" * 12, "forgot")
        sig = users.sign("quinn", token(), "approved", "deviation", "DEV-1", {"a": 1})
        assert sig.full_name == "Quinn QA"
        with pytest.raises(AuthError):
            users.authenticate("quinn", token(aud="x"))
        reason = users.audit.entries().row(-1, named=True)["reason"]
        assert reason.startswith("wrong secret (1 of 5): audience")


def test_load_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELLWATCH_IDENTITY", raising=False)
    assert isinstance(load_identity(), LocalPasswords)
    cfg = tmp_path / "identity.toml"
    cfg.write_text(f'[identity]\nprovider = "oidc"\nissuer = "{ISS}"\nclient_id = "{CLIENT}"\n'
                   'jwks_uri = "https://idp.example.org/certs"\nmax_auth_age_s = 120\n')
    monkeypatch.setenv("CELLWATCH_IDENTITY", str(cfg))
    got = load_identity()
    assert isinstance(got, OIDCProvider) and got.max_auth_age_s == 120 and got.client_id == CLIENT
    cfg.write_text('[identity]\nprovider = "saml"\n')
    with pytest.raises(ValueError, match="must be 'local' or 'oidc'"):
        load_identity()


def test_local_argon2_costs_are_configurable(tmp_path: Path) -> None:
    cfg = tmp_path / "identity.toml"
    cfg.write_text('[identity]\nprovider = "local"\nargon2_memory_kib = 8192\nargon2_time_cost = 1\n')
    got = load_identity(cfg)
    assert isinstance(got, LocalPasswords)
    assert got.hash_secret("x", "long-enough-pw").startswith("$argon2id$v=19$m=8192,t=1,p=4$")
