"""A local OPC UA PKI folder: own certificate, trusted peers, rejected peers.

Layout (the usual OPC UA one)::

    <pki>/own/<name>-cert.der, <name>-key.pem   this application's certificate and key (generated once)
    <pki>/trusted/                             peer certificates this application accepts
    <pki>/rejected/                            peer certificates it refused; move one to trusted/ to accept it

A new certificate is also copied into trusted/ of the same folder, so a server and a client that share
one PKI folder on one machine (the demo) trust each other; across machines, copy the .der file over.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.common.utils import ServiceError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

log = logging.getLogger("cellwatch.pki")
# asyncua logs a full traceback for every untrusted certificate; TrustFolder logs one line instead.
logging.getLogger("asyncuagds.validate").setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class OwnCertificate:
    """Paths of an application's certificate and private key, and the URI its certificate names."""

    cert: Path
    key: Path
    application_uri: str


async def ensure_certificate(pki: Path, name: str, application_uri: str, server: bool) -> OwnCertificate:
    """This application's certificate in <pki>/own, generated on first use (self-signed, 365 days)."""
    own = pki / "own"
    cert, key = own / f"{name}-cert.der", own / f"{name}-key.pem"
    for sub in ("own", "trusted", "rejected"):
        (pki / sub).mkdir(parents=True, exist_ok=True)
    if not (cert.exists() and key.exists()):
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        await setup_self_signed_certificate(key, cert, application_uri, socket.gethostname(), usage,
                                            {"organizationName": "cellwatch"})
        os.chmod(key, 0o600)
        (pki / "trusted" / cert.name).write_bytes(cert.read_bytes())
        log.info("generated %s certificate %s (trusted in %s)", name, cert, pki / "trusted")
    found = _uri_of(cert)
    if found != application_uri:
        raise ValueError(f"{cert}: certificate names application URI {found!r}, expected {application_uri!r}; "
                         "delete the certificate and its key to generate a new pair")
    return OwnCertificate(cert, key, application_uri)


def _uri_of(cert_path: Path) -> str | None:
    cert = x509.load_der_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


class TrustFolder:
    """Certificate validator over <pki>/trusted: re-reads the folder when it meets an unknown peer, so a
    certificate moved there is accepted without a restart; refused certificates land in <pki>/rejected."""

    def __init__(self, pki: Path, peer_is_server: bool) -> None:
        self.pki = pki
        self._store = TrustStore([pki / "trusted"], [])
        peer = CertificateValidatorOptions.PEER_SERVER if peer_is_server else CertificateValidatorOptions.PEER_CLIENT
        self._validator = CertificateValidator(CertificateValidatorOptions.TRUSTED_VALIDATION | peer, self._store)
        self._loaded = False

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        if not self._loaded:
            await self._store.load()
            self._loaded = True
        try:
            await self._validator.validate(cert, app)
        except ServiceError as exc:
            if exc.code != ua.StatusCodes.BadCertificateUntrusted:
                log.warning("certificate of %s refused: %s", app.ApplicationUri, ua.StatusCode(exc.code).name)
                raise
            await self._store.load()  # someone may have trusted it since
            try:
                await self._validator.validate(cert, app)
            except ServiceError:
                path = self._reject(cert)
                log.warning("untrusted certificate of %s refused; saved as %s (move it to %s to trust it)",
                            app.ApplicationUri, path, self.pki / "trusted")
                raise

    def _reject(self, cert: x509.Certificate) -> Path:
        der = cert.public_bytes(Encoding.DER)
        path = self.pki / "rejected" / f"{hashlib.sha1(der).hexdigest()[:16]}.der"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(der)
        return path
