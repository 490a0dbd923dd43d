"""Live mode of the twin: every unit runs batch after batch and the rooms run on, minute by minute."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from plant.samples import QUALITY_DTYPE, SAMPLE_SCHEMA, TS_DTYPE
from plant.sim.bank import MEAS_TAGS, PHYS_MIN, Bank
from plant.sim.cleanroom import CleanroomTwin
from plant.sim.faults import Injection
from plant.sim.history import _ChunkOut, _records
from plant.sim.plan import BatchPlan, injections_for, plan_batch, recipe_for
from plant.site import Site

LIVE_INDEX_BASE = 1_000_000  # live batches never share an index (or a batch id) with a history run


@dataclass(frozen=True, slots=True)
class UnitStatus:
    unit: str
    batch_id: str | None
    phase: str  # idle | activation | transduction | expansion | harvest
    culture_day: float | None


@dataclass(slots=True)
class _Slot:
    unit: str
    count: int
    next_start: datetime
    plan: BatchPlan | None = None
    bank: Bank | None = None
    noise: np.ndarray | None = None
    pending: tuple[np.ndarray, np.ndarray] | None = None  # readings of the current physics step
    emitted: int = 0  # culture minutes handed out so far


class LiveTwin:
    """Deterministic live plant: same seed and start, same telemetry and records."""

    def __init__(self, site: Site, seed: int, start: datetime, injections: list[Injection] | None = None,
                 fault_rate_scale: float = 1.0, index_base: int = LIVE_INDEX_BASE) -> None:
        if start.tzinfo is None or start.second or start.microsecond:
            raise ValueError(f"live start must be an aware UTC time on a whole minute, got {start!r}")
        self.site, self.seed, self.now = site, seed, start
        self.injections = injections or []
        self.scale = fault_rate_scale
        self.index_base = index_base  # batch indexes (and ids) start here; see live_records.fresh_index_base
        self.rooms = CleanroomTwin(site, seed, [i for i in self.injections if i.target in site.rooms], fault_rate_scale)
        self.units = list(site.units.values())
        self.slots = [_Slot(u.id, 0, start + timedelta(minutes=90 * i)) for i, u in enumerate(self.units)]
        self.unit_tags = {u: {t.short for t in site.unit_tags(u)} for u in site.units}
        self.pending = _ChunkOut()
        self.started: list[BatchPlan] = []
        self.latest: dict[str, tuple[datetime, float | None, str]] = {}

    def status(self) -> list[UnitStatus]:
        """Batch, phase and culture day of every unit now."""
        out = []
        for slot in self.slots:
            p, b = slot.plan, slot.bank
            if p is None or b is None:
                out.append(UnitStatus(slot.unit, None, "idle", None))
                continue
            t = slot.emitted / 60.0
            phase = ("activation" if t < p.transduction_h else "transduction" if t < p.feed_start_h
                     else "harvest" if t >= p.harvest_h - 2 else "expansion")
            out.append(UnitStatus(slot.unit, p.batch_id, phase, round(t / 24.0, 3)))
        return out

    def set_setpoint(self, unit: str, tag: str, value: float) -> None:
        """Apply a setpoint change on a unit's running batch (an operator's or an approved recommendation)."""
        slot = next((s for s in self.slots if s.unit == unit), None)
        if slot is None:
            raise KeyError(f"unknown unit {unit!r}")
        spec = self.site.tags.get(f"{unit}.{tag}")
        if spec is None or not spec.controllable:
            raise ValueError(f"{unit}.{tag} is not a controllable setpoint")
        lo, hi = spec.eng_range
        if not lo <= value <= hi:
            raise ValueError(f"{unit}.{tag} = {value} is outside its engineering range [{lo}, {hi}]")
        if slot.bank is None:
            raise ValueError(f"{unit} runs no batch: nothing to change")
        slot.bank.set_setpoint(0, tag, float(value))

    def _start(self, slot: _Slot) -> None:
        unit = self.site.units[slot.unit]
        recipe = recipe_for(self.site, unit)
        index = self.index_base + slot.count * len(self.slots) + self.slots.index(slot)
        forced = injections_for(unit.id, self.now, recipe.harvest_day * 24.0, self.injections)
        slot.plan = plan_batch(self.site, unit, recipe, index, self.now, self.seed, self.scale, forced)
        slot.bank = Bank([slot.plan])
        slot.noise = slot.pending = None
        slot.emitted = 0
        slot.count += 1
        self.started.append(slot.plan)

    def _finish(self, slot: _Slot) -> None:
        assert slot.plan is not None and slot.bank is not None
        s = slot.bank.s
        harvest = {"xv": float(s.xv[0]), "xd": float(s.xd[0]), "vol": float(s.vol[0]), "bact": float(s.bact[0])}
        _records([slot.plan], slot.bank, {0: harvest}, self.site.info.code, self.pending)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, slot.plan.index, 5]))
        slot.next_start = self.now + timedelta(minutes=int(rng.integers(24 * 60, 72 * 60)))
        slot.plan = slot.bank = slot.noise = None

    def step(self) -> pl.DataFrame:
        """Advance the plant one minute; return the samples measured at the new time."""
        ts_list: list[datetime] = []
        tags: list[str] = []
        values: list[float] = []
        bad: list[bool] = []
        for slot in self.slots:
            if slot.bank is None and self.now >= slot.next_start:
                self._start(slot)
            if slot.bank is None or slot.plan is None:
                continue
            bank = slot.bank
            if slot.pending is None or slot.emitted == bank.minute:
                block = bank.minute % 1440
                if slot.noise is None or block == 0:
                    slot.noise = bank.draw_noise(1440)
                slot.pending = bank.advance(slot.noise[block:block + PHYS_MIN])
            row = slot.emitted - (bank.minute - PHYS_MIN)
            m, b = slot.pending[0][row], slot.pending[1][row]
            slot.emitted += 1
            t = slot.plan.start + timedelta(minutes=slot.emitted)
            for j, tag in enumerate(MEAS_TAGS):
                if tag in self.unit_tags[slot.unit]:
                    ts_list.append(t)
                    tags.append(f"{slot.unit}.{tag}")
                    values.append(float(m[0, j]))
                    bad.append(bool(b[0, j]))
            for minute, _, tag, value in bank.sp_log:
                if minute == slot.emitted - 1 and tag in self.unit_tags[slot.unit]:
                    ts_list.append(t - timedelta(minutes=1))
                    tags.append(f"{slot.unit}.{tag}")
                    values.append(value)
                    bad.append(False)
            if slot.emitted >= slot.plan.n_steps:
                self.now += timedelta(minutes=1)  # harvest time stamps the records
                self._finish(slot)
                self.now -= timedelta(minutes=1)
        self.now += timedelta(minutes=1)
        frame = self._frame(ts_list, tags, values, bad)
        rooms = self.rooms.frame(self.now, 1)
        out = pl.concat([frame, rooms])
        for row in out.select("tag", "ts", "value", "quality").iter_rows():
            self.latest[row[0]] = (row[1], row[2], row[3])
        return out

    @staticmethod
    def _frame(ts: list[datetime], tags: list[str], values: list[float], bad: list[bool]) -> pl.DataFrame:
        return pl.DataFrame({
            "ts": pl.Series(ts, dtype=TS_DTYPE), "tag": pl.Series(tags, dtype=pl.String),
            "value": pl.Series(values, dtype=pl.Float64, nan_to_null=True),
            "quality": pl.Series(["BAD" if x else "GOOD" for x in bad], dtype=QUALITY_DTYPE),
            "status": pl.Series(["BadSensorFailure" if x else None for x in bad], dtype=pl.String),
            "server_ts": pl.Series([None] * len(ts), dtype=TS_DTYPE),
            "received_ts": pl.Series([None] * len(ts), dtype=TS_DTYPE),
        }, schema=SAMPLE_SCHEMA)

    def take_records(self) -> _ChunkOut:
        """Records of the batches finished since the last call."""
        out, self.pending = self.pending, _ChunkOut()
        return out

    async def run(self, speed: float, sink: Callable[[pl.DataFrame], None], until: datetime | None = None) -> None:
        """Advance at `speed` simulated seconds per real second, handing every minute's samples to sink."""
        loop = asyncio.get_running_loop()
        t_real, t_sim = loop.time(), self.now
        while until is None or self.now < until:
            sink(self.step())
            due = t_real + (self.now - t_sim).total_seconds() / speed
            await asyncio.sleep(max(0.0, due - loop.time()))
