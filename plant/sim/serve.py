"""The twin as a plant: a LiveTwin driving its OPC UA server(s) and Modbus devices minute by minute."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import polars as pl

from plant.secrets import ServerUser
from plant.sim.live import LiveTwin
from plant.sim.live_records import LiveRecorder
from plant.sim.modbus_server import ModbusPlant
from plant.sim.opcua_server import Row, UnitOpcUaServer
from plant.site import Site, Tag

log = logging.getLogger("cellwatch.sim.serve")


class TwinTarget:
    """Setpoint writes from OPC UA clients, applied to the running batch through LiveTwin.set_setpoint."""

    def __init__(self, twin: LiveTwin) -> None:
        self.twin = twin

    def check(self, tag: Tag, value: float) -> None:
        status = {s.unit: s for s in self.twin.status()}.get(tag.owner)
        if status is None or status.batch_id is None:
            raise ValueError(f"{tag.owner} runs no batch: nothing to change")

    def apply(self, tag: Tag, value: float) -> None:
        self.twin.set_setpoint(tag.owner, tag.short, value)


class PlantServers:
    """Every OPC UA endpoint and Modbus device of a site, fed by one LiveTwin."""

    def __init__(self, site: Site, twin: LiveTwin, pki: Path, users: dict[str, ServerUser],
                 modbus: bool = True, opcua: bool = True, record: bool = False,
                 recorder: LiveRecorder | None = None, sync_every_min: int = 15) -> None:
        self.site, self.twin, self.pki, self.users = site, twin, pki, users
        # recorder: keeps a records store current with the twin's batches, as a plant's MES/LIMS would
        self.recorder, self.sync_every_min = recorder, sync_every_min
        self.target = TwinTarget(twin)
        self.opcua = {e.id: UnitOpcUaServer(site, e.id, pki, users, self.target)
                      for e in site.endpoints.values() if e.protocol == "opcua"} if opcua else {}
        self.modbus = ModbusPlant(site) if modbus else None
        self.opcua_tags = {t.name for t in site.tags.values() if t.opcua is not None}
        self.setpoints = [t for t in site.tags.values() if t.controllable and t.opcua is not None]
        self.steps = 0
        self.last_frame: pl.DataFrame | None = None
        # record=True keeps what was actually served, with the loop time (tests compare it downstream).
        self.served: list[tuple[float, Row]] | None = [] if record else None

    async def start(self) -> None:
        for srv in self.opcua.values():
            await srv.start()
        if self.modbus is not None:
            await self.modbus.start()

    async def stop(self) -> None:
        if self.recorder is not None:
            self.recorder.sync()
        for srv in self.opcua.values():
            await srv.stop()
        if self.modbus is not None:
            await self.modbus.stop()

    def spare_opcua(self, endpoint_id: str) -> UnitOpcUaServer:
        """A not yet started server for an endpoint (init() it ahead: Server.init holds the loop for seconds)."""
        return UnitOpcUaServer(self.site, endpoint_id, self.pki, self.users, self.target)

    async def restart_opcua(self, endpoint_id: str, down_s: float, fresh: UnitOpcUaServer | None = None) -> None:
        """Stop one OPC UA server, stay down for down_s, start a fresh one (same certificate and node ids)."""
        loop = asyncio.get_running_loop()
        await self.opcua[endpoint_id].stop()
        up_at = loop.time() + down_s
        if fresh is None:
            fresh = self.spare_opcua(endpoint_id)
        if fresh.server is None:
            await fresh.init()
        await asyncio.sleep(max(0.0, up_at - loop.time()))
        await fresh.start()
        self.opcua[endpoint_id] = fresh
        await self._publish_current()

    async def step(self) -> pl.DataFrame:
        """Advance the twin one minute and publish what its instruments measured."""
        frame = self.twin.step()
        self.steps += 1
        self.last_frame = frame
        if self.recorder is not None and self.steps % self.sync_every_min == 0:
            self.recorder.sync()
        await self.publish(frame, self.twin.now)
        return frame

    async def publish(self, frame: pl.DataFrame, now: datetime) -> None:
        """Publish a frame of samples (PVs of running units, room values) and the unit status."""
        loop = asyncio.get_running_loop()
        rows, values = [], {}
        for tag, ts, value, quality, status in frame.select("tag", "ts", "value", "quality", "status").iter_rows():
            bad = quality != "GOOD" or value is None
            if tag in self.opcua_tags:
                rows.append(Row(tag, None if bad else value, ts, (status or "BadSensorFailure") if bad else ""))
            else:
                values[tag] = None if bad else value
        seen = {r.tag for r in rows}
        running = {s.unit for s in self.twin.status() if s.batch_id is not None}
        for t in self.setpoints:  # a controller re-reads its setpoints every scan: fresh source timestamps
            latest = self.twin.latest.get(t.name)
            if t.name not in seen and t.owner in running and latest is not None:
                rows.append(Row(t.name, latest[1], now))
        for srv in self.opcua.values():
            if srv.running:
                mine = [r for r in rows if r.tag in srv.tags]
                await srv.publish(mine)
                if self.served is not None:
                    self.served += [(loop.time(), r) for r in mine]
                for s in self.twin.status():
                    await srv.set_unit_status(s.unit, s.batch_id, s.phase, s.culture_day)
        if self.modbus is not None and values:
            await self.modbus.update(values, now)
            if self.served is not None:
                self.served += [(loop.time(), Row(t, v, now)) for t, v in values.items()]

    async def _publish_current(self) -> None:
        if self.last_frame is not None:
            await self.publish(self.last_frame, self.twin.now)

    async def run(self, speed: float, stop: asyncio.Event | None = None) -> None:
        """Step at `speed` simulated seconds per real second until stop is set."""
        loop = asyncio.get_running_loop()
        period = 60.0 / speed
        due = loop.time()
        while stop is None or not stop.is_set():
            await self.step()
            due += period
            delay = max(0.0, due - loop.time())
            if stop is None:
                await asyncio.sleep(delay)
                continue
            try:  # at speed 1 a step is a minute away: stop must not wait for it
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass

    def preroll(self, minutes: int, sink: Callable[[pl.DataFrame], None] | None = None) -> None:
        """Run the twin ahead without publishing (so every unit has a batch when serving starts); sink gets
        each minute's samples (e.g. to backfill a historian with the plant's past)."""
        for _ in range(minutes):
            self.last_frame = self.twin.step()
            if sink is not None:
                sink(self.last_frame)
        if self.recorder is not None:
            self.recorder.sync()
