"""Keeps a records store in step with the live twin, as a plant's MES/LIMS would.

A batch appears as `running` when it starts (covariates, recipe setpoints); setpoint changes and
daily offline results are added as they happen; at harvest the batch is closed with its release
results and the twin's fault labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from plant.records import (
    BatchRecord,
    DonorCovariate,
    OfflineResult,
    Records,
    SetpointChange,
    coi_id,
)
from plant.sim.live import LIVE_INDEX_BASE, LiveTwin
from plant.sim.plan import BatchPlan, twin_key
from plant.site import Site

RUN_STRIDE = 1_000_000_000  # batch indexes one live run may use before the next run's range begins


def fresh_index_base(records: Records, site: Site, seed: int) -> int:
    """The first index base whose batch ids the store has not seen, so a restarted live twin never reuses one.

    A run's first batch (unit 1, index = base) is recorded before any other, so checking it is enough.
    """
    key, base = twin_key(seed), LIVE_INDEX_BASE
    while True:
        try:
            records.get_batch(coi_id(site.info.code, base, key))
        except KeyError:
            return base
        base += RUN_STRIDE


@dataclass(slots=True)
class _Progress:
    setpoints: int = 0
    offline: int = 0


@dataclass(slots=True)
class LiveRecorder:
    """Call `sync()` after twin steps; it writes only what is new since the last call."""

    records: Records
    twin: LiveTwin
    _seen: dict[str, _Progress] = field(default_factory=dict)

    def sync(self) -> None:
        """Record new batches, setpoint changes, offline results and finished batches."""
        for plan in self.twin.started:
            if plan.batch_id not in self._seen:
                self._start(plan)
        for slot in self.twin.slots:
            if slot.plan is not None and slot.bank is not None:
                self._progress(slot.plan, slot.bank)
        done = self.twin.take_records()
        for rec in done.batches:
            self.records.update_batch(rec.batch_id, end_ts=rec.end_ts, status=rec.status, disposition=rec.disposition)
            progress = self._seen.pop(rec.batch_id, _Progress())
            stored = {(s.tag, s.ts) for s in self.records_setpoints(rec.batch_id)}
            self.records.add_setpoints([s for s in done.setpoints if s.batch_id == rec.batch_id
                                        and (s.tag, s.ts) not in stored])
            self.records.add_offline_results([o for o in done.offline if o.batch_id == rec.batch_id][progress.offline:])
        self.records.add_release_results(done.release)
        self.records.add_fault_labels(done.labels)
        self.twin.started = [p for p in self.twin.started if p.batch_id in self._seen]

    def close_stale(self, when: datetime, note: str) -> list[str]:
        """Terminate the batches the store holds as running that this twin does not run (call before the first
        sync): a restarted live twin starts afresh, and the batches of its last run are lost, as in a plant
        whose bioreactors were stopped."""
        mine = {p.batch_id for p in self.twin.started} | {s.plan.batch_id for s in self.twin.slots if s.plan}
        closed = []
        for row in self.records.batches(status="running").iter_rows(named=True):
            if row["batch_id"] in mine:
                continue
            end = max(when, row["start_ts"] + timedelta(minutes=1))
            self.records.update_batch(row["batch_id"], end_ts=end, status="terminated", disposition="rejected",
                                      notes=note)
            closed.append(row["batch_id"])
        return closed

    def records_setpoints(self, batch_id: str) -> list[SetpointChange]:
        frame = self.records.setpoints(batch_id)
        return [SetpointChange(batch_id, r["tag"], r["ts"], r["value"], str(r["source"]))
                for r in frame.iter_rows(named=True)]

    def _start(self, plan: BatchPlan) -> None:
        self.records.add_batches([BatchRecord(
            batch_id=plan.batch_id, unit=plan.unit, site=self.twin.site.info.code, recipe=plan.recipe,
            kind=plan.batch_kind, start_ts=plan.start, planned_end_ts=plan.start + timedelta(hours=plan.harvest_h))])
        self.records.add_covariates([DonorCovariate(plan.batch_id, n, v, t) for n, v, t in plan.covariates])
        self._seen[plan.batch_id] = _Progress()

    def _progress(self, plan: BatchPlan, bank) -> None:  # noqa: ANN001 (plant.sim.bank.Bank)
        progress = self._seen.get(plan.batch_id)
        if progress is None:
            return
        sources = {(int(round(e.t_h * 60)), e.tag): e.source for e in plan.setpoints}
        new_sp = bank.sp_log[progress.setpoints:]
        self.records.add_setpoints([
            SetpointChange(plan.batch_id, tag, plan.start + timedelta(minutes=m), value, sources.get((m, tag), "operator"))
            for m, _, tag, value in new_sp])
        progress.setpoints = len(bank.sp_log)
        new_off = bank.offline[progress.offline:]
        self.records.add_offline_results([
            OfflineResult(plan.batch_id, plan.start + timedelta(minutes=o.minute), o.analyte, o.value, o.unit,
                          "offline analyser" if o.analyte not in ("VCD", "VIAB") else "cell counter")
            for o in new_off])
        progress.offline = len(bank.offline)
