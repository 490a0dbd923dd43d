"""Runs a group of planned batches minute by minute: controls, faults, kinetics, sensors, assays."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from plant.sim import kinetics as k
from plant.sim.plan import MEDIA, BatchPlan

DT_H = 1.0 / 60.0
PHYS_MIN = 5  # minutes per kinetics step; sensors read every minute, interpolated between steps
MEAS_TAGS = ("TEMP", "PH", "DO", "AGIT", "CO2", "WEIGHT", "PERF", "BASE")
SETPOINT_TAGS = ("TEMP_SP", "PH_SP", "DO_SP", "AGIT_SP", "PERF_SP")
OFFLINE = (  # analyte, unit, relative or absolute noise
    ("VCD", "/mL", 0.07), ("VIAB", "%", 1.5), ("GLC", "mmol/L", 0.04), ("LAC", "mmol/L", 0.04),
    ("GLN", "mmol/L", 0.05), ("NH4", "mmol/L", 0.05), ("PH", "[pH]", 0.02),
)
SAMPLE_OFFSET_MIN = 60  # daily sample one hour into each culture day
NOISE_SD = np.array([0.05, 0.01, 0.5, 0.05, 0.02, 0.002, 0.01, 0.0])


@dataclass(frozen=True, slots=True)
class OfflineSample:
    batch_index: int
    minute: int
    analyte: str
    value: float
    unit: str


def _faults_by_kind(plans: list[BatchPlan]) -> dict[str, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Per fault kind present: start and end hour per batch (inf/-inf = none) and parameter arrays."""
    out = {}
    for kind in sorted({f.kind for p in plans for f in p.faults}):
        start = np.full(len(plans), np.inf)
        end = np.full(len(plans), -np.inf)
        params: dict[str, np.ndarray] = {}
        for i, p in enumerate(plans):
            for f in p.faults:
                if f.kind == kind:
                    start[i], end[i] = f.start_h, f.end_h
                    for name, value in f.params:
                        params.setdefault(name, np.full(len(plans), np.nan))[i] = value
        out[kind] = (start, end, params)
    return out


