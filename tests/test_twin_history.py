"""Fast and live modes of the twin: determinism, realistic populations, records that find telemetry."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from plant.historian import Historian
from plant.records import Records
from plant.sim.faults import Injection
from plant.sim.history import DEFAULT_START, _labels, generate_history, run_bank, schedule
from plant.sim.live import LiveTwin
from plant.sim.release import release_results
from plant.site import load_demo_site


def _digest(folder) -> str:
    """A hash of everything a history run wrote, independent of file names and write order."""
    h = hashlib.sha256()
    frame = Historian(folder / "historian").read().sort("tag", "ts")
    h.update(frame.write_ipc(None).getvalue())
    rec = Records.open(folder / "records.db")
    for table in (rec.batches(), rec.setpoints(), rec.covariates(), rec.offline_results(), rec.release_results(),
                  rec.fault_labels()):
        h.update(table.sort(table.columns).write_ipc(None).getvalue())
    rec.close()
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_history(tmp_path_factory):
    site = load_demo_site()
    inj = Injection("co2_supply_failure", "BR02", DEFAULT_START + timedelta(days=3), 4.0)
    folders = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = tmp_path_factory.mktemp(name)
        generate_history(site, out, 10, seed, injections=[inj], workers=1)  # the CLI test covers the pool
        folders.append(out)
    return site, folders


def test_same_seed_same_history_other_seed_other_history(small_history):
    _, (a, b, c) = small_history
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_batch_telemetry_is_found_through_its_record(small_history):
    site, (a, _, _) = small_history
    rec = Records.open(a / "records.db")
    batch = rec.batches().row(0, named=True)
    tags = [t.name for t in site.unit_tags(batch["unit"])]
    frame = Historian(a / "historian").read(tags, batch["start_ts"], batch["end_ts"] + timedelta(minutes=1))
    minutes = int((batch["end_ts"] - batch["start_ts"]).total_seconds() // 60)
    per_tag = dict(frame.group_by("tag").len().iter_rows())
    assert per_tag[f"{batch['unit']}.TEMP"] == minutes
    assert per_tag[f"{batch['unit']}.TEMP_SP"] >= 1  # setpoints are logged when they change
    temp = frame.filter(pl.col("tag") == f"{batch['unit']}.TEMP")["value"]
    assert 36.0 < temp.mean() < 38.5
    sp = rec.setpoints_in_force(batch["batch_id"], batch["start_ts"])
    assert set(sp) >= {"TEMP_SP", "PH_SP", "DO_SP", "AGIT_SP", "PERF_SP"}
    assert rec.offline_results(batch["batch_id"], "VCD").height >= 10
    assert rec.release_results(batch["batch_id"]).height == 8
    assert rec.covariates(batch["batch_id"]).height >= 5


def test_injected_fault_is_labelled_and_visible(small_history):
    _, (a, _, _) = small_history
    rec = Records.open(a / "records.db")
    labels = rec.fault_labels(unit="BR02")
    co2 = labels.filter(pl.col("kind") == "co2_supply_failure")
    assert co2.height == 1
    start = co2["start_ts"][0]
    data = Historian(a / "historian").read(["BR02.CO2", "BR02.PH"], start + timedelta(minutes=30),
                                           start + timedelta(hours=4))
    assert data.filter(pl.col("tag") == "BR02.CO2")["value"].max() < 0.2
    assert data.filter(pl.col("tag") == "BR02.PH")["value"].max() > 7.6
    assert rec.fault_labels(room="CR-C1").height > 0  # the cleanrooms run and fail too


def _population(plans):
    _, _, _, harvest = run_bank(plans)
    out = []
    for b, p in enumerate(plans):
        end = p.start + timedelta(hours=p.harvest_h)
        results = release_results(p, harvest[b], end)
        out.append((results[0].value, all(r.passed for r in results), [lb.kind for lb in _labels(p, end)]))
    return out


def test_500_batches_span_published_yields_and_failure_rates():
    plans = schedule(load_demo_site(), 500, 1)
    rows = [r for i in range(0, 500, 100) for r in _population(plans[i:i + 100])]
    tvc = np.array([r[0] for r in rows])
    failed = sum(1 for r in rows if not r[1])
    assert 0.03 <= failed / 500 <= 0.10
    assert np.percentile(tvc, 5) < 2e9 and np.percentile(tvc, 99) > 1.5e10  # roughly 1e9 .. 3e10
    assert 1e9 < np.median(tvc) < 1e10 and tvc.max() < 4e10
    labels = Counter(k for r in rows for k in r[2])
    assert labels["poor_donor_material"] > 5 and labels["ph_probe_drift"] > 30
    doe = sum(1 for p in plans if p.batch_kind == "process_characterisation")
    assert 0.07 < doe / 500 < 0.18


def test_live_mode_reproduces_fast_mode_minute_by_minute():
    site = load_demo_site()
    start = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)
    twin = LiveTwin(site, 11, start, fault_rate_scale=0.0)
    frames = [twin.step() for _ in range(6 * 60)]
    live = pl.concat(frames).filter(pl.col("tag") == "BR01.PH").sort("ts")
    plan = twin.started[0]
    assert plan.unit == "BR01"
    _, meas, _, _ = run_bank([plan])
    assert np.allclose(live["value"].to_numpy(), meas[: live.height, 0, 1])
    assert {s.unit: s.phase for s in twin.status()}["BR01"] == "activation"
    rooms = pl.concat(frames).filter(pl.col("tag") == "CR-A1.P05")
    assert rooms.height == 6 * 60


def test_live_setpoint_change_is_applied_and_logged():
    site = load_demo_site()
    twin = LiveTwin(site, 3, datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc), fault_rate_scale=0.0)
    for _ in range(30):
        twin.step()
    twin.set_setpoint("BR01", "TEMP_SP", 36.5)
    frames = [twin.step() for _ in range(120)]
    data = pl.concat(frames)
    assert data.filter(pl.col("tag") == "BR01.TEMP_SP")["value"].to_list() == [36.5]
    assert data.filter(pl.col("tag") == "BR01.TEMP")["value"].tail(10).mean() == pytest.approx(36.5, abs=0.1)
    with pytest.raises(ValueError, match="not a controllable"):
        twin.set_setpoint("BR01", "TEMP", 30.0)
    with pytest.raises(ValueError, match="engineering range"):
        twin.set_setpoint("BR01", "TEMP_SP", 99.0)
