"""The twin's bioreactors on an OPC UA server (asyncua), secure by default.

Each unit is an object (``ns=2;s=BR01``) holding its tags as AnalogItemType variables with EURange and
EngineeringUnits, at the site's browse paths, with string NodeIds equal to the tag names
(``ns=2;s=BR01.TEMP``) so ids survive restarts; plus BatchId, Phase and CultureDay. A failed probe is
written as BadSensorFailure with no value. Security: Basic256Sha256 SignAndEncrypt, certificates from a
local PKI folder, user name + password only (no anonymous), a certificate validator always set; the
unsecured endpoint exists only when the site endpoint says security = "None". Setpoints are writable by
engineers only; a write is range-checked before it is accepted and then handed to the twin.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User, UserRole
from asyncua.server.monitored_item_service import MonitoredItemService

from plant.pki import TrustFolder, ensure_certificate
from plant.samples import utcnow
from plant.secrets import ServerUser
from plant.site import Site, Tag

log = logging.getLogger("cellwatch.sim.opcua")
for _noisy in ("asyncua.common.instantiate_util", "asyncua.common.copy_node_util", "asyncua.server.address_space",
               "asyncua.server.uaprocessor",
               "asyncua.server.binary_server_asyncio", "asyncua.crypto.uacrypto"):
    logging.getLogger(_noisy).setLevel(logging.CRITICAL)  # harmless copy errors, refused peers (logged by us)

NAMESPACE = "urn:cellwatch:twin"
SERVER_URI = "urn:cellwatch:twin:opcua-server"
UNECE_NS = "http://www.opcfoundation.org/UA/units/un/cefact"
# UCUM code (as in the site file) -> UNECE Rec. 20 common code, for EUInformation.UnitId.
UNECE = {"Cel": "CEL", "%": "P1", "kg": "KGM", "mL": "MLT", "L/d": "LD", "Pa": "PAL", "/min": "C94",
         "1/d": "E91", "/m3": "C86", "1": "C62"}
_WRITE = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)
_GOOD = ua.StatusCode(ua.StatusCodes.Good)


def security_policies(endpoint: Endpoint) -> list[ua.SecurityPolicyType]:
    """SignAndEncrypt always; the unsecured endpoint only when the site file says security = "None"."""
    policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    if endpoint.security == "None":
        policies.append(ua.SecurityPolicyType.NoSecurity)
    return policies


def _report_status_changes_despite_deadband() -> None:
    """asyncua 2.1 computes `None - number` when a deadbanded value turns Bad (its value becomes null), the
    callback dies and the change to Bad is never reported. A change of status must always be reported
    (OPC UA Part 4, 7.22.2), so a null on either side counts as beyond any deadband."""
    original = MonitoredItemService._is_deadband_exceeded

    def exceeded(self, values, flt):  # noqa: ANN001, ANN202
        cur, old = values.get_current_datavalue(), values.get_old_datavalue()
        values_ = (cur.Value and cur.Value.Value, old.Value and old.Value.Value) if cur and old else ()
        if None in values_:
            return True
        return original(self, values, flt)

    MonitoredItemService._is_deadband_exceeded = exceeded


_report_status_changes_despite_deadband()


def unece_unit_id(code: str) -> int:
    """OPC UA Part 8 numeric UnitId of a UNECE common code ("CEL" -> 4408652)."""
    uid = 0
    for c in code:
        uid = (uid << 8) | ord(c)
    return uid


def eu_information(uom: str) -> ua.EUInformation:
    """EngineeringUnits for a site uom: the UCUM code as display name, the UNECE id where one exists."""
    code = UNECE.get(uom)
    return ua.EUInformation(NamespaceUri=UNECE_NS, UnitId=unece_unit_id(code) if code else -1,
                            DisplayName=ua.LocalizedText(uom), Description=ua.LocalizedText(uom))


class SetpointTarget(Protocol):
    """Where accepted setpoint writes go (the twin)."""

    def check(self, tag: Tag, value: float) -> None: ...  # raise ValueError when the write must be refused

    def apply(self, tag: Tag, value: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Row:
    """One value to publish: None value with a bad status for a failed probe."""

    tag: str
    value: float | None
    ts: datetime
    status: str = ""


def _node_id(tag: Tag, idx: int) -> ua.NodeId:
    """The tag's configured node id, else a string id equal to the tag name."""
    given = tag.opcua.node_id if tag.opcua is not None else None
    if given and given.startswith("ns="):
        return ua.NodeId.from_string(given)
    return ua.NodeId(given or tag.name, idx)


