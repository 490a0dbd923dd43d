"""Fast mode of the twin: schedule batches on the site's units, simulate them, write history."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

from plant.historian import Historian
from plant.records import (
    BatchRecord, DonorCovariate, FaultLabel, OfflineResult, Records, ReleaseResult, SetpointChange,
)
from plant.samples import QUALITY_DTYPE, SAMPLE_SCHEMA, TS_DTYPE
from plant.sim.bank import MEAS_TAGS, PHYS_MIN, Bank
from plant.sim.cleanroom import CleanroomTwin
from plant.sim.faults import ALL_FAULTS, UNIT_FAULTS, Injection
from plant.sim.plan import LOW_CAR, POOR_DONOR, BatchPlan, injections_for, plan_batch, recipe_for
from plant.sim.release import release_results
from plant.site import Site

CHUNK = 100  # batches per lockstep bank; fixed so results never depend on the worker count
ROOM_BLOCK_DAYS = 30
DEFAULT_START = datetime(2025, 1, 6, 8, 0, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class HistoryResult:
    batches: int
    samples: int
    start: datetime
    end: datetime
    failed: int
    fault_labels: int


@dataclass(slots=True)
class _ChunkOut:
    samples: int = 0
    batches: list[BatchRecord] = field(default_factory=list)
    setpoints: list[SetpointChange] = field(default_factory=list)
    covariates: list[DonorCovariate] = field(default_factory=list)
    offline: list[OfflineResult] = field(default_factory=list)
    release: list[ReleaseResult] = field(default_factory=list)
    labels: list[FaultLabel] = field(default_factory=list)

    def store(self, records: Records) -> None:
        """Write everything collected into the records store."""
        records.add_batches(self.batches)
        records.add_setpoints(self.setpoints)
        records.add_covariates(self.covariates)
        records.add_offline_results(self.offline)
        records.add_release_results(self.release)
        records.add_fault_labels(self.labels)


def schedule(site: Site, n_batches: int, seed: int, start: datetime = DEFAULT_START,
             injections: list[Injection] | None = None, fault_rate_scale: float = 1.0) -> list[BatchPlan]:
    """Plan n batches back to back on the site's units, each drawn from its own seed."""
    units = [u for u in site.units.values()]
    if not units:
        raise ValueError(f"{site.source}: the site has no units to run batches on")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7_777_777]))
    free = {u.id: start + timedelta(hours=13 * i) for i, u in enumerate(units)}  # staggered first starts
    plans: list[BatchPlan] = []
    for index in range(n_batches):
        unit = min(units, key=lambda u: (free[u.id], u.id))
        recipe = recipe_for(site, unit)
        t0 = free[unit.id]
        forced = injections_for(unit.id, t0, recipe.harvest_day * 24.0, injections or [])
        plan = plan_batch(site, unit, recipe, index, t0, seed, fault_rate_scale, forced)
        plans.append(plan)
        turnaround_min = int(rng.integers(24 * 60, 72 * 60))
        free[unit.id] = t0 + timedelta(hours=plan.harvest_h, minutes=turnaround_min)
    return plans


def _telemetry(plans: list[BatchPlan], unit_tags: dict[str, set[str]], meas: np.ndarray, bad: np.ndarray,
               sp_log: list[tuple[int, int, str, float]]) -> pl.DataFrame:
    """Long-format samples of a bank: measured tags every minute, setpoints when they change."""
    names: list[str] = []
    ts_parts, code_parts, val_parts, bad_parts = [], [], [], []
    for b, p in enumerate(plans):
        n = p.n_steps
        t0 = int(p.start.timestamp() * 1_000_000)
        ts = t0 + np.arange(1, n + 1, dtype=np.int64) * 60_000_000
        for j, tag in enumerate(MEAS_TAGS):
            if tag not in unit_tags[p.unit]:
                continue
            names.append(f"{p.unit}.{tag}")
            ts_parts.append(ts)
            code_parts.append(np.full(n, len(names) - 1, dtype=np.int32))
            val_parts.append(meas[:n, b, j])
            bad_parts.append(bad[:n, b, j])
    for minute, b, tag, value in sp_log:
        p = plans[b]
        if minute > p.n_steps or tag not in unit_tags[p.unit]:
            continue
        names.append(f"{p.unit}.{tag}")
        ts_parts.append(np.array([int(p.start.timestamp() * 1_000_000) + minute * 60_000_000], dtype=np.int64))
        code_parts.append(np.array([len(names) - 1], dtype=np.int32))
        val_parts.append(np.array([value]))
        bad_parts.append(np.array([False]))
    is_bad = np.concatenate(bad_parts)
    frame = pl.DataFrame({
        "ts": pl.Series(np.concatenate(ts_parts)).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "tag": pl.Series(names, dtype=pl.String).gather(np.concatenate(code_parts)),
        "value": pl.Series(np.concatenate(val_parts)).fill_nan(None),
        "quality": pl.Series(["GOOD", "BAD"], dtype=QUALITY_DTYPE).gather(is_bad.astype(np.int32)),
        "status": pl.Series(["", "BadSensorFailure"]).gather(is_bad.astype(np.int32)).replace("", None),
    })
    return frame.with_columns(pl.lit(None, TS_DTYPE).alias("server_ts"), pl.lit(None, TS_DTYPE).alias("received_ts")
                              ).select(list(SAMPLE_SCHEMA))


