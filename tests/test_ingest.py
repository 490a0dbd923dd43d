"""The ingest service against the twin's real servers: every tag end to end, then one timeline with an OPC UA
server restart (10 s down), a Modbus device restart (10 s down) and a historian refusing writes (30 s)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
import pytest_asyncio

from connectors.base import ConnectorState
from connectors.ingest import IngestService, IngestSettings
from connectors.opcua import OpcUaConnector
from plant.connector_log import connector_events
from plant.historian import Historian
from plant.modbus_codec import decode, encode
from plant.records import Records
from plant.samples import Sample
from plant.sim.live import LiveTwin
from plant.sim.serve import PlantServers
from plant.site import parse_site
from tests.connector_helpers import USERS, demo_site_text_on_free_ports, refuse_writes, until, write_secrets

pytestmark = pytest.mark.asyncio(loop_scope="module")
T0 = datetime(2025, 1, 6, 8, 0, tzinfo=timezone.utc)
STEP_S = 0.25  # one twin minute every 0.25 s of wall time
OUTAGE_S, REFUSAL_S = 10.0, 30.0


def site_text() -> str:
    # No OPC UA deadbands here, so every value the server changes must arrive (exact accounting);
    # deadband filtering itself is the server's business and is exercised by the demo run.
    return re.sub(r"(opcua = \{[^\n]*?), deadband = [\d.]+", r"\1", demo_site_text_on_free_ports())


@dataclass
class Rig:
    text: str
    site_path: Path
    servers: PlantServers
    service: IngestService
    historian: Historian
    records: Records
    data: Path
    pki: Path
    secrets: Path
    accepted: list[Sample] = field(default_factory=list)
    clock: asyncio.Task | None = None
    spare: object = None
    facts: dict = field(default_factory=dict)

    def rows(self) -> pl.DataFrame:
        return self.historian.read()


async def _tick(servers: PlantServers) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        await servers.step()
        due += STEP_S
        await asyncio.sleep(max(0.0, due - loop.time()))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    text = site_text()
    site = parse_site(text, source="test-site.toml")
    (root / "site.toml").write_text(text)
    pki, data = root / "pki", root / "data"
    secrets = write_secrets(root / "secrets.toml", ["twin-opcua"])
    servers = PlantServers(site, LiveTwin(site, 11, T0), pki, USERS, record=True)
    servers.preroll(640)  # every unit runs a batch
    await servers.start()
    records = Records.open(data / "records.db")
    historian = Historian(data / "historian")
    service = IngestService(site, historian, data / "spool", records, pki, secrets,
                            IngestSettings(flush_s=0.2, metrics_port=0, compact_s=0))
    rig = Rig(text, root / "site.toml", servers, service, historian, records, data, pki, secrets)
    rig.spare = servers.spare_opcua("twin-opcua")
    await rig.spare.init()  # now, before ingest runs: Server.init holds the event loop for seconds
    original = service._accept
    service._accept = lambda samples: (rig.accepted.extend(samples), original(samples))[1]  # tap what arrives
    rig.clock = asyncio.create_task(_tick(servers))
    await service.start()
    for c in service.connectors:
        await c.tracker.wait_for(ConnectorState.READY, 60)
    yield rig
    rig.clock.cancel()
    await service.stop()
    await servers.stop()
    records.close()


def _served(rig: Rig) -> pl.DataFrame:
    return pl.DataFrame([(t, r.tag, r.ts, r.value) for t, r in rig.servers.served], orient="row",
                        schema={"at": pl.Float64, "tag": pl.String, "ts": pl.Datetime("us", "UTC"),
                                "value": pl.Float64})


async def test_every_tag_of_the_demo_site_arrives_with_value_unit_and_timestamps(rig):
    site = rig.servers.site
    good = lambda: set(rig.rows().filter(pl.col("quality") == "GOOD")["tag"].unique())  # noqa: E731
    await until(lambda: good() >= set(site.tags), 60, "a GOOD sample of every tag", every=0.5)
    rows = rig.rows().filter(pl.col("quality") == "GOOD")
    served = _served(rig)
    opc = rows.filter(pl.col("tag").is_in([t.name for t in site.tags.values() if t.opcua]))
    # OPC UA: each stored value is exactly a value the server published, with its source timestamp.
    matched = opc.join(served.select("tag", "ts", "value"), on=["tag", "ts", "value"], how="semi")
    assert matched.height == opc.height > 0
    assert opc["server_ts"].null_count() == 0 and (opc["received_ts"] >= opc["server_ts"]).all()
    for c in rig.service.connectors:
        if isinstance(c, OpcUaConnector):
            assert c._mismatch == {}  # the server's EngineeringUnits equal every tag's uom
    # Modbus: each stored value is a served value after the device's register encoding (float32, counts).
    mb = rows.filter(pl.col("tag").is_in([t.name for t in site.tags.values() if t.modbus]))
    expect = {}
    for tag, value in served.select("tag", "value").iter_rows():
        spec = site.tags[tag].modbus
        if spec is not None and value is not None:
            expect.setdefault(tag, set()).add(decode(encode(value, spec), spec).value)
    bad = [(t, v) for t, v in mb.select("tag", "value").iter_rows() if v not in expect.get(t, ()) and v != 0.0]
    assert not bad, bad[:5]
    assert (mb["ts"] == mb["received_ts"]).all() and mb["server_ts"].null_count() == mb.height


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def timeline(rig):
    """One run: historian refuses 30 s; meanwhile the OPC UA server and device CR-A1-PC are down 10 s."""
    loop = asyncio.get_running_loop()
    spare = rig.spare
    opc = next(c for c in rig.service.connectors if isinstance(c, OpcUaConnector))
    pc = next(c for c in rig.service.connectors if c.endpoint_id == "CR-A1-PC")
    device = rig.servers.modbus.devices["CR-A1-PC"]
    f = rig.facts
    with refuse_writes(rig.historian.root):
        f["refused_at"] = loop.time()
        await asyncio.sleep(1.0)
        f["down_at"] = loop.time()
        f["old_server"] = rig.servers.opcua["twin-opcua"]
        restart = asyncio.create_task(rig.servers.restart_opcua("twin-opcua", OUTAGE_S, spare))
        await device.stop()
        await opc.tracker.wait_for(ConnectorState.RECONNECTING, 10)
        await pc.tracker.wait_for(ConnectorState.RECONNECTING, 10)
        await asyncio.sleep(OUTAGE_S)
        await device.start()
        f["pc_up_at"] = loop.time()
        await pc.tracker.wait_for(ConnectorState.READY, 20)
        f["pc_ready_at"] = loop.time()
        await restart
        f["opc_up_at"] = loop.time()
        await opc.tracker.wait_for(ConnectorState.READY, 30)
        f["opc_ready_at"] = loop.time()
        f["health_during"] = rig.service.health()
        f["depth_during"] = rig.service.spool.depth
        await asyncio.sleep(max(0.0, f["refused_at"] + REFUSAL_S - loop.time()))
    f["accepting_at"] = loop.time()
    await until(lambda: not rig.service.spool.pending(), 30, "the buffer to drain into the historian")
    await asyncio.sleep(2.0)  # a little steady state after the recovery
    f["metrics"], f["health"] = await _get(rig, "/metrics"), await _get(rig, "/health")
    rig.clock.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await rig.clock
    f["stopped_at"] = loop.time()
    await asyncio.sleep(0.6)  # the last notifications and polls
    for c in rig.service.connectors:  # nothing new arrives from here on: exact accounting is possible
        await c.stop()
    await until(lambda: not rig.service._pending and not rig.service.spool.pending(), 30, "the last commit")
    await rig.service._store_events()
    return f


async def _get(rig: Rig, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.service._server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    body = (await reader.read()).decode()
    writer.close()
    return body


def _wall(rig: Rig, loop_t: float) -> datetime:
    """Loop time -> UTC wall time (received_ts are wall times)."""
    return datetime.fromtimestamp(time.time() - (asyncio.get_running_loop().time() - loop_t), timezone.utc)


async def test_opcua_restart_is_a_recorded_gap_and_nothing_after_recovery_is_lost(rig, timeline):
    f, site = timeline, rig.servers.site
    tags = [t.name for t in site.tags.values() if t.opcua]
    rows = rig.rows().filter(pl.col("tag").is_in(tags))
    missing = rows.filter((pl.col("quality") == "MISSING"))
    assert set(missing["tag"]) == set(tags)  # every tag's gap is marked
    lost_at = missing["received_ts"].min()
    assert _wall(rig, f["down_at"]) <= lost_at <= _wall(rig, f["opc_up_at"])
    ev = connector_events(rig.records, "twin-opcua")
    changes = list(zip(ev["from_state"], ev["to_state"]))
    i = changes.index(("READY", "RECONNECTING"))
    assert changes[i + 1] == ("RECONNECTING", "READY")
    served = _served(rig)
    good = rows.filter(pl.col("quality") == "GOOD")
    invented = good.join(served, on=["tag", "ts", "value"], how="anti")
    assert invented.height == 0  # no value the server did not publish
    after = served.filter((pl.col("at") > f["opc_ready_at"] + 0.5) & pl.col("tag").is_in(tags))
    assert after.height > 500
    lost = after.join(good, on=["tag", "ts", "value"], how="anti")
    assert lost.height == 0, lost.head()
    down = (f["old_server"].stopped_at, rig.spare.started_at)
    assert 9.5 < down[1] - down[0] < 13
    outage = served.filter(pl.col("at").is_between(*down) & pl.col("tag").is_in(tags))
    assert outage.height == 0  # the server really was down: the gap is a gap


async def test_a_modbus_device_restart_is_a_gap_while_the_other_devices_keep_flowing(rig, timeline):
    f, site = timeline, rig.servers.site
    rows = rig.rows()
    pc_tags = [t.name for t in site.tags.values() if t.modbus and t.modbus.endpoint == "CR-A1-PC"]
    pc = rows.filter(pl.col("tag").is_in(pc_tags))
    assert set(pc.filter(pl.col("quality") == "MISSING")["tag"]) == set(pc_tags)
    down = (_wall(rig, f["down_at"] + 0.5), _wall(rig, f["pc_up_at"]))
    assert pc.filter((pl.col("quality") == "GOOD") & pl.col("received_ts").is_between(*down)).height == 0
    assert pc.filter((pl.col("quality") == "GOOD") & (pl.col("received_ts") > _wall(rig, f["pc_ready_at"]))).height > 0
    polls = (f["pc_up_at"] - f["down_at"]) / 0.2
    for ep in site.endpoints.values():
        if ep.protocol != "modbus" or ep.id == "CR-A1-PC":
            continue
        tag = next(t.name for t in site.tags.values() if t.modbus and t.modbus.endpoint == ep.id)
        n = rows.filter((pl.col("tag") == tag) & (pl.col("quality") == "GOOD")
                        & pl.col("received_ts").is_between(*down)).height
        assert n >= 0.5 * polls, (ep.id, n, polls)  # kept polling at about its own rate
    ev = connector_events(rig.records, "CR-A1-PC")
    changes = list(zip(ev["from_state"], ev["to_state"]))
    i = changes.index(("READY", "RECONNECTING"))
    assert changes[i + 1] == ("RECONNECTING", "READY")


async def test_a_historian_refusing_writes_for_30_s_loses_and_duplicates_nothing_and_keeps_order(rig, timeline):
    f = timeline
    ok, why = f["health_during"]
    assert not ok and "historian" in why and f["depth_during"] > 1000
    m = rig.service.metrics
    assert m.historian_errors._value.get() > 0 and m.historian_ok._value.get() == 1 and m.depth._value.get() == 0
    rows = rig.rows()
    key = ["tag", "ts", "quality", "status"]
    assert rows.select(key).is_duplicated().sum() == 0
    accepted = pl.DataFrame({"tag": [s.tag for s in rig.accepted], "ts": [s.ts for s in rig.accepted]},
                            schema={"tag": pl.String, "ts": pl.Datetime("us", "UTC")})
    # Everything that arrived is stored once, except re-sends of a stored (tag, source ts), dropped as duplicates.
    stored = accepted.unique().join(rows.select("tag", "ts"), on=["tag", "ts"], how="anti")
    assert stored.height == 0, stored.head()
    assert rows.height == accepted.unique().height  # and nothing else
    # Order: per tag, samples with a source timestamp reached the historian in measurement order.
    segs = sorted(rig.historian.root.glob("date=*/s-*.parquet"), key=lambda p: p.name)
    seq = pl.concat([pl.read_parquet(p).with_columns(seg=pl.lit(int(p.stem[2:]))) for p in segs])
    opc = seq.filter(pl.col("quality") == "GOOD").sort("seg", maintain_order=True)
    assert opc.group_by("tag").agg(ok=(pl.col("ts").diff().dt.total_microseconds().fill_null(1) > 0).all())["ok"].all()


async def test_the_service_exposes_health_and_throughput_as_prometheus_metrics(rig, timeline):
    body = timeline["metrics"]
    for name in ("cellwatch_ingest_samples_per_second", "cellwatch_ingest_lag_seconds",
                 "cellwatch_ingest_buffer_depth_samples ", 'cellwatch_connector_state{endpoint="twin-opcua"',
                 "cellwatch_ingest_latency_seconds_bucket", "cellwatch_ingest_historian_healthy 1.0",
                 'cellwatch_ingest_samples_received_total{endpoint="CR-A1-PC"}'):
        assert name in body, name
    rate = float(re.search(r"^cellwatch_ingest_samples_per_second (\S+)", body, re.M).group(1))
    assert rate > 100
    assert timeline["health"].startswith("HTTP/1.1 200 OK") and timeline["health"].rstrip().endswith("ok")


async def test_each_state_change_is_stored_in_order(rig, timeline):
    ev = connector_events(rig.records)
    assert set(ev["endpoint"]) == {c.endpoint_id for c in rig.service.connectors}
    for endpoint, group in ev.group_by("endpoint"):
        states = group["to_state"].to_list()
        assert all(a != b for a, b in zip(states, states[1:])), (endpoint, states)
        assert group["from_state"][1:].to_list() == states[:-1]
        assert states[0] == "CONNECTING" and states[-1] == "STOPPED"


async def test_an_ingest_process_killed_with_sigkill_loses_nothing_it_had_accepted(rig, tmp_path):
    """A child `cellwatch ingest` buffers while its historian refuses writes, is frozen, its durable state
    (spool + historian) is snapshotted, it is SIGKILLed, restarted, and must store the snapshot exactly once."""
    data = tmp_path / "child"
    hist_root = data / "historian"
    cmd = [sys.executable, "-m", "cellwatch.cli", "ingest", "--site", str(rig.site_path), "--data", str(data),
           "--pki", str(rig.pki), "--secrets", str(rig.secrets), "--metrics-port", "0", "--flush-s", "0.2",
           "--log-level", "WARNING"]
    clock = asyncio.create_task(_tick(rig.servers))
    child = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await until(lambda: any(hist_root.glob("date=*/s-*.parquet")), 60, "the child's first commit", every=0.2)
        with refuse_writes(hist_root):
            await until(lambda: len(list((data / "spool").glob("b-*.arrow"))) >= 5, 30, "a buffered backlog")
            os.kill(child.pid, signal.SIGSTOP)  # freeze it: what is on disk now is all it had accepted
            spooled = [pl.read_ipc(p.read_bytes()) for p in sorted((data / "spool").glob("b-*.arrow"))]
            committed = Historian(hist_root.with_name("historian.held")).read()
            os.kill(child.pid, signal.SIGKILL)
            await child.wait()
        accepted = pl.concat([*spooled, committed]).select("tag", "ts", "quality")
        assert sum(df.height for df in spooled) > 100
        child = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.PIPE)
        hist = Historian(hist_root)

        def all_there() -> bool:
            return accepted.join(hist.read().select("tag", "ts", "quality"), on=["tag", "ts", "quality"],
                                 how="anti").height == 0
        await until(all_there, 60, "every accepted sample in the historian after the restart", every=0.5)
        await until(lambda: not list((data / "spool").glob("b-*.arrow")), 30, "the replayed spool to empty")
        rows = hist.read()
        assert rows.select("tag", "ts", "quality", "status").is_duplicated().sum() == 0
        marks = rows.filter(pl.col("status").str.contains("unclean stop"))
        assert set(marks["tag"]) == set(rig.servers.site.tags)  # the time the service was dead is a marked gap
    finally:
        clock.cancel()
        if child.returncode is None:
            child.send_signal(signal.SIGCONT)
            child.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(child.communicate(), 30)
            assert child.returncode == 0, err.decode()[-2000:]
            assert b"ingest stopped" in out
