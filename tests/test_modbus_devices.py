"""The twin's Modbus instruments (domain conventions) and the Modbus connector against them and a hung device."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime, timezone

import pytest
from pymodbus.client import AsyncModbusTcpClient

from connectors.base import ConnectorState, QueueSink
from connectors.modbus import ModbusConnector
from plant.modbus_codec import registers_to_raw
from plant.samples import Quality
from plant.sim.modbus_server import PC_STATUS_SAMPLER_ERROR, PSTAT_DATA_ERROR, DeviceServer
from plant.site import parse_site
from tests.connector_helpers import demo_site_text_on_free_ports, free_ports

pytestmark = pytest.mark.asyncio
TS = datetime(2025, 1, 6, 9, 30, tzinfo=timezone.utc)


@pytest.fixture
def text():
    return demo_site_text_on_free_ports(interval_ms=100, backoff_max_s=0.5)


async def collect(sink: QueueSink, want, timeout: float = 10.0) -> dict:
    got: dict = {}
    async with asyncio.timeout(timeout):
        async for s in sink:
            got.setdefault(s.tag, []).append(s)
            if want(got):
                return got
    return got


async def test_instruments_follow_the_device_conventions(text):
    site = parse_site(text)
    pc, th, dp = (DeviceServer(site, site.endpoints[f"CR-A1-{k}"]) for k in ("PC", "TH", "DP"))
    for d in (pc, th, dp):
        await d.start()
    try:
        await pc.update({"CR-A1.P05": 35.3107 * 12, "CR-A1.P50": None, "CR-A1.OCC": 1.0}, TS)
        await th.update({"CR-A1.TEMP": 20.5, "CR-A1.RH": None}, TS)
        await dp.update({"CR-A1.DP": None}, TS)
        c = AsyncModbusTcpClient("127.0.0.1", port=site.endpoints["CR-A1-PC"].port, timeout=2, retries=0)
        await c.connect()
        ir = (await c.read_input_registers(0, count=24, device_id=1)).registers
        assert registers_to_raw(ir[0:2], "uint32") == TS.timestamp()  # Unix time, high word first
        assert registers_to_raw(ir[2:4], "uint32") == 60  # sample time (s)
        assert registers_to_raw(ir[6:8], "uint32") & PC_STATUS_SAMPLER_ERROR  # a channel is unavailable
        assert registers_to_raw(ir[10:12], "uint32") == 12  # >= 0.5 um: raw cumulative counts
        chans = [registers_to_raw(ir[8 + 2 * i:10 + 2 * i], "uint32") for i in range(8)]
        assert chans == sorted(chans, reverse=True)  # cumulative: each size counts all larger particles too
        assert (await c.read_holding_registers(0, count=1, device_id=1)).registers == [135]  # map version 1.35
        c.close()
        c = AsyncModbusTcpClient("127.0.0.1", port=site.endpoints["CR-A1-TH"].port, timeout=2, retries=0)
        await c.connect()
        hr = (await c.read_holding_registers(0, count=4, device_id=1)).registers
        assert math.isnan(registers_to_raw(hr[0:2], "float32", word_order="little"))  # RH unavailable: NaN
        assert registers_to_raw(hr[2:4], "float32", word_order="little") == pytest.approx(20.5)
        test = (await c.read_holding_registers(7937, count=2, device_id=1)).registers  # register 7938
        assert registers_to_raw(test, "float32", word_order="little") == pytest.approx(-123.45)
        c.close()
        c = AsyncModbusTcpClient("127.0.0.1", port=site.endpoints["CR-A1-DP"].port, timeout=2, retries=0)
        await c.connect()
        ir = (await c.read_input_registers(0, count=3, device_id=1)).registers
        assert math.isnan(registers_to_raw(ir[0:2], "float32")) and ir[2] == PSTAT_DATA_ERROR
        c.close()
    finally:
        for d in (pc, th, dp):
            await d.stop()


async def test_exception_responses_and_nan_become_bad_samples_naming_why(text):
    site = parse_site(text)
    th = DeviceServer(site, site.endpoints["CR-A1-TH"])
    pc = DeviceServer(site, site.endpoints["CR-A1-PC"])
    await th.start()
    await pc.start()
    await th.update({"CR-A1.TEMP": 21.25, "CR-A1.RH": None}, TS)
    await pc.update({"CR-A1.P05": 0.0, "CR-A1.P50": 0.0, "CR-A1.OCC": 1.0}, TS)
    # The connector's map puts OCC where the device has no register: exception 0x02 from the device.
    client_site = parse_site(text.replace('function = 4, address = 80, type = "uint16"',
                                          'function = 4, address = 300, type = "uint16"', 1))
    sink = QueueSink()
    conns = [ModbusConnector(client_site, client_site.endpoints[e], sink) for e in ("CR-A1-TH", "CR-A1-PC")]
    for c in conns:
        await c.start()
    try:
        got = await collect(sink, lambda g: all(t in g for t in ("CR-A1.RH", "CR-A1.TEMP", "CR-A1.OCC", "CR-A1.P05")))
        rh, temp, occ, p05 = (got[t][-1] for t in ("CR-A1.RH", "CR-A1.TEMP", "CR-A1.OCC", "CR-A1.P05"))
        assert rh.quality == Quality.BAD and rh.value is None and rh.status == "unavailable (NaN)"
        assert temp.quality == Quality.GOOD and temp.value == pytest.approx(21.25)
        assert occ.quality == Quality.BAD and occ.status == "exception 0x02 (illegal data address)"
        assert p05.quality == Quality.GOOD  # the rest of the device is read normally
    finally:
        for c in conns:
            await c.stop()
        await th.stop()
        await pc.stop()


async def test_a_hung_device_goes_stale_without_stalling_the_others(text):
    (hung_port,) = free_ports(1)
    text = text.replace(f"port = {parse_site(text).endpoints['CR-B1-PC'].port}\n", f"port = {hung_port}\n")
    site = parse_site(text)

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # accepts requests, replies to none (a hung gateway)

    hung = await asyncio.start_server(never_answer, "127.0.0.1", hung_port)
    good = DeviceServer(site, site.endpoints["CR-B1-TH"])
    await good.start()
    await good.update({"CR-B1.TEMP": 19.0, "CR-B1.RH": 45.0}, TS)
    sink = QueueSink()
    slow = ModbusConnector(site, site.endpoints["CR-B1-PC"], sink)
    fast = ModbusConnector(site, site.endpoints["CR-B1-TH"], sink)
    await slow.start()
    await fast.start()
    try:
        await fast.tracker.wait_for(ConnectorState.READY, 10)
        t0 = time.monotonic()
        got = await collect(sink, lambda g: any(s.quality == Quality.STALE for s in g.get("CR-B1.P05", [])), 15)
        elapsed = time.monotonic() - t0
        stale = next(s for s in got["CR-B1.P05"] if s.quality == Quality.STALE)
        assert stale.value is None and "no update" in stale.status
        polls = len([s for s in got["CR-B1.TEMP"] if s.quality == Quality.GOOD])
        assert polls >= 0.5 * elapsed / 0.1  # the healthy device kept its 100 ms rhythm meanwhile
        await slow.tracker.wait_for(ConnectorState.RECONNECTING, 15)  # no reply at all: drop and reconnect
        assert "no reply" in slow.tracker.reason
    finally:
        await slow.stop()
        await fast.stop()
        await good.stop()
        hung.close()