def run_bank(plans: list[BatchPlan], on_step: Callable[[Bank, np.ndarray, np.ndarray], None] | None = None,
             overrides: dict[str, object] | None = None) -> tuple[Bank, np.ndarray, np.ndarray, dict[int, dict]]:
    """Simulate plans in lockstep; return the bank, readings (steps, n, tags), BAD mask and harvest snapshots."""
    bank = Bank(plans, overrides)
    steps = int(bank.n_steps.max())
    meas = np.empty((steps, bank.n, len(MEAS_TAGS)))
    bad = np.zeros((steps, bank.n, len(MEAS_TAGS)), dtype=bool)
    harvest: dict[int, dict] = {}
    ends = {int(m) for m in bank.n_steps}
    for block in range(0, steps, 1440):
        noise = bank.draw_noise(min(1440, steps - block))
        for i in range(0, noise.shape[0], PHYS_MIN):
            m = block + i
            meas[m:m + PHYS_MIN], bad[m:m + PHYS_MIN] = bank.advance(noise[i:i + PHYS_MIN])
            if on_step is not None:
                on_step(bank, meas[m:m + PHYS_MIN], bad[m:m + PHYS_MIN])
            if bank.minute in ends:
                s = bank.s
                for b in np.flatnonzero(bank.n_steps == bank.minute):
                    harvest[int(b)] = {"xv": float(s.xv[b]), "xd": float(s.xd[b]), "vol": float(s.vol[b]),
                                       "bact": float(s.bact[b])}
    return bank, meas, bad, harvest


def _records(plans: list[BatchPlan], bank: Bank, harvest: dict[int, dict], site_code: str, out: _ChunkOut) -> None:
    for b, p in enumerate(plans):
        end = p.start + timedelta(hours=p.harvest_h)
        results = release_results(p, harvest[b], end)
        passed = all(r.passed for r in results)
        out.batches.append(BatchRecord(
            batch_id=p.batch_id, unit=p.unit, site=site_code, recipe=p.recipe, kind=p.batch_kind, start_ts=p.start,
            planned_end_ts=end, end_ts=end, status="harvested", disposition="released" if passed else "rejected"))
        out.release.extend(results)
        out.covariates.extend(DonorCovariate(p.batch_id, name, value, text) for name, value, text in p.covariates)
        sources = {(int(round(e.t_h * 60)), e.tag): e.source for e in p.setpoints}
        out.setpoints.extend(
            SetpointChange(p.batch_id, tag, p.start + timedelta(minutes=m), value, sources.get((m, tag), "operator"))
            for m, i, tag, value in bank.sp_log if i == b)
        out.labels.extend(_labels(p, end))
    for s in bank.offline:
        p = plans[s.batch_index]
        out.offline.append(OfflineResult(p.batch_id, p.start + timedelta(minutes=s.minute), s.analyte, s.value, s.unit,
                                         "offline analyser" if s.analyte not in ("VCD", "VIAB") else "cell counter"))
    for b, p in enumerate(plans):  # day-5 in-process control of transduction
        rng = p.rng(3)
        car = float(np.clip(p.car_frac * (1 + 0.08 * rng.standard_normal()), 0.0, 1.0)) * 100
        out.offline.append(OfflineResult(p.batch_id, p.start + timedelta(days=5, hours=1), "CAR_PCT", round(car, 2),
                                         "%", "flow cytometry"))


