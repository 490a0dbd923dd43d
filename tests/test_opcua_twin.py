"""The twin's OPC UA server (address space, Bad status, security, roles) and the OPC UA connector against it."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from connectors.base import ConnectorState, QueueSink
from connectors.opcua import OpcUaConnector
from connectors.opcua_session import ClientSecurity
from plant.pki import ensure_certificate
from plant.samples import Quality
from plant.secrets import Credentials
from plant.sim.live import LiveTwin
from plant.sim.opcua_server import Row, unece_unit_id
from plant.sim.serve import PlantServers
from plant.site import parse_site
from tests.connector_helpers import ENGINEER, INGEST, USERS, demo_site_text_on_free_ports

pytestmark = pytest.mark.asyncio(loop_scope="module")
T0 = datetime(2025, 1, 6, 8, 0, tzinfo=timezone.utc)


class Plant:
    def __init__(self, text: str, pki: Path, servers: PlantServers) -> None:
        self.text, self.pki, self.servers = text, pki, servers
        self.site, self.twin = servers.site, servers.twin
        self.url = self.site.endpoints["twin-opcua"].url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plant(tmp_path_factory):
    text = demo_site_text_on_free_ports()
    site = parse_site(text, source="test-site.toml")
    pki = tmp_path_factory.mktemp("opcua") / "pki"
    servers = PlantServers(site, LiveTwin(site, 7, T0), pki, USERS, modbus=False)
    servers.preroll(370)  # BR01-BR05 run a batch (units start 90 min apart)
    await servers.start()
    await servers.step()
    yield Plant(text, pki, servers)
    await servers.stop()


async def raw_client(plant: Plant, creds: Credentials) -> Client:
    own = await ensure_certificate(plant.pki, "client", "urn:cellwatch:ingest", server=False)
    c = Client(plant.url, timeout=5)
    c.application_uri = own.application_uri
    c.set_user(creds.username)
    c.set_password(creds.password)
    await c.set_security(SecurityPolicyBasic256Sha256, certificate=str(own.cert), private_key=str(own.key),
                         mode=ua.MessageSecurityMode.SignAndEncrypt)
    await c.connect()
    return c


async def first_sample(sink: QueueSink, timeout: float = 20.0):
    async with asyncio.timeout(timeout):
        async for s in sink:
            return s


async def test_units_are_objects_with_analog_items(plant):
    c = await raw_client(plant, INGEST)
    try:
        temp = c.get_node("ns=2;s=BR01.TEMP")
        assert (await temp.read_type_definition()) == ua.NodeId(ua.ObjectIds.AnalogItemType)
        assert (await temp.read_browse_name()).Name == "Temperature"
        found = await c.translate_browsepaths(ua.NodeId(ua.ObjectIds.ObjectsFolder), ["/2:BR01/2:Temperature"])
        assert found[0].Targets[0].TargetId == temp.nodeid
        rng = await (await temp.get_child("0:EURange")).read_value()
        assert (rng.Low, rng.High) == plant.site.tags["BR01.TEMP"].eng_range
        eu = await (await temp.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "Cel" and eu.UnitId == unece_unit_id("CEL") == 4408652
        ph_eu = await (await c.get_node("ns=2;s=BR01.PH").get_child("0:EngineeringUnits")).read_value()
        assert ph_eu.DisplayName.Text == "[pH]" and ph_eu.UnitId == -1  # no UNECE code for pH
        status = {s.unit: s for s in plant.twin.status()}["BR01"]
        assert await c.get_node("ns=2;s=BR01.BatchId").read_value() == status.batch_id
        assert await c.get_node("ns=2;s=BR01.Phase").read_value() == status.phase
        assert await c.get_node("ns=2;s=BR01.CultureDay").read_value() == pytest.approx(status.culture_day)
        dv = await temp.read_data_value()
        assert dv.Value.Value == plant.twin.latest["BR01.TEMP"][1] and dv.SourceTimestamp == plant.twin.now
    finally:
        await c.disconnect()


async def test_a_failed_probe_reports_bad_sensor_failure(plant):
    ts = plant.twin.now + timedelta(seconds=1)
    await plant.servers.opcua["twin-opcua"].publish([Row("BR02.PH", None, ts, "BadSensorFailure")])
    c = await raw_client(plant, INGEST)
    try:
        dv = await c.get_node("ns=2;s=BR02.PH").read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.name == "BadSensorFailure" and dv.Value.Value is None and dv.SourceTimestamp == ts
    finally:
        await c.disconnect()


async def test_only_sign_and_encrypt_with_user_names_is_offered(plant):
    c = Client(plant.url)
    endpoints = await c.connect_and_get_server_endpoints()
    assert endpoints and all(e.SecurityPolicyUri.endswith("#Basic256Sha256") for e in endpoints)
    assert all(e.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt for e in endpoints)
    tokens = {t.TokenType for e in endpoints for t in e.UserIdentityTokens}
    assert tokens == {ua.UserTokenType.UserName}  # no anonymous sessions


def _connector(plant: Plant, text: str | None = None, creds: Credentials | None = INGEST, pki: Path | None = None):
    site = parse_site(text or plant.text, source="client-site.toml")
    sink = QueueSink()
    conn = OpcUaConnector(site, site.endpoints["twin-opcua"], sink, ClientSecurity(pki or plant.pki, creds))
    return conn, sink


async def test_a_client_without_the_required_policy_is_refused_clearly(plant):
    text = plant.text.replace('security = "Basic256Sha256_SignAndEncrypt"', 'security = "None"', 1)
    conn, sink = _connector(plant, text)
    await conn.start()
    try:
        s = await first_sample(sink)
        assert s.quality == Quality.MISSING and s.value is None
        assert "offers no endpoint with security 'None'" in s.status
        assert conn.state == ConnectorState.CONNECTING
    finally:
        await conn.stop()


async def test_a_wrong_password_is_refused_clearly(plant):
    conn, sink = _connector(plant, creds=Credentials("ingest", "not-the-password"))
    await conn.start()
    try:
        s = await first_sample(sink)
        assert "refused the login of user 'ingest'" in s.status and "wrong user name or password" in s.status
        assert "not-the-password" not in s.status
    finally:
        await conn.stop()


async def test_an_untrusted_client_certificate_is_refused_clearly(plant, tmp_path):
    conn, sink = _connector(plant, pki=tmp_path / "other-pki")  # its own, never trusted certificate
    await conn.start()
    try:
        s = await first_sample(sink)
        assert "does not trust cellwatch's certificate" in s.status and "BadCertificateUntrusted" in s.status
        assert any((plant.pki / "rejected").iterdir())
    finally:
        await conn.stop()


async def test_an_operator_cannot_write_a_setpoint(plant):
    before = plant.twin.latest["BR03.TEMP_SP"][1]
    c = await raw_client(plant, INGEST)
    try:
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await c.get_node("ns=2;s=BR03.TEMP_SP").write_value(ua.DataValue(ua.Variant(37.4, ua.VariantType.Double)))
    finally:
        await c.disconnect()
    slot = next(s for s in plant.twin.slots if s.unit == "BR03")
    assert slot.bank.sp["TEMP_SP"][0] == before


async def test_an_engineer_write_reaches_the_twin_and_is_range_checked(plant):
    c = await raw_client(plant, ENGINEER)
    slot = next(s for s in plant.twin.slots if s.unit == "BR04")
    try:
        sp = c.get_node("ns=2;s=BR04.TEMP_SP")
        await sp.write_value(ua.DataValue(ua.Variant(37.3, ua.VariantType.Double)))
        assert slot.bank.sp["TEMP_SP"][0] == 37.3
        with pytest.raises(ua.uaerrors.BadOutOfRange):
            await sp.write_value(ua.DataValue(ua.Variant(45.0, ua.VariantType.Double)))
        assert slot.bank.sp["TEMP_SP"][0] == 37.3
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):  # process values are read-only for everyone
            await c.get_node("ns=2;s=BR04.TEMP").write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
    finally:
        await c.disconnect()


async def test_the_connector_keeps_status_and_both_timestamps(plant):
    conn, sink = _connector(plant)
    await conn.start()
    try:
        await conn.tracker.wait_for(ConnectorState.READY, 20)
        ts = plant.twin.now + timedelta(seconds=5)
        do = plant.twin.latest["BR05.DO"][1] + 5.0  # beyond the 0.2 % deadband
        want = {"BR05.DO": (ts, do)}
        await plant.servers.opcua["twin-opcua"].publish([Row("BR05.DO", do, ts),
                                                          Row("BR05.PH", None, ts, "BadSensorFailure")])
        got_do = got_ph = None
        async with asyncio.timeout(15):
            async for s in sink:
                if s.tag == "BR05.DO" and s.source_ts == want["BR05.DO"][0]:
                    got_do = s
                if s.tag == "BR05.PH" and s.source_ts == ts:
                    got_ph = s
                if got_do and got_ph:
                    break
        assert got_do.quality == Quality.GOOD and got_do.value == want["BR05.DO"][1]
        assert got_do.server_ts is not None and got_do.received_ts >= got_do.server_ts
        assert got_ph.quality == Quality.BAD and got_ph.value is None and got_ph.status == "BadSensorFailure"
    finally:
        await conn.stop()


async def test_node_ids_browse_paths_and_units_are_checked(plant):
    text = plant.text.replace('uom = "Cel"', 'uom = "K"', 1)  # rocking-bag TEMP: a unit the server disagrees with
    text = text.replace('browse_path = "{unit}/DissolvedOxygen", sampling_ms',
                        'browse_path = "{unit}/DissolvedOxygen", node_id = "ns=2;s={unit}.DO", sampling_ms', 1)
    text = text.replace('browse_path = "{unit}/CO2"', 'browse_path = "{unit}/CarbonDioxide"', 1)
    conn, sink = _connector(plant, text)
    await conn.start()
    try:
        await conn.tracker.wait_for(ConnectorState.READY, 20)
        await plant.servers.step()
        seen = {}
        async with asyncio.timeout(15):
            async for s in sink:
                seen.setdefault(s.tag, s)
                if {"BR01.TEMP", "BR01.DO", "BR01.CO2"} <= set(seen):
                    break
        assert seen["BR01.CO2"].quality == Quality.BAD and "CarbonDioxide" in seen["BR01.CO2"].status
        assert seen["BR01.DO"].quality == Quality.GOOD  # found by its node id
        assert seen["BR01.TEMP"].quality == Quality.UNCERTAIN
        assert seen["BR01.TEMP"].status == "unit mismatch: server 'Cel', site 'K'"
    finally:
        await conn.stop()


async def test_a_publish_becomes_one_batch_with_quality_status_and_both_timestamps(plant):
    conn, _ = _connector(plant)
    conn._handles = ["BR01.TEMP", "BR01.DO", "BR01.PH", "BR01.CO2", "BR01.TEMP"]  # client handle = index + 1000
    src, srv = T0, T0 + timedelta(milliseconds=3)

    def item(i: int, value, code: int | None = None) -> ua.MonitoredItemNotification:
        return ua.MonitoredItemNotification(ClientHandle=1000 + i, Value=ua.DataValue(
            None if value is None else ua.Variant(value), StatusCode=None if code is None else ua.StatusCode(code),
            SourceTimestamp=src, ServerTimestamp=srv))
    items = [item(0, 36.5), item(1, 7), item(2, None, ua.StatusCodes.BadSensorFailure), item(3, "high"),
             item(4, 36.6, 0x480), item(99, 1.0)]  # 0x480: Good with the overflow bit; handle 1099 is not ours
    batch = conn._columns(items)
    assert batch.tag == ["BR01.TEMP", "BR01.DO", "BR01.PH", "BR01.CO2", "BR01.TEMP"]
    assert batch.value == [36.5, 7.0, None, None, 36.6] and type(batch.value[1]) is float
    assert batch.quality == ["GOOD", "GOOD", "BAD", "BAD", "GOOD"]
    assert batch.status[:4] == [None, None, "BadSensorFailure", "not a number: str"]
    assert "overflow" in batch.status[4]
    assert batch.source_ts == [src] * 5 and batch.server_ts == [srv] * 5 and conn.notifications == 5
    samples = list(batch)  # the Sample view of a batch, for sinks that want objects
    assert samples[2].quality == Quality.BAD and samples[2].status == "BadSensorFailure" and samples[0].ts == src
    conn._mismatch = {"BR01.TEMP": "unit mismatch: server 'Cel', site 'K'"}
    again = conn._columns(items[:1])
    assert again.quality == ["UNCERTAIN"] and again.status == ["unit mismatch: server 'Cel', site 'K'"]


async def test_the_subscription_queues_one_event_per_publish_not_per_value():
    from types import SimpleNamespace

    from asyncua.common.subscription import (
        StatusChangeEvent,
        Subscription,
        SubscriptionItemData,
    )

    from connectors.opcua import _Burst, _deliver_in_bursts

    session = SimpleNamespace(observer=SimpleNamespace(on_notification=lambda *a: None))
    sub = Subscription(session, ua.CreateSubscriptionParameters(), None, queue_maxsize=0)  # type: ignore[arg-type]
    for h in (1000, 1001):
        data = SubscriptionItemData()
        data.node, data.client_handle = object(), h
        sub._monitored_items[h] = data
    assert _deliver_in_bursts(sub)
    dc = ua.DataChangeNotification(MonitoredItems=[
        ua.MonitoredItemNotification(ClientHandle=h, Value=ua.DataValue(ua.Variant(1.0))) for h in (1000, 1001, 1000)])
    msg = ua.NotificationMessage(SequenceNumber=1, NotificationData=[
        dc, ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout))])
    await sub.publish_callback(ua.PublishResult(SubscriptionId=1, NotificationMessage=msg))
    first, second = sub._event_queue.get_nowait(), sub._event_queue.get_nowait()
    assert isinstance(first, _Burst) and len(first.items) == 3 and isinstance(second, StatusChangeEvent)
    assert sub._event_queue.empty()
