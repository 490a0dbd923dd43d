"""Cleanroom twin: determinism across blocks, normal operation vs Annex 1, fault signatures and labels."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from plant.samples import SAMPLE_SCHEMA
from plant.site import ANNEX1_PARTICLE_LIMITS, load_demo_site
from plant.sim.cleanroom import SAMPLE_M3, CleanroomTwin, RoomFaultEvent
from plant.sim.faults import ROOM_FAULTS, Injection

T0 = datetime(2025, 3, 3, tzinfo=timezone.utc)  # a Monday
DAYS = 30


@pytest.fixture(scope="module")
def site():
    return load_demo_site()


@pytest.fixture(scope="module")
def normal(site):
    """30 days without faults."""
    twin = CleanroomTwin(site, 42, fault_rate_scale=0)
    ts, v = twin.block(T0, DAYS * 1440)
    return twin, ts, v


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray], sl: slice = slice(None)) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[t], b[t][sl], equal_nan=True) for t in a)


def _minute(ts: datetime) -> int:
    return int((ts - T0) / timedelta(minutes=1))


# ---------------------------------------------------------------- determinism and blocks

def test_block_shape_and_timestamps(site):
    twin = CleanroomTwin(site, 1)
    ts, v = twin.block(T0 + timedelta(hours=5), 90)
    assert ts.dtype == np.dtype("datetime64[us]") and len(ts) == 90
    assert ts[0] == np.datetime64("2025-03-03T05:00:00", "us")
    assert np.all(np.diff(ts) == np.timedelta64(60, "s"))
    assert list(v) == twin.tags == [f"{r}.{s}" for r in site.rooms for s in
                                    ("P05", "P50", "DP", "PSTAT", "TEMP", "RH", "OCC")]
    assert all(x.dtype == np.float64 and x.shape == (90,) for x in v.values())
    ts0, v0 = twin.block(T0, 0)
    assert len(ts0) == 0 and all(len(x) == 0 for x in v0.values())


def test_same_seed_same_values_whatever_the_blocks(site):
    inj = [Injection("hvac_trip", "CR-C1", T0 + timedelta(days=1, hours=23, minutes=30), 2.0),
           Injection("hepa_leak", "CR-A1", T0 - timedelta(days=2), 100.0)]  # spills into the test days

    def twin() -> CleanroomTwin:
        return CleanroomTwin(site, 7, inj, fault_rate_scale=5.0)

    ts, big = twin().block(T0, 3 * 1440)
    days = [twin().block(T0 + timedelta(days=d), 1440)[1] for d in range(3)]
    for d, v in enumerate(days):
        assert _equal(v, big, slice(d * 1440, (d + 1) * 1440)), f"day {d}"
    mid = 13 * 60 + 17
    assert _equal(twin().block(T0 + timedelta(minutes=mid), 1500)[1], big, slice(mid, mid + 1500))
    live = twin()
    for m in range(2 * 1440 - 45, 2 * 1440 + 45):  # minute by minute across midnight, through the trip
        assert _equal(live.block(T0 + timedelta(minutes=m), 1)[1], big, slice(m, m + 1))
    assert twin().faults(T0, T0 + timedelta(days=3)) == live.faults(T0, T0 + timedelta(days=3))
    # the faults are really in there
    assert (big["CR-C1.PSTAT"] == 7).sum() >= 100
    _, plain = CleanroomTwin(site, 7, fault_rate_scale=5.0).block(T0, 3 * 1440)
    assert big["CR-A1.P05"][:3000].mean() > 2 * plain["CR-A1.P05"][:3000].mean()  # the leak began 2 days earlier


def test_different_seed_differs(site):
    _, a = CleanroomTwin(site, 1).block(T0, 1440)
    _, b = CleanroomTwin(site, 2).block(T0, 1440)
    for t in a:
        if not t.endswith(".PSTAT"):
            assert not np.array_equal(a[t], b[t], equal_nan=True), t


# ---------------------------------------------------------------- normal operation

def test_particles_in_normal_operation(site, normal):
    _, _, v = normal
    for room in site.rooms.values():
        op = v[f"{room.id}.OCC"] == 1
        limits = ANNEX1_PARTICLE_LIMITS[room.grade]
        for j, size in enumerate(("P05", "P50")):
            x = v[f"{room.id}.{size}"]
            counts = x * SAMPLE_M3
            assert np.allclose(counts, np.round(counts)), "concentrations are whole counts / 0.02832 m3"
            lim_op, lim_rest = limits["in_operation"][j], limits["at_rest"][j]
            if lim_op is not None:
                assert (x[op] > lim_op).mean() < 0.001, (room.id, size)
            assert (x[~op] > lim_rest).mean() < 0.001, (room.id, size)
            if not (room.grade == "A" and size == "P50"):  # A 5.0 um is ~0 in both states
                assert x[~op].mean() < 0.5 * x[op].mean(), (room.id, size)
        assert np.all(v[f"{room.id}.P05"] >= v[f"{room.id}.P50"]), "cumulative channels"
    a50 = v["CR-A1.P50"]
    assert (a50 == 0).mean() > 0.998
    assert (v["CR-B1.P50"][v["CR-B1.OCC"] == 1] > 0).mean() > 0.5  # B in operation does see 5 um
    # in operation B/C/D sit at ~1-20 % of the limit
    for rid, j in (("CR-B1", 0), ("CR-C1", 0), ("CR-C1", 1)):
        x = v[f"{rid}.{('P05', 'P50')[j]}"][v[f"{rid}.OCC"] == 1]
        lim = ANNEX1_PARTICLE_LIMITS[site.rooms[rid].grade]["in_operation"][j]
        assert 0.01 < x.mean() / lim < 0.2


def test_pressure_trh_and_occupancy_in_normal_operation(site, normal):
    _, ts, v = normal
    minute = (ts.astype("datetime64[m]").astype(np.int64)) % 1440
    weekday = (ts.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 0 = Monday
    for room in site.rooms.values():
        dp = v[f"{room.id}.DP"]
        assert abs(dp.mean() - room.dp_setpoint_pa) < 1
        assert np.all(np.abs(dp - room.dp_setpoint_pa) < 3)
        assert np.all(v[f"{room.id}.PSTAT"] == 1)
        t, rh = v[f"{room.id}.TEMP"], v[f"{room.id}.RH"]
        assert np.array_equal(np.isnan(t), np.isnan(rh))
        assert np.isnan(t).sum() < 0.001 * len(t)  # rare: a few minutes per room-month
        assert 19 < np.nanmean(t) < 21 and np.nanstd(t) < 0.6 and np.nanmax(np.abs(np.diff(t))) < 0.5
        assert 38 < np.nanmean(rh) < 52 and np.nanstd(rh) < 5
        occ = v[f"{room.id}.OCC"]
        assert set(np.unique(occ)) == {0.0, 1.0}
        if room.grade in "AB":
            assert np.all(occ[(weekday >= 5) | (minute < 420) | (minute >= 1140)] == 0)
        else:
            assert np.all(occ[(minute < 360) | (minute >= 1320)] == 0)
        assert occ[weekday < 5].mean() > 0.15
        starts = minute[np.flatnonzero(np.diff(occ) == 1) + 1]
        assert len(starts) > DAYS and len(np.unique(starts)) > 10  # sessions with breaks, jittered starts
    assert sum(np.isnan(v[f"{r}.TEMP"]).sum() for r in site.rooms) > 0  # the transmitter sometimes drops out


def test_frame_marks_unavailable_values_bad(site, normal):
    twin, _, v = normal
    m = int(np.flatnonzero(np.isnan(v["CR-C1.TEMP"]))[0])
    start = T0 + timedelta(minutes=m - 5)
    df = twin.frame(start, 20)
    assert df.schema == SAMPLE_SCHEMA
    assert df.height == 20 * len(twin.tags)
    bad = df.filter(df["value"].is_null())
    assert bad.height >= 2 and set(bad["quality"]) == {"BAD"} and set(bad["status"]) == {"unavailable"}
    assert {"CR-C1.TEMP", "CR-C1.RH"} <= set(bad["tag"])
    good = df.filter(df["value"].is_not_null())
    assert set(good["quality"]) == {"GOOD"} and good["status"].null_count() == good.height
    row = df.filter((df["tag"] == "CR-B1.DP") & (df["ts"] == start))
    assert row["value"][0] == v["CR-B1.DP"][m - 5]


# ---------------------------------------------------------------- fault signatures (injected, vs no fault)

def _inject(site, kind, room, start, hours, days=2, **params):
    inj = Injection(kind, room, start, hours, tuple(params.items()))
    twin = CleanroomTwin(site, 42, [inj], fault_rate_scale=0)
    _, fault = twin.block(T0, days * 1440)
    _, base = CleanroomTwin(site, 42, fault_rate_scale=0).block(T0, days * 1440)
    labels = twin.faults(T0, T0 + timedelta(days=days))
    assert labels == [RoomFaultEvent(kind, room, start, start + timedelta(hours=hours), ROOM_FAULTS[kind].severity,
                                     labels[0].detail)]
    assert labels[0].detail.startswith("injected")
    for tag in fault:  # other rooms and the time before the fault are untouched
        if not tag.startswith(room + "."):
            assert np.array_equal(fault[tag], base[tag], equal_nan=True), tag
        assert np.array_equal(fault[tag][:_minute(start)], base[tag][:_minute(start)], equal_nan=True), tag
    return fault, base


def test_hvac_trip_collapses_pressure_and_raises_particles(site):
    start = T0 + timedelta(days=1, hours=10)
    f, b = _inject(site, "hvac_trip", "CR-B1", start, 1.0)
    s, e = _minute(start), _minute(start) + 60
    dp, pstat = f["CR-B1.DP"], f["CR-B1.PSTAT"]
    assert np.all(b["CR-B1.DP"][s:e] > 43)
    assert np.all(np.abs(dp[s + 10:e]) < 5), "DP collapses to ~0 within minutes"
    assert np.all(pstat[s:e] == 7) and np.all(b["CR-B1.PSTAT"][s:e + 60] == 1)
    assert np.all(np.isin(pstat[e:e + 10], (1, 2))) and np.all(pstat[e + 10:] == 1)
    assert np.all(np.abs(dp[e + 15:e + 60] - 45) < 3), "pressure recovers"
    p05, p50, b05, b50 = f["CR-B1.P05"], f["CR-B1.P50"], b["CR-B1.P05"], b["CR-B1.P50"]
    assert p05[s + 30:e].mean() > max(10 * b05[s + 30:e].mean(), 0.5 * 352_000)
    assert p50[s + 30:e].mean() > 5 * b50[s + 30:e].mean() + 100
    assert p05[s + 2:s + 5].mean() < 0.7 * p05[s + 25:s + 30].mean(), "particles rise over 10-30 min"
    assert p05[e + 45:e + 60].mean() < 2 * b05[e + 45:e + 60].mean() + 100, "recovered 15-20 min after the end"
    assert f["CR-B1.TEMP"][e - 20:e].mean() > b["CR-B1.TEMP"][e - 20:e].mean() + 0.2
    assert _equal({k: x[e + 180:] for k, x in f.items()}, {k: x[e + 180:] for k, x in b.items()})


def test_door_held_open_dips_pressure(site):
    start = T0 + timedelta(hours=11, minutes=40)
    f, b = _inject(site, "door_held_open", "CR-C1", start, 0.05)  # 3 minutes
    s = _minute(start)
    assert np.all(f["CR-C1.DP"][s:s + 3] < 0.6 * 30) and np.all(b["CR-C1.DP"][s:s + 3] > 28)
    assert np.all(f["CR-C1.PSTAT"][s:s + 3] == 2)
    rest = np.r_[0:s, s + 3:2 * 1440]
    assert np.array_equal(f["CR-C1.DP"][rest], b["CR-C1.DP"][rest]) and np.all(f["CR-C1.PSTAT"][rest] == 1)
    for tag in ("P05", "P50", "TEMP", "RH", "OCC"):
        assert np.array_equal(f[f"CR-C1.{tag}"], b[f"CR-C1.{tag}"], equal_nan=True)


def test_hepa_leak_raises_05_um_persistently(site):
    start = T0 + timedelta(hours=5)
    f, b = _inject(site, "hepa_leak", "CR-A1", start, 48.0, days=3)
    s, e = _minute(start), _minute(start) + 48 * 60
    p05, b05 = f["CR-A1.P05"], b["CR-A1.P05"]
    assert np.all(p05 >= b05) and np.all(f["CR-A1.P50"] >= b["CR-A1.P50"]), "a leak only adds particles"
    hourly = p05[s + 60:e].reshape(-1, 60).mean(axis=1) / b05[s + 60:e].reshape(-1, 60).mean(axis=1)
    assert np.median(hourly) > 3 and (hourly > 2).mean() > 0.9
    assert p05[s + 60:e].mean() < 3520, "a local rise, not a room out of class"
    assert np.array_equal(f["CR-A1.DP"], b["CR-A1.DP"]) and np.all(f["CR-A1.PSTAT"] == 1)
    assert np.array_equal(p05[e + 180:], b05[e + 180:])


@pytest.mark.parametrize("room, limit", [("CR-A1", 29), ("CR-B1", 2930)])
def test_personnel_shedding_breaches_5um_action_limit(site, normal, room, limit):
    occ = normal[2][f"{room}.OCC"]
    s = next(m for m in range(1440, len(occ) - 1440) if occ[m - 30:m + 60].all())  # in operation
    start = T0 + timedelta(minutes=s)
    f, b = _inject(site, "personnel_shedding", room, start, 0.5, days=s // 1440 + 2)
    p50, b50 = f[f"{room}.P50"][s + 1:s + 30], b[f"{room}.P50"][s + 1:s + 30]
    assert (b50 > limit).sum() == 0
    above = p50 > limit
    runs = np.diff(np.flatnonzero(np.r_[True, ~above, True])) - 1
    assert above.mean() > 0.75 and runs.max() >= 5, "consecutive 5.0 um counts above the action limit"
    assert np.all(f[f"{room}.OCC"] == b[f"{room}.OCC"])


def test_injected_shedding_at_rest_puts_the_room_in_operation(site):
    start = T0 + timedelta(days=1, hours=2)
    f, b = _inject(site, "personnel_shedding", "CR-B1", start, 0.25)
    s = _minute(start)
    assert np.all(b["CR-B1.OCC"][s - 10:s + 25] == 0)
    assert np.all(f["CR-B1.OCC"][s:s + 15] == 1) and np.all(f["CR-B1.OCC"][s + 15:s + 25] == 0)
    assert np.all(f["CR-B1.P50"][s + 1:s + 15] > 2930)


# ---------------------------------------------------------------- random faults

def test_random_faults_at_their_rates(site):
    days = 1500
    twin = CleanroomTwin(site, 3)
    end = T0 + timedelta(days=days)
    events = [e for e in twin.faults(T0, end) if T0 <= e.start < end]
    room_days = days * len(site.rooms)
    for kind, fk in ROOM_FAULTS.items():
        ev = [e for e in events if e.kind == kind]
        expected = fk.rate * room_days
        if kind == "personnel_shedding":  # only on days with operation (~65-98 % of days)
            assert 0.5 * expected < len(ev) < expected, (kind, len(ev), expected)
        else:
            assert 0.6 * expected < len(ev) < 1.4 * expected, (kind, len(ev), expected)
        hours = np.array([(e.end - e.start) / timedelta(hours=1) for e in ev])
        lo = 5 / 60 if kind == "personnel_shedding" else fk.min_h  # clipped when the operators leave
        assert np.all((hours >= lo - 1e-9) & (hours <= fk.max_h + 1e-9)), kind
        assert {e.severity for e in ev} == {fk.severity}
        if expected / len(site.rooms) > 10:
            assert {e.room for e in ev} == set(site.rooms)
    assert CleanroomTwin(site, 3, fault_rate_scale=0).faults(T0, end) == []


def test_random_fault_labels_match_telemetry(site):
    days = 60
    twin = CleanroomTwin(site, 5, fault_rate_scale=4.0)
    ts, v = twin.block(T0, days * 1440)
    events = twin.faults(T0, T0 + timedelta(days=days))
    kinds = {e.kind for e in events}
    assert {"hvac_trip", "door_held_open", "personnel_shedding"} <= kinds
    explained = {r: np.zeros(days * 1440, bool) for r in site.rooms}
    for e in events:
        s, t = max(np.ceil((e.start - T0) / timedelta(minutes=1)), 0), (e.end - T0) / timedelta(minutes=1)
        inside = slice(int(s), int(np.ceil(t)))
        pstat = v[f"{e.room}.PSTAT"][inside]
        if e.kind == "hvac_trip":
            assert np.all(pstat == 7), e
            explained[e.room][int(s):int(np.ceil(t)) + 15] = True
        elif e.kind == "door_held_open":
            assert np.all(np.isin(pstat, (2, 7))), e
            explained[e.room][inside] = True
        elif e.kind == "personnel_shedding":
            assert np.all(v[f"{e.room}.OCC"][inside] == 1), e
    for r in site.rooms:
        assert np.all(v[f"{r}.PSTAT"][~explained[r]] == 1), r


# ---------------------------------------------------------------- validation

def test_rejects_bad_arguments(site):
    with pytest.raises(ValueError, match="whole minute"):
        CleanroomTwin(site, 1).block(T0 + timedelta(seconds=30), 10)
    with pytest.raises(ValueError, match="timezone-aware"):
        CleanroomTwin(site, 1).block(datetime(2025, 3, 3), 10)
    with pytest.raises(ValueError, match="unknown room"):
        CleanroomTwin(site, 1, [Injection("hvac_trip", "CR-X9", T0, 1.0)])
    with pytest.raises(ValueError, match="unknown params"):
        CleanroomTwin(site, 1, [Injection("hepa_leak", "CR-A1", T0, 1.0, (("speed", 2.0),))])
    with pytest.raises(ValueError, match="fault_rate_scale"):
        CleanroomTwin(site, 1, fault_rate_scale=-1)
    unit_fault = Injection("bag_leak", next(iter(site.units)), T0, 1.0)  # for the bioreactor twin: ignored
    assert CleanroomTwin(site, 1, [unit_fault], fault_rate_scale=0).faults(T0, T0 + timedelta(days=1)) == []
