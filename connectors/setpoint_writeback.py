"""Optional write-back of an approved recommendation to its setpoint node over OPC UA, verified by read-back.

Disabled unless a site enables it. Only an engineer may ask for it (a role check on top of the
"setpoint.write" permission operators also hold, because a remote write bypasses the control-system
operator); the OPC UA session must log in as an engineer-role server user too, or the server refuses.
Every attempt, refused, failed or verified, goes on the audit trail; a verified write also becomes a
setpoint-change record, which the recommender's minimum-interval guard reads.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import datetime, timezone

from asyncua import ua

from connectors.opcua_session import ClientSecurity, explain, make_client, resolve
from plant.audit import AuditTrail
from plant.gmp_records import record_setpoint_write
from plant.recommendations import RecommendationStore
from plant.records import Records, SetpointChange
from plant.roles import AccessDenied
from plant.site import Site, Tag
from plant.users import Users

WRITEBACK_ROLES = ("engineer",)
APPROVED = ("accepted", "modified")


class WriteBackDisabled(RuntimeError):
    """The site has not enabled write-back: the operator applies the change at the control system."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What happened to one write-back: verified or not, and why."""

    recommendation_id: str
    tag: str
    requested: float
    read_back: float | None
    verified: bool
    status: str
    ts: datetime


class SetpointWriteBack:
    """Writes approved recommendations to the plant over OPC UA (see the module docstring)."""

    def __init__(self, site: Site, records: Records, users: Users, security: ClientSecurity, enabled: bool = False,
                 tolerance: float = 1e-6, timeout_s: float = 10.0) -> None:
        self.site, self.records, self.users, self.security = site, records, users, security
        self.audit: AuditTrail = users.audit
        self.store = RecommendationStore(records)
        self.enabled, self.tolerance, self.timeout_s = enabled, tolerance, timeout_s

    def _refuse(self, username: str, entity_id: str, value: float | None, why: str, action: str = "write_refused"):
        self.audit.append(username[:128], action, "setpoint", entity_id, None,
                          None if value is None else {"value": value, "source": "recommendation"}, why)

    def _check(self, username: str, rec_id: str) -> tuple[Tag, float, float, str]:
        """Tag, old and new value and audit entity of an approved recommendation; else a recorded refusal."""
        rec, status = self.store.get(rec_id)
        entity = f"{rec.batch_id}/{rec.tag}"
        row = self.store.table(batch_id=rec.batch_id).filter(id=rec_id).row(0, named=True)
        value = row["applied_value"]
        if not self.enabled:
            self._refuse(username, entity, value, f"{rec_id}: write-back is disabled for site {self.site.info.code}")
            raise WriteBackDisabled(f"write-back is disabled for site {self.site.info.code}: apply {rec.unit}."
                                    f"{rec.tag} = {value} at the control system and confirm it")
        try:
            role = self.users.get(username).role
        except KeyError:
            role = "-"
        if role not in WRITEBACK_ROLES:
            why = f"{rec_id}: user {username!r} (role {role}) may not write setpoints remotely; engineers only"
            self._refuse(username, entity, value, why)
            raise AccessDenied(username, role, "setpoint.write", why)
        self.users.require(username, "setpoint.write")  # records its own refusal (locked, deactivated)
        if status not in APPROVED or value is None:
            self._refuse(username, entity, value, f"{rec_id} is {status}, not approved")
            raise ValueError(f"recommendation {rec_id} is {status}: only approved advice is written")
        tag = self.site.tags.get(f"{rec.unit}.{rec.tag}")
        if tag is None or tag.opcua is None or not tag.controllable or tag.par is None or tag.max_step is None:
            self._refuse(username, entity, value, f"{rec_id}: {rec.unit}.{rec.tag} is no writable setpoint")
            raise ValueError(f"{rec.unit}.{rec.tag} is not an OPC UA setpoint of site {self.site.info.code}")
        if not (tag.par[0] <= value <= tag.par[1] and abs(value - rec.current) <= tag.max_step + 1e-9):
            self._refuse(username, entity, value, f"{rec_id}: {value} breaks the PAR {list(tag.par)} or the "
                         f"maximum step {tag.max_step} from {rec.current}")
            raise ValueError(f"{tag.name} = {value}: outside the PAR or above the maximum step")
        return tag, rec.current, float(value), entity

    async def write(self, username: str, rec_id: str, reason: str) -> WriteResult:
        """Write an approved recommendation's value and read it back; the attempt is recorded either way."""
        if not reason.strip():
            raise ValueError("a setpoint write needs a reason")
        tag, old, value, entity = self._check(username, rec_id)
        rec, _ = self.store.get(rec_id)
        endpoint = self.site.endpoints[tag.opcua.endpoint]  # type: ignore[union-attr]
        read_back: float | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                client = await make_client(endpoint, self.security)
                await client.connect(auto_reconnect=False)  # one attempt: a person retries, we never write twice
                try:
                    nodes, failed = await resolve(client, endpoint, [tag])
                    if tag.name not in nodes:
                        raise ValueError(failed.get(tag.name, f"{tag.name} not found on {endpoint.id}"))
                    node = client.get_node(nodes[tag.name])
                    await node.write_value(ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
                    read_back = float(await node.read_value())
                finally:
                    await client.disconnect()
        except Exception as exc:  # any failure (refusal, timeout, lost connection) is recorded and returned
            status = explain(exc, endpoint, self.security) if not isinstance(exc, ua.UaStatusCodeError) \
                else f"{type(exc).__name__}: the server refused the write"
            self._refuse(username, entity, value, f"{rec_id}: {status}; {reason}", action="write_failed")
            return WriteResult(rec_id, tag.name, value, read_back, False, status, datetime.now(timezone.utc))
        now = datetime.now(timezone.utc)
        if read_back is None or not math.isclose(read_back, value, abs_tol=self.tolerance):
            status = f"read-back {read_back} differs from the written {value}"
            self._refuse(username, entity, value, f"{rec_id}: {status}; {reason}", action="write_failed")
            return WriteResult(rec_id, tag.name, value, read_back, False, status, now)
        record_setpoint_write(self.audit, username, rec.batch_id, rec.tag, old, value, f"{rec_id}: {reason}",
                              source="recommendation")
        self.records.add_setpoints([SetpointChange(rec.batch_id, rec.tag, now, value, "recommendation",
                                                   f"{rec_id} written by {username}, verified by read-back")])
        return WriteResult(rec_id, tag.name, value, read_back, True, "verified", now)
