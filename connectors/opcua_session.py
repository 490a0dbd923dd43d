"""OPC UA client set-up for a site endpoint: security, credentials, tag resolution, unit check, errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from asyncua import Client, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from plant.pki import TrustFolder, ensure_certificate
from plant.secrets import Credentials
from plant.site import Endpoint, Tag

log = logging.getLogger("cellwatch.connectors.opcua")
# During an outage asyncua logs every failed publish (with a traceback) and reconnect attempt; the
# connector logs the loss and the recovery once each instead (architecture rule 3).
logging.getLogger("asyncua.client.ua_session").setLevel(logging.CRITICAL)
for _name in ("asyncua.client.client", "asyncua.client.ua_client.UASocketProtocol"):
    logging.getLogger(_name).setLevel(logging.ERROR)
CLIENT_URI = "urn:cellwatch:ingest"
_CHUNK = 500  # nodes per TranslateBrowsePaths / Read request


class OpcUaConfigError(ValueError):
    """A connector set-up problem that retrying cannot fix (names endpoint and setting)."""


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """Where cellwatch's client certificate lives (its PKI folder) and the credentials it logs in with."""

    pki: Path | None
    credentials: Credentials | None
    application_uri: str = CLIENT_URI


async def make_client(endpoint: Endpoint, sec: ClientSecurity) -> Client:
    """An asyncua Client with auto-reconnect, security and credentials from the endpoint's config."""
    # auto_reconnect: asyncua re-activates or re-creates the session and its subscriptions; backoff capped.
    # The watchdog probe must answer within watchdog_intervall; a short one misfires on a busy machine and a
    # needless reconnect loses the values in flight. A closed socket is still seen at once; a hung server in <= 2x.
    client = Client(endpoint.url or "", timeout=max(2.0, endpoint.timeout_s),
                    watchdog_intervall=max(5.0, 2 * endpoint.timeout_s), auto_reconnect=True,
                    reconnect_max_delay=endpoint.backoff_max_s)
    client.application_uri = sec.application_uri
    client.name = client.description = "cellwatch ingest"
    if sec.credentials is not None:
        client.set_user(sec.credentials.username)
        client.set_password(sec.credentials.password)
    if endpoint.security == "Basic256Sha256_SignAndEncrypt":
        if sec.pki is None:
            raise OpcUaConfigError(f"endpoint {endpoint.id}: security = {endpoint.security!r} needs a PKI folder "
                                   "for the client certificate (--pki)")
        own = await ensure_certificate(sec.pki, "client", sec.application_uri, server=False)
        client.certificate_validator = TrustFolder(sec.pki, peer_is_server=True)
        # server_certificate=None: asyncua fetches it from GetEndpoints; the validator decides whether we trust it.
        await client.set_security(SecurityPolicyBasic256Sha256, certificate=str(own.cert), private_key=str(own.key),
                                  mode=ua.MessageSecurityMode.SignAndEncrypt)
    return client


def explain(exc: BaseException, endpoint: Endpoint, sec: ClientSecurity) -> str:
    """A one-line reason for a failed connect that says what to fix."""
    url, user = endpoint.url, sec.credentials.username if sec.credentials else None
    name = type(exc).__name__
    code = getattr(exc, "code", None)
    status = ua.StatusCode(code).name if isinstance(code, int) else name
    if status in ("BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid"):
        return (f"{url}: the server refused the login of user {user!r} ({status}): wrong user name or password?"
                if user else f"{url}: the server requires a user name and password ({status}); none configured "
                f"(secrets file or {_env(endpoint)}_USERNAME/_PASSWORD)")
    if status == "BadCertificateUntrusted" and isinstance(exc, ServiceError):
        return (f"{url}: cellwatch does not trust the server's certificate (BadCertificateUntrusted); it was saved "
                f"in {sec.pki}/rejected: move it to {sec.pki}/trusted to trust it")
    if status in ("BadCertificateUntrusted", "BadSecurityChecksFailed", "BadCertificateInvalid"):
        return (f"{url}: the server does not trust cellwatch's certificate ({status}); copy "
                f"{sec.pki}/own/client-cert.der into the server's trusted folder")
    if "No matching endpoints" in str(exc) or status == "BadSecurityPolicyRejected":
        return (f"{url}: the server offers no endpoint with security {endpoint.security!r} ({status}: {exc}); "
                "set security in the site file to a policy the server offers")
    if isinstance(exc, (ConnectionRefusedError, ConnectionResetError)):
        return f"{url}: connection refused (is the server running?)"
    if isinstance(exc, TimeoutError):
        return f"{url}: no answer within {endpoint.timeout_s:g} s"
    if isinstance(exc, OSError):
        return f"{url}: cannot connect: {exc.strerror or exc}"
    return f"{url}: {status}: {exc}"