class Bank:
    """A lockstep group of batches; `advance()` moves all of them PHYS_MIN minutes of culture time."""

    def __init__(self, plans: list[BatchPlan], overrides: dict[str, object] | None = None) -> None:
        self.plans = plans
        n = len(plans)
        self.n = n
        kinds = np.array([k.KINDS[p.unit_kind] for p in plans])
        media = np.array([MEDIA[p.unit_kind] for p in plans])
        static = kinds == k.KIND_STATIC
        self.p = k.Params(
            kind=kinds, mu_max=np.array([p.mu_max for p in plans]), donor=np.array([p.donor for p in plans]),
            tau_lag=np.array([p.tau_lag for p in plans]),
            xmax=np.select([kinds == k.KIND_ROCKING, kinds == k.KIND_STR], [15e6, 30e6], 2.5e6),
            g_in=media[:, 0], q_in=media[:, 1], hco3_in=media[:, 2], ph_control=~static, do_control=~static,
            perfusion=~static, hco3_share=np.where(static, 1.0, 0.45),
        )
        # Poor starting material also dies faster: viability drifts below 80 % in the worst donors (E).
        self.p.kd0 = 0.0015 * (1 + 4 * np.maximum(0.0, 0.6 - self.p.donor) / 0.3)
        for name, value in (overrides or {}).items():  # tests and what-if runs, e.g. {"do_control": False}
            setattr(self.p, name, np.broadcast_to(np.asarray(value), (n,)).copy())
        seed = np.array([p.seed_density for p in plans])
        self.s = k.State(
            t=np.zeros(n), xv=seed * 0.95, xd=seed * 0.05, glc=media[:, 0].copy(), lac=np.full(n, 0.5),
            gln=media[:, 1].copy(), amm=np.full(n, 0.1), hco3=media[:, 2].copy(), o2=np.full(n, k.C_STAR_AIR),
            vol=np.array([p.v0 for p in plans]), temp=np.full(n, 37.0), co2_gas=np.full(n, 5.0),
            co2_liq=np.full(n, 5.0), o2_frac=np.full(n, 0.21), base_ml=np.zeros(n), bact=np.zeros(n),
            perf_vvd=np.zeros(n),
        )
        self.minute = 0
        self.n_steps = np.array([p.n_steps for p in plans])
        defaults = {"TEMP_SP": 37.0, "PH_SP": 7.1, "DO_SP": 50.0, "AGIT_SP": 0.0, "PERF_SP": 1.0}
        self.sp = {t: np.full(n, defaults[t]) for t in SETPOINT_TAGS}
        self._sp_events = sorted(((int(round(e.t_h * 60)), i, e.tag, e.value)
                                  for i, p in enumerate(plans) for e in p.setpoints), key=lambda x: (x[0], x[1]))
        self._sp_next = 0
        self.sp_log: list[tuple[int, int, str, float]] = []  # (minute, batch, tag, value) as applied
        self._faults = _faults_by_kind(plans)
        self.feed_start = np.array([p.feed_start_h for p in plans])
        self.v0 = np.array([p.v0 for p in plans])
        self.vw = np.array([p.vw for p in plans])
        self.perf_sched = np.zeros(n)  # vessel volumes/day from the last VCD count
        self.drift = np.array([p.ph_drift_per_day for p in plans])
        self.do_stuck = np.full(n, np.nan)
        self.last_do = np.full(n, 100.0)
        self.noise_rng = [p.rng(0) for p in plans]
        self.assay_rng = [p.rng(1) for p in plans]
        self.offline: list[OfflineSample] = []

    # -- faults ----------------------------------------------------------------------------------
    def _active(self, kind: str, t: np.ndarray) -> np.ndarray:
        f = self._faults.get(kind)
        if f is None:
            return np.zeros(self.n, dtype=bool)
        return (t >= f[0]) & (t < f[1])

    def _param(self, kind: str, name: str, default: float) -> np.ndarray:
        f = self._faults.get(kind)
        if f is None or name not in f[2]:
            return np.full(self.n, default)
        return np.where(np.isnan(f[2][name]), default, f[2][name])

    def _since(self, kind: str, t: np.ndarray) -> np.ndarray:
        f = self._faults.get(kind)
        return np.zeros(self.n) if f is None else np.clip(t - f[0], 0.0, None)

    # -- one minute --------------------------------------------------------------------------------
    def _apply_setpoints(self) -> None:
        ev = self._sp_events
        while self._sp_next < len(ev) and ev[self._sp_next][0] <= self.minute:
            minute, i, tag, value = ev[self._sp_next]
            self.set_setpoint(i, tag, value)
            self._sp_next += 1

    def set_setpoint(self, i: int, tag: str, value: float) -> None:
        """Change a setpoint of batch i now (recipe, DoE, operator or an approved recommendation)."""
        self.sp[tag][i] = value
        self.sp_log.append((self.minute, i, tag, value))

    def _controls(self, t: np.ndarray, do_meas: np.ndarray) -> k.Controls:
        s = self.s
        feeding = (t >= self.feed_start) & (t < self.feed_start + 24.0) & (s.vol < self.vw)
        feed = np.where(feeding & self.p.perfusion, (self.vw - self.v0) / 24.0, 0.0)
        perf_on = self.p.perfusion & (t >= self.feed_start + 24.0)
        temp_fault = np.where(self._active("temperature_excursion", t),
                              self._param("temperature_excursion", "target_c", 22.0), np.nan)
        drift_fault = self._param("ph_probe_drift", "per_day", 0.0) * np.where(
            self._active("ph_probe_drift", t), self._since("ph_probe_drift", t), 0.0) / 24.0
        self.ph_offset = self.drift * t / 24.0 + drift_fault
        overfeed = np.where(self._active("overfeed_valve_leak", t) & (s.vol < 2.0 * self.vw),
                            self._param("overfeed_valve_leak", "l_per_h", 0.0), 0.0)
        leak = np.where(self._active("bag_leak", t), self._param("bag_leak", "l_per_h", 0.0), 0.0)
        bact_mu = np.where(self._active("bacterial_contamination", t),
                           math.log(2) * 60.0 / self._param("bacterial_contamination", "doubling_min", 30.0), 0.0)
        bact_mu = np.where(self._active("fungal_contamination", t),
                           math.log(2) * 60.0 / self._param("fungal_contamination", "doubling_min", 120.0), bact_mu)
        starting = (bact_mu > 0) & (s.bact < 1.0)
        s.bact = np.where(starting, 1.0, s.bact)  # one organism per mL at the start of an infection
        agit = np.where(self._active("agitation_stop", t), 0.0, self.sp["AGIT_SP"])
        return k.Controls(
            temp_sp=self.sp["TEMP_SP"], ph_sp=self.sp["PH_SP"], do_sp=self.sp["DO_SP"], agit=agit,
            perf_vvd=np.where(perf_on, self.perf_sched * self.sp["PERF_SP"], 0.0),
            feed_l_per_h=feed, ph_offset=self.ph_offset, do_meas=do_meas, temp_target_fault=temp_fault,
            co2_ok=~self._active("co2_supply_failure", t), air_ok=~self._active("air_supply_failure", t),
            perf_ok=~self._active("perfusion_pump_failure", t), leak_in_l_per_h=overfeed, leak_out_l_per_h=leak,
            bact_mu=bact_mu, myco=np.where(self._active("mycoplasma", t), self._param("mycoplasma", "penalty", 0.0), 0.0),
        )

    def _truth(self) -> np.ndarray:
        """The true values behind MEAS_TAGS now, (n, tags)."""
        s = self.s
        agit = np.where(self._active("agitation_stop", s.t), 0.0, self.sp["AGIT_SP"])
        return np.stack([s.temp, s.ph, s.do_pct, agit, s.co2_gas, s.vol * 1.007, s.perf_vvd * s.vol, s.base_ml],
                        axis=1)

    def _measure(self, before: np.ndarray, after: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-minute readings (PHYS_MIN, n, tags) between two physics steps, and the BAD mask."""
        frac = (np.arange(1, PHYS_MIN + 1) / PHYS_MIN)[:, None, None]
        truth = before[None] + (after[None] - before[None]) * frac
        t = self.s.t
        minutes_t = t[None, :] - (PHYS_MIN - np.arange(1, PHYS_MIN + 1))[:, None] * DT_H
        m = truth + NOISE_SD * noise
        m[:, :, 1] = truth[:, :, 1] + self.ph_offset + (0.01 + 0.02 * minutes_t / 288.0) * noise[:, :, 1]
        failing = self._active("do_probe_failure", t)
        mode = self._param("do_probe_failure", "mode", -1.0)
        self.do_stuck = np.where(failing & np.isnan(self.do_stuck), self.last_do, self.do_stuck)
        self.do_stuck = np.where(failing, self.do_stuck, np.nan)
        do = m[:, :, 2]
        do = np.where(failing & (mode == 0), self.do_stuck, do)
        do = np.where(failing & (mode == 2), do + 8.0 * noise[:, :, 7], do)
        do = np.where(failing & (mode == 3), do - 25.0, do)
        bad = np.zeros(m.shape, dtype=bool)
        bad[:, :, 2] = failing & (mode == 1)
        m[:, :, 2] = np.where(bad[:, :, 2], np.nan, np.clip(do, 0.0, 200.0))
        self.last_do = np.where(bad[-1, :, 2], self.last_do, m[-1, :, 2])
        np.maximum(m[:, :, 3:5], 0.0, out=m[:, :, 3:5])
        np.maximum(m[:, :, 6], 0.0, out=m[:, :, 6])
        m[:, :, 7] = truth[:, :, 7]
        return m, bad

    def _assay(self) -> None:
        """Daily offline sample: counts and analyser results with their own noise; sets perfusion."""
        s = self.s
        truth = {"VCD": s.xv, "VIAB": 100 * s.viability, "GLC": s.glc, "LAC": s.lac, "GLN": s.gln,
                 "NH4": s.amm, "PH": s.ph}
        vcd_meas = np.empty(self.n)
        for i in range(self.n):
            if self.minute >= self.n_steps[i]:
                continue
            z = self.assay_rng[i].standard_normal(len(OFFLINE))
            for j, (analyte, unit, sd) in enumerate(OFFLINE):
                true = float(truth[analyte][i])
                if analyte in ("VIAB", "PH"):
                    value = min(true + sd * z[j], 100.0) if analyte == "VIAB" else true + sd * z[j]
                else:
                    value = max(true * (1 + sd * z[j]), 0.0)
                if analyte == "VCD":
                    vcd_meas[i] = value
                self.offline.append(OfflineSample(i, self.minute, analyte, round(value, 4), unit))
        self.perf_sched = np.where(self.minute < self.n_steps, k.janas_vvd(np.nan_to_num(vcd_meas)), self.perf_sched)

    def advance(self, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move every batch PHYS_MIN minutes; return the readings of each minute (PHYS_MIN, n, tags) and BAD mask."""
        self._apply_setpoints()
        if self.minute % 1440 == SAMPLE_OFFSET_MIN:
            self._assay()
        before = self._truth()
        controls = self._controls(self.s.t, self.last_do_for_control())
        k.step(self.s, self.p, controls, PHYS_MIN * DT_H)
        self.minute += PHYS_MIN
        return self._measure(before, self._truth(), noise)

    def last_do_for_control(self) -> np.ndarray:
        failing = self._active("do_probe_failure", self.s.t)
        mode = self._param("do_probe_failure", "mode", -1.0)
        return np.where(failing & (mode == 1), np.nan, self.last_do)

    def draw_noise(self, steps: int) -> np.ndarray:
        """Standard-normal sensor noise (steps, n, tags) from each batch's own stream."""
        return np.stack([r.standard_normal((steps, len(MEAS_TAGS)), dtype=np.float32) for r in self.noise_rng], axis=1)
