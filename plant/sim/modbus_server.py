"""The twin's cleanroom instruments as Modbus TCP servers, one per device endpoint (domain.md section 8).

Every site tag on a device is written with the shared codec (plant.modbus_codec), so a tag's register
layout is whatever the site file declares. Around the tags each device kind carries the registers of
the instrument it imitates: a Lighthouse-style particle counter (timestamp, sample time, data status
bits, eight cumulative channels, masks, alarm flags; holding registers with map version and status),
a Vaisala-style T/RH transmitter (dew point, float test register 7938 = -123.45, low word first) and a
TSI Pressura-style room pressure monitor (status 20 = data error when the reading is unavailable).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from plant.modbus_codec import CodecError, encode, raw_to_registers
from plant.site import Endpoint, ModbusAddress, Site, Tag

log = logging.getLogger("cellwatch.sim.modbus")
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the twin reports its own faults

PC_STATUS_SAMPLER_ERROR = 1 << 6
PC_STATUS_THRESHOLD_HIGH = 1 << 4
PSTAT_DATA_ERROR = 20
VAISALA_TEST_ADDRESS = 7937  # register 7938 (1-based)
VAISALA_TEST_VALUE = -123.45


@dataclass(frozen=True, slots=True)
class _Span:
    function: int
    start: int
    count: int


def _kind(tags: list[Tag]) -> str:
    shorts = {t.short for t in tags}
    if shorts & {"P05", "P50"}:
        return "particle_counter"
    if shorts & {"TEMP", "RH"}:
        return "trh"
    if shorts & {"DP", "PSTAT"}:
        return "pressure"
    return "generic"


def _u32(v: int) -> list[int]:
    v = max(0, min(int(v), 2**32 - 1))
    return [v >> 16, v & 0xFFFF]


def _f32_cdab(v: float) -> list[int]:
    return raw_to_registers(v, "float32", "big", "little")


def _dew_point(t: float | None, rh: float | None) -> float:
    if t is None or rh is None or not (math.isfinite(t) and math.isfinite(rh)) or rh <= 0:
        return math.nan
    g = math.log(rh / 100.0) + 17.62 * t / (243.12 + t)  # Magnus formula (WMO constants)
    return 243.12 * g / (17.62 - g)


class DeviceServer:
    """One instrument on its own port; update() rewrites its register image from the twin's values."""

    def __init__(self, site: Site, endpoint: Endpoint) -> None:
        self.site, self.endpoint = site, endpoint
        self.tags = [t for t in site.tags.values() if t.modbus is not None and t.modbus.endpoint == endpoint.id]
        self.kind = _kind(self.tags)
        self.owner = self.tags[0].owner if self.tags else endpoint.id
        self.regs: dict[int, dict[int, int]] = {3: {}, 4: {}}  # function -> address -> register
        self.records = 0
        self._server: ModbusTcpServer | None = None
        self._extras({})
        for t in self.tags:  # every declared register exists from the start (value 0 until measured)
            spec: ModbusAddress = t.modbus  # type: ignore[assignment]
            for i in range(spec.register_count):
                self.regs[spec.function].setdefault(spec.address + i, 0)

    @property
    def running(self) -> bool:
        return self._server is not None

    def _spans(self) -> list[_Span]:
        out = []
        for fc, regs in self.regs.items():
            run: list[int] = []
            for a in sorted(regs):
                if run and a != run[-1] + 1:
                    out.append(_Span(fc, run[0], len(run)))
                    run = []
                run.append(a)
            if run:
                out.append(_Span(fc, run[0], len(run)))
        return out

    def _device(self) -> SimDevice:
        blocks: dict[int, list[SimData]] = {3: [], 4: []}
        for sp in self._spans():
            values = [self.regs[sp.function][a] for a in range(sp.start, sp.start + sp.count)]
            blocks[sp.function].append(SimData(address=sp.start, values=values, datatype=DataType.REGISTERS))
        for fc in (3, 4):
            blocks[fc] = blocks[fc] or [SimData(address=0, count=1, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(address=0, count=1, values=False, datatype=DataType.BITS)]
        # Separate holding and input register spaces, as on real instruments (holding 40001 != input 30001).
        return SimDevice(id=self.endpoint.device_id, simdata=(bits, list(bits), blocks[3], blocks[4]))

    async def start(self) -> None:
        """Listen on the endpoint's host and port (the image so far is served at once)."""
        if self._server is not None:
            return
        server = ModbusTcpServer(self._device(), address=(self.endpoint.host or "127.0.0.1", self.endpoint.port))
        await server.serve_forever(background=True)
        self._server = server
        log.info("%s: %s serving on %s:%s", self.endpoint.id, self.kind, self.endpoint.host, self.endpoint.port)

    async def stop(self) -> None:
        """Stop listening and drop connections (a device power-cycle or cable pull)."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                await server.shutdown()

    async def update(self, values: dict[str, float | None], ts: datetime) -> None:
        """Write the latest values (tag name -> engineering value, None = unavailable) taken at ts."""
        self.records += 1
        self._extras(values, ts)
        for t in self.tags:
            if t.name not in values:
                continue
            spec: ModbusAddress = t.modbus  # type: ignore[assignment]
            try:
                regs = encode(values[t.name], spec)
            except CodecError as exc:  # e.g. no value for an integer register without a sentinel: keep the last
                log.debug("%s: %s not encoded: %s", self.endpoint.id, t.name, exc)
                continue
            for i, r in enumerate(regs):
                self.regs[spec.function][spec.address + i] = r
        if self._server is not None:
            for sp in self._spans():
                regs = [self.regs[sp.function][a] for a in range(sp.start, sp.start + sp.count)]
                await self._server.async_setValues(self.endpoint.device_id, sp.function, sp.start, regs)

    def _value(self, values: dict[str, float | None], short: str) -> float | None:
        v = values.get(f"{self.owner}.{short}")
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    def _extras(self, values: dict[str, float | None], ts: datetime | None = None) -> None:
        if self.kind == "particle_counter":
            self._particle_counter(values, ts)
        elif self.kind == "trh":
            hr = self.regs[3]
            for i, r in enumerate(_f32_cdab(_dew_point(self._value(values, "TEMP"), self._value(values, "RH")))):
                hr[6 + i] = r
            for i, r in enumerate(_f32_cdab(VAISALA_TEST_VALUE)):
                hr[VAISALA_TEST_ADDRESS + i] = r
        elif self.kind == "pressure" and values:
            dp = values.get(f"{self.owner}.DP", 0.0)
            if dp is None or (isinstance(dp, float) and math.isnan(dp)):
                values[f"{self.owner}.PSTAT"] = PSTAT_DATA_ERROR

    def _particle_counter(self, values: dict[str, float | None], ts: datetime | None) -> None:
        ir, hr = self.regs[4], self.regs[3]
        tags = {t.short: t for t in self.tags}
        counts = {}
        for short in ("P05", "P50"):
            v, t = self._value(values, short), tags.get(short)
            scale = t.modbus.scale if t is not None and t.modbus is not None else 1.0
            counts[short] = None if v is None else max(0, round(v / scale))
        missing = bool(values) and any(c is None for c in counts.values())
        c05, c50 = counts["P05"] or 0, counts["P50"] or 0
        # Eight cumulative channels (>= 0.3, 0.5, 1.0, 3.0, 5.0, 10, 25, 50 um): each at most the one before.
        chans = [c05 * 2 + 3, c05, max(c50, round(c05 * 0.35)), max(c50, round(c05 * 0.08)), c50,
                 round(c50 * 0.5), round(c50 * 0.2), round(c50 * 0.05)]
        status = PC_STATUS_SAMPLER_ERROR if missing else 0
        alarms = 0
        for bit, short, c in ((1, "P05", c05), (4, "P50", c50)):
            t = tags.get(short)
            limit = t.action_high if t is not None and t.modbus is not None else None
            if limit is not None and c * t.modbus.scale > limit:  # type: ignore[union-attr]
                alarms |= 1 << bit
                status |= PC_STATUS_THRESHOLD_HIGH
        location = list(self.site.rooms).index(self.owner) + 1 if self.owner in self.site.rooms else 0
        image = (_u32(ts.timestamp() if ts else 0) + _u32(60) + _u32(location) + _u32(status)
                 + [r for c in chans for r in _u32(c)])
        for a, r in enumerate(image):
            ir[a] = r
        ir[72], ir[73], ir[74], ir[75] = 0, 0 if missing else 0xFF, 0, alarms  # 30073-30076 masks and flags
        device_status = 0b111 | (1 << 3 if missing else 0) | (1 << 12)  # RUNNING SAMPLING NEW-DATA (ERROR) FLOW
        for a, r in {0: 135, 1: 0, 2: device_status, 22: 100, 23: self.records & 0xFFFF, 24: 0xFFFF,
                     25: location}.items():
            hr[a] = r


class ModbusPlant:
    """All Modbus devices of a site, started, stopped and updated together (or one at a time)."""

    def __init__(self, site: Site) -> None:
        self.devices = {e.id: DeviceServer(site, e) for e in site.endpoints.values() if e.protocol == "modbus"}
        self.tag_device = {t.name: d for d in self.devices.values() for t in d.tags}

    async def start(self) -> None:
        for d in self.devices.values():
            await d.start()

    async def stop(self) -> None:
        for d in self.devices.values():
            await d.stop()

    async def update(self, values: dict[str, float | None], ts: datetime) -> None:
        """Route values by tag to their devices and write them."""
        per: dict[str, dict[str, float | None]] = {}
        for tag, v in values.items():
            d = self.tag_device.get(tag)
            if d is not None:
                per.setdefault(d.endpoint.id, {})[tag] = v
        for dev_id, vals in per.items():
            await self.devices[dev_id].update(vals, ts)