def _object(parent: ua.NodeId, nid: ua.NodeId, name: ua.QualifiedName) -> ua.AddNodesItem:
    item = ua.AddNodesItem(RequestedNewNodeId=nid, BrowseName=name, NodeClass=ua.NodeClass.Object,
                           ParentNodeId=parent, ReferenceTypeId=ua.NodeId(ua.ObjectIds.Organizes),
                           TypeDefinition=ua.NodeId(ua.ObjectIds.BaseObjectType))
    item.NodeAttributes = ua.ObjectAttributes(DisplayName=ua.LocalizedText(name.Name))
    return item


def _variable(parent: ua.NodeId, nid: ua.NodeId, name: ua.QualifiedName, value: ua.Variant, type_def: int,
              prop: bool = False, datatype: int | None = None, access: int = 1,
              description: str = "") -> ua.AddNodesItem:
    item = ua.AddNodesItem(RequestedNewNodeId=nid, BrowseName=name, NodeClass=ua.NodeClass.Variable,
                           ParentNodeId=parent, TypeDefinition=ua.NodeId(type_def),
                           ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasProperty if prop else ua.ObjectIds.HasComponent))
    dtype = ua.NodeId(datatype) if datatype else ua.NodeId(value.VariantType.value)
    item.NodeAttributes = ua.VariableAttributes(
        DisplayName=ua.LocalizedText(name.Name), Description=ua.LocalizedText(description or name.Name),
        Value=value, DataType=dtype, ValueRank=ua.ValueRank.Scalar, AccessLevel=access, UserAccessLevel=access)
    return item


def _analog_item(parent: ua.NodeId, nid: ua.NodeId, name: ua.QualifiedName, tag: Tag,
                 writable: bool) -> list[ua.AddNodesItem]:
    """An AnalogItemType variable (Double) with its EURange and EngineeringUnits properties."""
    access = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if writable else 0)
    child = ua.NodeId(f"{nid.Identifier}.EURange", nid.NamespaceIndex), \
        ua.NodeId(f"{nid.Identifier}.EngineeringUnits", nid.NamespaceIndex)
    return [
        _variable(parent, nid, name, ua.Variant(0.0, ua.VariantType.Double), ua.ObjectIds.AnalogItemType,
                  access=access, description=tag.description),
        _variable(nid, child[0], ua.QualifiedName("EURange", 0),
                  ua.Variant(ua.Range(Low=tag.eng_range[0], High=tag.eng_range[1]), ua.VariantType.ExtensionObject),
                  ua.ObjectIds.PropertyType, prop=True, datatype=ua.ObjectIds.Range),
        _variable(nid, child[1], ua.QualifiedName("EngineeringUnits", 0),
                  ua.Variant(eu_information(tag.uom), ua.VariantType.ExtensionObject),
                  ua.ObjectIds.PropertyType, prop=True, datatype=ua.ObjectIds.EUInformation),
    ]


class _Users:
    """asyncua user manager: user name + password from the secrets file."""

    def __init__(self, users: dict[str, ServerUser]) -> None:
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):  # noqa: ANN001, ANN201
        u = self.users.get(username or "")
        if u is None or password != u.password:
            log.warning("login refused for user %r", username)
            return None  # -> BadUserAccessDenied at ActivateSession
        return User(role=UserRole.User, name=u.name)


class _EngineersWrite(SimpleRoleRuleset):
    """Only engineers may send Write requests; per-node rights come from AccessLevel (setpoints only)."""

    def __init__(self, engineers: set[str]) -> None:
        super().__init__()
        self.engineers = engineers

    def check_validity(self, user, action_type_id, body):  # noqa: ANN001, ANN201
        if action_type_id == _WRITE and (user is None or user.name not in self.engineers):
            return False
        return super().check_validity(user, action_type_id, body)


