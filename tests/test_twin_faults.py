"""Every bioreactor failure mode of domain.md section 6 shows its telemetry signature.

Each fault is injected into a batch that runs beside an identical twin without it (same donor,
same sensor noise), so every difference between the two comes from the fault.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from plant.sim.bank import MEAS_TAGS
from plant.sim.faults import UNIT_FAULTS
from plant.sim.history import _labels, run_bank
from plant.sim.plan import plan_batch, recipe_for
from plant.sim.release import release_results
from plant.site import load_demo_site

START = datetime(2025, 1, 6, 8, tzinfo=timezone.utc)
WINDOWS = {  # kind: (start h, duration h)
    "bacterial_contamination": (120, 1), "fungal_contamination": (120, 1), "mycoplasma": (24, 1),
    "temperature_excursion": (150, 6), "ph_probe_drift": (100, 150), "do_probe_failure": (150, 24),
    "perfusion_pump_failure": (150, 24), "overfeed_valve_leak": (150, 8), "co2_supply_failure": (150, 6),
    "air_supply_failure": (200, 4), "agitation_stop": (200, 4), "bag_leak": (150, 24),
}
J = {t: j for j, t in enumerate(MEAS_TAGS)}


@pytest.fixture(scope="module")
def twin():
    site = load_demo_site()
    unit = site.units["BR01"]
    recipe = recipe_for(site, unit)
    plans = []
    for i, kind in enumerate(UNIT_FAULTS):
        start, hours = WINDOWS[kind]
        faulty = plan_batch(site, unit, recipe, 100 + i, START, 7, 0.0, [(kind, start, hours)])
        clean = plan_batch(site, unit, recipe, 100 + i, START, 7, 0.0, [])
        plans += [replace(faulty, donor=1.0), replace(clean, donor=1.0)]
    bank, meas, bad, harvest = run_bank(plans)
    offline: dict[tuple[int, str], dict[int, float]] = {}
    for o in bank.offline:
        offline.setdefault((o.batch_index, o.analyte), {})[o.minute // 1440] = o.value
    return {kind: Pair(2 * i, plans, meas, bad, harvest, offline) for i, kind in enumerate(UNIT_FAULTS)}


class Pair:
    """Telemetry of a faulty batch (f) and its clean twin (c)."""

    def __init__(self, f, plans, meas, bad, harvest, offline):
        self.f, self.c = f, f + 1
        self.plan_f, self.plan_c = plans[f], plans[f + 1]
        self._meas, self._bad, self._harvest, self._offline = meas, bad, harvest, offline

    def window(self, tag, start_h, end_h, which="f"):
        i = self.f if which == "f" else self.c
        return self._meas[int(start_h * 60) - 1:int(end_h * 60) - 1, i, J[tag]]  # row m is minute m + 1

    def bad(self, tag, start_h, end_h):
        return self._bad[int(start_h * 60) - 1:int(end_h * 60) - 1, self.f, J[tag]]

    def offline(self, analyte, day, which="f"):
        return self._offline[(self.f if which == "f" else self.c, analyte)][day]

    def cells(self, which="f"):
        h = self._harvest[self.f if which == "f" else self.c]
        return h["xv"] * h["vol"] * 1e3

    def release(self, which="f"):
        i, p = (self.f, self.plan_f) if which == "f" else (self.c, self.plan_c)
        return {r.attribute: r for r in release_results(p, self._harvest[i], START)}


def mean(x):
    return float(np.nanmean(x))


def test_every_fault_kind_is_covered():
    assert set(WINDOWS) == set(UNIT_FAULTS)


def test_fault_labels_carry_kind_unit_and_window(twin):
    for kind, pair in twin.items():
        labels = [lb for lb in _labels(pair.plan_f, START + timedelta(hours=pair.plan_f.harvest_h)) if lb.kind == kind]
        assert len(labels) == 1, kind
        assert labels[0].unit == "BR01" and labels[0].batch_id == pair.plan_f.batch_id
        assert labels[0].start_ts == START + timedelta(hours=WINDOWS[kind][0])


def test_bacterial_contamination_crashes_do_and_glucose(twin):
    p = twin["bacterial_contamination"]
    assert mean(p.window("DO", 130, 150)) < mean(p.window("DO", 130, 150, "c")) - 30
    assert mean(p.window("CO2", 148, 160)) < mean(p.window("CO2", 148, 160, "c")) - 1  # acid: controller backs off CO2
    assert p.offline("GLC", 7) < 0.3 * p.offline("GLC", 7, "c")  # glucose gone ...
    assert p.offline("VCD", 7) < p.offline("VCD", 7, "c")  # ... faster than T-cell growth explains
    assert p.offline("VIAB", 8) < 50
    assert not p.release()["STERILITY"].passed and p.release("c")["STERILITY"].passed


def test_fungal_contamination_is_the_same_signature_but_days_later(twin):
    p = twin["fungal_contamination"]
    assert mean(p.window("DO", 121, 140)) == pytest.approx(mean(p.window("DO", 121, 140, "c")), abs=1.0)
    assert mean(p.window("DO", 190, 230)) < mean(p.window("DO", 190, 230, "c")) - 20
    assert p.offline("VIAB", 10) < 60 < p.offline("VIAB", 10, "c")
    assert not p.release()["STERILITY"].passed


def test_mycoplasma_has_no_online_signature_but_slows_growth(twin):
    p = twin["mycoplasma"]
    for tag in ("TEMP", "PH", "DO"):
        assert mean(p.window(tag, 24, 48)) == pytest.approx(mean(p.window(tag, 24, 48, "c")), abs=0.5)
    assert p.cells() < 0.85 * p.cells("c")
    assert not p.release()["MYCOPLASMA"].passed and p.release("c")["MYCOPLASMA"].passed


def test_temperature_excursion_ramps_away_and_recovers(twin):
    p = twin["temperature_excursion"]
    during = p.window("TEMP", 150, 156)
    assert during.min() < 35.0 or during.max() > 39.5
    assert abs(mean(p.window("TEMP", 152, 156)) - 37.0) > 2.0
    assert mean(p.window("TEMP", 162, 170)) == pytest.approx(37.0, abs=0.2)


def test_ph_probe_drift_splits_online_from_offline_ph(twin):
    p = twin["ph_probe_drift"]
    online = mean(p.window("PH", 215, 240))
    assert abs(online - p.offline("PH", 9)) > 0.15  # the probe reads its setpoint; the culture is elsewhere
    assert abs(mean(p.window("PH", 215, 240, "c")) - p.offline("PH", 9, "c")) < 0.1
    assert abs(mean(p.window("CO2", 215, 240)) - mean(p.window("CO2", 215, 240, "c"))) > 1.0


def test_do_probe_failure_makes_the_do_signal_abnormal(twin):
    p = twin["do_probe_failure"]
    mode = p.plan_f.faults[0].param("mode")
    during, ref = p.window("DO", 151, 173.9), p.window("DO", 151, 173.9, "c")
    if mode == 0:
        assert np.nanstd(during) < 1e-9 < np.nanstd(ref)  # flatline
    elif mode == 1:
        assert p.bad("DO", 151, 173.9).all() and np.isnan(during).all()  # BadSensorFailure, no value
    elif mode == 2:
        assert np.nanstd(during) > 4 * np.nanstd(ref)
    else:
        assert mean(during) < mean(ref) - 15
    assert not p.bad("DO", 176, 200).any()


def test_perfusion_pump_failure_stops_flow_and_starves_the_culture(twin):
    p = twin["perfusion_pump_failure"]
    assert p.window("PERF", 151, 174).max() < 0.05 < mean(p.window("PERF", 151, 174, "c"))
    assert np.ptp(p.window("WEIGHT", 151, 174)) < 0.02
    assert p.offline("GLC", 7) < p.offline("GLC", 7, "c") - 1.5
    assert p.offline("LAC", 7) > p.offline("LAC", 7, "c") + 2


def test_overfeed_raises_weight_and_dilutes_without_killing(twin):
    p = twin["overfeed_valve_leak"]
    assert p.window("WEIGHT", 157, 158).mean() > p.window("WEIGHT", 157, 158, "c").mean() + 0.1
    assert p.offline("VCD", 7) < 0.92 * p.offline("VCD", 7, "c")
    assert p.offline("VIAB", 7) == pytest.approx(p.offline("VIAB", 7, "c"), abs=1.0)


def test_co2_supply_failure_drives_ph_up(twin):
    p = twin["co2_supply_failure"]
    assert p.window("CO2", 150.5, 156).max() < 0.2
    assert p.window("PH", 150, 156).max() > 7.8
    assert mean(p.window("PH", 150, 156, "c")) == pytest.approx(7.1, abs=0.1)


def test_air_supply_failure_lets_do_fall(twin):
    p = twin["air_supply_failure"]
    assert p.window("DO", 203, 204).mean() < p.window("DO", 203, 204, "c").mean() - 20


def test_agitation_stop_reads_zero_rpm_and_do_falls(twin):
    p = twin["agitation_stop"]
    assert p.window("AGIT", 200.1, 203.9).max() < 0.5  # the readings ramp within one 5-minute step
    assert p.window("DO", 203, 204).mean() < p.window("DO", 203, 204, "c").mean() - 15


def test_bag_leak_loses_weight(twin):
    p = twin["bag_leak"]
    assert p.window("WEIGHT", 173, 174).mean() < p.window("WEIGHT", 173, 174, "c").mean() - 0.1


def test_poor_donor_material_grows_late_slow_and_little():
    site = load_demo_site()
    unit = site.units["BR01"]
    base = plan_batch(site, unit, recipe_for(site, unit), 3, START, 7, 0.0)
    poor, good = replace(base, donor=0.35, tau_lag=40.0), replace(base, donor=1.0, tau_lag=24.0)
    bank, _, _, harvest = run_bank([poor, good])
    vcd = {(o.batch_index, o.minute // 1440): o.value for o in bank.offline if o.analyte == "VCD"}
    fold = [harvest[i]["xv"] * harvest[i]["vol"] / (1e6 * base.v0) for i in (0, 1)]
    assert fold[0] < 10 < fold[1]
    assert vcd[(0, 2)] < vcd[(1, 2)]  # long lag
    assert any(lb.kind == "poor_donor_material" for lb in _labels(poor, START + timedelta(days=12)))
    assert not any(lb.kind == "poor_donor_material" for lb in _labels(good, START + timedelta(days=12)))


def test_low_transduction_fails_the_car_specification():
    site = load_demo_site()
    unit = site.units["BR01"]
    plan = replace(plan_batch(site, unit, recipe_for(site, unit), 4, START, 7, 0.0), car_frac=0.05, donor=1.0)
    _, _, _, harvest = run_bank([plan])
    assert not release_results(plan, harvest[0], START)[4].passed  # CAR_PCT < 10 %
    labels = [lb for lb in _labels(plan, START + timedelta(days=12)) if lb.kind == "low_transduction"]
    assert labels and labels[0].start_ts == START + timedelta(hours=plan.transduction_h)