def _env(endpoint: Endpoint) -> str:
    from plant.secrets import env_key

    return env_key(endpoint.id)


def _path(browse_path: str, ns: int) -> str:
    """'BR01/Temperature' -> '/2:BR01/2:Temperature' (segments that name a namespace keep it)."""
    return "".join(f"/{seg}" if ":" in seg else f"/{ns}:{seg}" for seg in browse_path.strip("/").split("/"))


async def namespace_index(client: Client, endpoint: Endpoint) -> int:
    if endpoint.namespace is None:
        return 2  # the first application namespace on most servers
    try:
        return await client.get_namespace_index(endpoint.namespace)
    except ValueError:
        raise OpcUaConfigError(f"endpoint {endpoint.id}: namespace = {endpoint.namespace!r} is not in the "
                               "server's namespace array") from None


async def resolve(client: Client, endpoint: Endpoint, tags: list[Tag]) -> tuple[dict[str, ua.NodeId], dict[str, str]]:
    """Node ids of tags (node_id if given, else browse path) and a reason for each that failed."""
    ns = await namespace_index(client, endpoint)
    found: dict[str, ua.NodeId] = {}
    failed: dict[str, str] = {}
    by_path = []
    for t in tags:
        addr = t.opcua
        assert addr is not None
        if addr.node_id:
            found[t.name] = ua.NodeId.from_string(addr.node_id) if addr.node_id.startswith(("ns=", "i=", "s=")) \
                else ua.NodeId(addr.node_id, ns)
        else:
            by_path.append(t)
    objects = ua.NodeId(ua.ObjectIds.ObjectsFolder)
    for i in range(0, len(by_path), _CHUNK):
        chunk = by_path[i:i + _CHUNK]
        results = await client.translate_browsepaths(objects, [_path(t.opcua.browse_path, ns) for t in chunk])  # type: ignore[union-attr]
        for t, r in zip(chunk, results):
            if r.StatusCode.is_good() and r.Targets:
                found[t.name] = r.Targets[0].TargetId
            else:
                failed[t.name] = f"{r.StatusCode.name}: browse path {t.opcua.browse_path!r} not found"  # type: ignore[union-attr]
    return found, failed


async def unit_mismatches(client: Client, tags: dict[str, Tag], nodes: dict[str, ua.NodeId]) -> dict[str, str]:
    """Tags whose server EngineeringUnits differ from the site's uom (server unit -> status text)."""
    names = list(nodes)
    out: dict[str, str] = {}
    for i in range(0, len(names), _CHUNK):
        chunk = names[i:i + _CHUNK]
        bpaths = []
        for name in chunk:
            bp = ua.BrowsePath()
            bp.StartingNode = nodes[name]
            bp.RelativePath = ua.RelativePath.from_string("/0:EngineeringUnits")
            bpaths.append(bp)
        results = await client.uaclient.translate_browsepaths_to_nodeids(bpaths)
        eu_nodes = {n: r.Targets[0].TargetId for n, r in zip(chunk, results) if r.StatusCode.is_good() and r.Targets}
        if not eu_nodes:
            continue
        values = await client.read_attributes([client.get_node(x) for x in eu_nodes.values()])
        for name, dv in zip(eu_nodes, values):
            eu = dv.Value.Value if dv.Value is not None else None
            shown = getattr(getattr(eu, "DisplayName", None), "Text", None)
            if shown is not None and shown != tags[name].uom:
                out[name] = f"unit mismatch: server {shown!r}, site {tags[name].uom!r}"
    return out