class UnitOpcUaServer:
    """One OPC UA server for the units whose tags live on `endpoint_id`."""

    def __init__(self, site: Site, endpoint_id: str, pki: Path, users: dict[str, ServerUser],
                 target: SetpointTarget | None = None, url: str | None = None) -> None:
        self.site, self.endpoint = site, site.endpoints[endpoint_id]
        self.url = url or self.endpoint.url or ""
        self.pki, self.users, self.target = pki, users, target
        self.tags = {t.name: t for t in site.tags.values() if t.opcua is not None and t.opcua.endpoint == endpoint_id}
        self.units = list(dict.fromkeys(t.owner for t in self.tags.values()))
        self.server: Server | None = None
        self.idx = 2
        self.node_ids: dict[str, ua.NodeId] = {}
        self._sp_nodes: dict[ua.NodeId, Tag] = {}
        self.running = False
        self.started_at = self.stopped_at = math.nan  # loop times, for outage accounting

    async def init(self) -> None:
        """Build the address space and security (Server.init takes ~3 s)."""
        ep = self.endpoint
        own = await ensure_certificate(self.pki, "server", SERVER_URI, server=True)
        server = Server(user_manager=_Users(self.users))
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name(f"cellwatch twin ({ep.id})")
        await server.set_application_uri(SERVER_URI)
        policies = security_policies(ep)
        engineers = {u.name for u in self.users.values() if u.role == "engineer"}
        server.set_security_policy(policies, permission_ruleset=_EngineersWrite(engineers))
        server.set_identity_tokens([ua.UserNameIdentityToken])  # never anonymous
        await server.load_certificate(str(own.cert))
        await server.load_private_key(str(own.key))
        server.set_certificate_validator(TrustFolder(self.pki, peer_is_server=False))
        self.idx = await server.register_namespace(NAMESPACE)
        self.server = server
        await self._build()
        server.subscribe_server_callback(CallbackType.PreWrite, self._pre_write)
        server.subscribe_server_callback(CallbackType.PostWrite, self._post_write)

    async def start(self) -> None:
        if self.server is None:
            await self.init()
        assert self.server is not None
        await self.server.start()
        self.running = True
        self.started_at = asyncio.get_running_loop().time()
        log.info("%s: OPC UA server on %s (%d tags)", self.endpoint.id, self.url, len(self.tags))

    async def stop(self) -> None:
        self.running = False
        self.stopped_at = asyncio.get_running_loop().time()
        if self.server is not None:
            await self.server.stop()
            self.server = None

    # ---- address space -----------------------------------------------------------------------

    async def _build(self) -> None:
        # One AddNodes call for the whole space: asyncua's instantiate() costs ~45 ms per variable.
        assert self.server is not None
        idx, items, seen = self.idx, [], set()
        objects = ua.NodeId(ua.ObjectIds.ObjectsFolder)
        for unit in self.units:
            items.append(_object(objects, ua.NodeId(unit, idx), ua.QualifiedName(unit, idx)))
            seen.add(unit)
            for name, v in (("BatchId", ua.Variant("", ua.VariantType.String)),
                            ("Phase", ua.Variant("idle", ua.VariantType.String)),
                            ("CultureDay", ua.Variant(math.nan, ua.VariantType.Double))):
                items.append(_variable(ua.NodeId(unit, idx), ua.NodeId(f"{unit}.{name}", idx),
                                       ua.QualifiedName(name, idx), v, ua.ObjectIds.BaseDataVariableType))
        for tag in self.tags.values():
            parts = tag.opcua.browse_path.split("/")  # type: ignore[union-attr]
            parent = objects
            for i, part in enumerate(parts[:-1]):  # intermediate folders: string ids from the path
                path = ".".join(parts[:i + 1])
                if path not in seen:
                    items.append(_object(parent, ua.NodeId(path, idx), ua.QualifiedName(part, idx)))
                    seen.add(path)
                parent = ua.NodeId(path, idx)
            nid = _node_id(tag, idx)
            items += _analog_item(parent, nid, ua.QualifiedName(parts[-1], idx), tag, writable=tag.controllable)
            self.node_ids[tag.name] = nid
            if tag.controllable:
                self._sp_nodes[nid] = tag
        for res in await self.server.iserver.isession.add_nodes(items):
            res.StatusCode.check()
        waiting = ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData),
                               ServerTimestamp=utcnow())
        for nid in self.node_ids.values():
            await self.server.write_attribute_value(nid, waiting)

    # ---- values ------------------------------------------------------------------------------

    async def publish(self, rows: Iterable[Row]) -> int:
        """Write values with their source timestamps; a row with no value is written as a Bad status."""
        assert self.server is not None
        now, n = utcnow(), 0
        for r in rows:
            nid = self.node_ids.get(r.tag)
            if nid is None:
                continue
            if r.value is None or (isinstance(r.value, float) and math.isnan(r.value)):
                code = getattr(ua.StatusCodes, r.status, ua.StatusCodes.BadSensorFailure) if r.status \
                    else ua.StatusCodes.BadSensorFailure
                dv = ua.DataValue(StatusCode=ua.StatusCode(code), SourceTimestamp=r.ts, ServerTimestamp=now)
            else:
                dv = ua.DataValue(ua.Variant(float(r.value), ua.VariantType.Double), StatusCode=_GOOD,
                                  SourceTimestamp=r.ts, ServerTimestamp=now)
            await self.server.write_attribute_value(nid, dv)
            n += 1
        return n

    async def set_unit_status(self, unit: str, batch_id: str | None, phase: str, culture_day: float | None) -> None:
        """Batch id, phase and culture day of a unit."""
        if self.server is None or unit not in self.units:
            return
        now = utcnow()
        for name, v in (("BatchId", ua.Variant(batch_id or "", ua.VariantType.String)),
                        ("Phase", ua.Variant(phase, ua.VariantType.String)),
                        ("CultureDay", ua.Variant(math.nan if culture_day is None else culture_day,
                                                  ua.VariantType.Double))):
            await self.server.write_attribute_value(ua.NodeId(f"{unit}.{name}", self.idx),
                                                    ua.DataValue(v, SourceTimestamp=now, ServerTimestamp=now))

    # ---- setpoint writes ---------------------------------------------------------------------

    def _setpoint_writes(self, params: ua.WriteParameters) -> list[tuple[Tag, object]]:
        return [(self._sp_nodes[wv.NodeId], wv.Value.Value.Value if wv.Value and wv.Value.Value else None)
                for wv in params.NodesToWrite if wv.NodeId in self._sp_nodes]

    async def _pre_write(self, event: ServerItemCallback, _dispatcher: object) -> None:
        if not event.is_external:
            return
        for tag, value in self._setpoint_writes(event.request_params):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                log.warning("setpoint write refused: %s = %r is not a number", tag.name, value)
                raise ua.uaerrors.BadTypeMismatch()
            lo, hi = tag.eng_range
            if not lo <= value <= hi:
                log.warning("setpoint write refused: %s = %s outside [%s, %s]", tag.name, value, lo, hi)
                raise ua.uaerrors.BadOutOfRange()
            if self.target is not None:
                try:
                    self.target.check(tag, float(value))
                except ValueError as exc:
                    log.warning("setpoint write refused: %s = %s: %s", tag.name, value, exc)
                    raise ua.uaerrors.BadInvalidState() from None

    async def _post_write(self, event: ServerItemCallback, _dispatcher: object) -> None:
        if not event.is_external or self.target is None:
            return
        writes = [wv for wv in event.request_params.NodesToWrite]
        for wv, status in zip(writes, event.response_params or []):
            tag = self._sp_nodes.get(wv.NodeId)
            if tag is None or not status.is_good():
                continue
            user = getattr(event.user, "name", None)
            try:
                self.target.apply(tag, float(wv.Value.Value.Value))
                log.info("setpoint %s = %s written by %s", tag.name, wv.Value.Value.Value, user)
            except ValueError as exc:  # a race with the batch ending: the node shows the request, the log why
                log.error("setpoint %s = %s by %s not applied: %s", tag.name, wv.Value.Value.Value, user, exc)
