"""Write-back of an approved recommendation over OPC UA to the twin's real server: engineers only, verified by
read-back, and every attempt on the audit trail."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
import pytest_asyncio
from argon2 import PasswordHasher

from connectors.opcua_session import ClientSecurity
from connectors.setpoint_writeback import SetpointWriteBack, WriteBackDisabled
from plant.audit import AuditTrail
from plant.identity import LocalPasswords
from plant.recommendations import Recommendation, RecommendationStore
from plant.records import BatchRecord, Records
from plant.roles import AccessDenied
from plant.sim.live import LiveTwin
from plant.sim.serve import PlantServers
from plant.site import parse_site
from plant.users import Users
from tests.connector_helpers import ENGINEER, INGEST, USERS, demo_site_text_on_free_ports

pytestmark = pytest.mark.asyncio(loop_scope="module")
T0 = datetime(2025, 1, 6, 8, 0, tzinfo=timezone.utc)
FAST = LocalPasswords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
PW = {"eve": "Builds-Reactors-4242", "olga": "Runs-Shifts-1111"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plant(tmp_path_factory):
    """The twin's OPC UA server (BR01-BR05 running), a records database with users and the BR04 batch."""
    root = tmp_path_factory.mktemp("writeback")
    site = parse_site(demo_site_text_on_free_ports(), source="test-site.toml")
    servers = PlantServers(site, LiveTwin(site, 7, T0), root / "pki", USERS, modbus=False)
    servers.preroll(370)
    await servers.start()
    await servers.step()
    records = Records.open(root / "records.db")
    users = Users(records, AuditTrail(records), identity=FAST)
    users.init_admin("admin", "Ada Admin", "Ada-Lovelace-1815")
    users.create("admin", "eve", "Eve Engineer", "engineer", PW["eve"])
    users.create("admin", "olga", "Olga Operator", "operator", PW["olga"])
    status = {s.unit: s for s in servers.twin.status()}["BR04"]
    now = servers.twin.now
    records.add_batches([BatchRecord(status.batch_id, "BR04", site.info.code, "CART-RB-12D", "production",
                                     now - timedelta(hours=2), now + timedelta(days=11))])
    yield site, servers, records, users, status.batch_id, root
    records.close()
    await servers.stop()


def _approved(records: Records, users: Users, batch_id: str, proposed: float) -> str:
    rec = Recommendation(batch_id, "BR04", "TEMP_SP", 37.0, proposed, 0.02, 0.01, 0.03, 0.0,
                         (("TEMP_SP response slope", 0.008),), "test-models/1", "ab" * 32,
                         datetime.now(timezone.utc))
    store = RecommendationStore(records)
    [rid] = store.add([rec])
    store.decide(users, "eve", PW["eve"], rid, "accepted")
    return rid


def _trail(users: Users, batch_id: str) -> pl.DataFrame:
    return users.audit.entries(entity="setpoint", entity_id=f"{batch_id}/TEMP_SP")


def _sp(servers: PlantServers) -> float:
    return float(next(s for s in servers.twin.slots if s.unit == "BR04").bank.sp["TEMP_SP"][0])


async def test_disabled_by_default_and_an_operator_is_refused_before_any_write(plant):
    site, servers, records, users, batch_id, root = plant
    rid = _approved(records, users, batch_id, 37.4)
    before = _sp(servers)
    with pytest.raises(WriteBackDisabled, match="apply BR04.TEMP_SP = 37.4 at the control system"):
        off = SetpointWriteBack(site, records, users, ClientSecurity(root / "pki", ENGINEER))
        await off.write("eve", rid, "advice")
    writer = SetpointWriteBack(site, records, users, ClientSecurity(root / "pki", ENGINEER), enabled=True)
    with pytest.raises(AccessDenied, match="engineers only"):
        await writer.write("olga", rid, "apply the approved advice")
    trail = _trail(users, batch_id)
    assert trail.filter(pl.col("action") == "write_refused").height == 2
    assert set(trail.filter(pl.col("action") == "write_refused")["actor"]) == {"eve", "olga"}
    assert _sp(servers) == before


async def test_a_session_without_engineer_rights_on_the_server_fails_and_is_recorded(plant):
    site, servers, records, users, batch_id, root = plant
    rid = _approved(records, users, batch_id, 37.3)
    before = _sp(servers)
    writer = SetpointWriteBack(site, records, users, ClientSecurity(root / "pki", INGEST), enabled=True)
    result = await writer.write("eve", rid, "apply the approved advice")
    assert not result.verified and "refused" in result.status and result.read_back is None
    failed = _trail(users, batch_id).filter(pl.col("action") == "write_failed")
    assert failed.height == 1 and rid in failed["reason"][0]
    assert _sp(servers) == before


async def test_an_engineer_write_reaches_the_twin_is_read_back_and_recorded(plant):
    site, servers, records, users, batch_id, root = plant
    rid = _approved(records, users, batch_id, 37.5)
    writer = SetpointWriteBack(site, records, users, ClientSecurity(root / "pki", ENGINEER), enabled=True)
    result = await writer.write("eve", rid, "apply the approved advice")
    assert result.verified and result.read_back == pytest.approx(37.5) and result.status == "verified"
    assert _sp(servers) == pytest.approx(37.5)
    written = _trail(users, batch_id).filter(pl.col("action") == "write")
    assert written.height == 1 and written["actor"][0] == "eve" and '"recommendation"' in written["new"][0]
    change = records.setpoints(batch_id).filter(pl.col("source") == "recommendation")
    assert change.height == 1 and change["value"][0] == 37.5
    assert users.audit.verify().ok