def _labels(p: BatchPlan, end: datetime) -> list[FaultLabel]:
    labels = [FaultLabel(kind=f.kind, start_ts=p.start + timedelta(hours=f.start_h),
                         end_ts=p.start + timedelta(hours=f.end_h), unit=p.unit, batch_id=p.batch_id,
                         severity=UNIT_FAULTS[f.kind].severity,
                         detail="; ".join(f"{k}={v:g}" for k, v in f.params)) for f in p.faults]
    if p.donor < POOR_DONOR:
        labels.append(FaultLabel("poor_donor_material", p.start, end, unit=p.unit, batch_id=p.batch_id,
                                 severity="major", detail=f"donor={p.donor:.3f}"))
    if p.car_frac < LOW_CAR:
        labels.append(FaultLabel("low_transduction", p.start + timedelta(hours=p.transduction_h), end, unit=p.unit,
                                 batch_id=p.batch_id, severity="major", detail=f"car={p.car_frac:.3f}"))
    return labels


def _bank_task(plans: list[BatchPlan], unit_tags: dict[str, set[str]], root: str, site_code: str) -> _ChunkOut:
    bank, meas, bad, harvest = run_bank(plans)
    frame = _telemetry(plans, unit_tags, meas, bad, bank.sp_log)
    del meas, bad
    out = _ChunkOut(samples=frame.height)
    Historian(root).append(frame)
    _records(plans, bank, harvest, site_code, out)
    return out


def _room_task(site: Site, seed: int, injections: list[Injection], scale: float, start: datetime, minutes: int,
               root: str) -> _ChunkOut:
    twin = CleanroomTwin(site, seed, [i for i in injections if i.target in site.rooms], scale)
    frame = twin.frame(start, minutes)
    Historian(root).append(frame)
    end = start + timedelta(minutes=minutes)
    labels = [FaultLabel(kind=e.kind, start_ts=e.start, end_ts=e.end, room=e.room, severity=e.severity,
                         detail=e.detail) for e in twin.faults(start, end) if start <= e.start < end]
    return _ChunkOut(samples=frame.height, labels=labels)


def generate_history(site: Site, out_dir: Path, n_batches: int, seed: int, start: datetime = DEFAULT_START,
                     injections: list[Injection] | None = None, fault_rate_scale: float = 1.0, workers: int = 2,
                     progress: Callable[[int, int], None] | None = None) -> HistoryResult:
    """Simulate n batches plus the cleanrooms around them into <out>/historian and <out>/records.db."""
    injections = injections or []
    for inj in injections:
        if inj.target not in site.units and inj.target not in site.rooms:
            raise ValueError(f"injection {inj.kind}: unknown unit or room {inj.target!r}")
        if (inj.target in site.units) != (ALL_FAULTS[inj.kind].target == "unit"):
            raise ValueError(f"injection {inj.kind} cannot target {inj.target!r}")
    plans = schedule(site, n_batches, seed, start, injections, fault_rate_scale)
    t_end = max(p.start + timedelta(hours=p.harvest_h) for p in plans)
    day0 = start.replace(hour=0, minute=0, second=0, microsecond=0)
    days = math.ceil((t_end - day0).total_seconds() / 86400)
    root = str(out_dir / "historian")
    records = Records.open(out_dir / "records.db")
    unit_tags = {u: {t.short for t in site.unit_tags(u)} for u in site.units}
    total = math.ceil(len(plans) / CHUNK) + math.ceil(days / ROOM_BLOCK_DAYS)
    done = 0
    outs: list[_ChunkOut] = []
    tasks = [(_bank_task, (plans[i:i + CHUNK], unit_tags, root, site.info.code)) for i in range(0, len(plans), CHUNK)]
    for d in range(0, days, ROOM_BLOCK_DAYS):
        minutes = min(ROOM_BLOCK_DAYS, days - d) * 1440
        tasks.append((_room_task, (site, seed, injections, fault_rate_scale, day0 + timedelta(days=d), minutes, root)))
    if workers <= 1:  # in this process: no pool to start or lose
        for fn, args in tasks:
            outs.append(fn(*args))
            done += 1
            if progress:
                progress(done, total)
    else:
        # spawn, not fork: a forked child of a process whose polars thread pool has run can deadlock.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for fut in [pool.submit(fn, *args) for fn, args in tasks]:
                outs.append(fut.result())
                done += 1
                if progress:
                    progress(done, total)
    merged = _ChunkOut()
    for o in outs:
        merged.samples += o.samples
        for name in ("batches", "setpoints", "covariates", "offline", "release", "labels"):
            getattr(merged, name).extend(getattr(o, name))
    merged.store(records)
    records.close()
    Historian(root).compact()  # only partitions with many small segments; day files here are large
    failed = sum(1 for b in merged.batches if b.disposition == "rejected")
    return HistoryResult(len(plans), merged.samples, day0, day0 + timedelta(days=days), failed, len(merged.labels))

