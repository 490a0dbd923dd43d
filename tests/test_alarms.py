"""Alarm engine: ISA-18.2 states, shelving expiry, designed suppression, chattering, stale data, ROC,
Annex 1 at rest / in operation, predictive hook, audit of operator actions, KPIs. Synthetic frames only.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from argon2 import PasswordHasher

from plant.alarms import (
    AlarmActionError, AlarmEngine, AlarmJournal, AlarmPoint, AlarmSettings, AlarmState, Condition, EventKind,
    Level, Mode, Priority, Risk, build_points,
)
from plant.alarms.kpi import compute_kpis
from plant.audit import AuditTrail
from plant.identity import LocalPasswords
from plant.records import Records
from plant.roles import AccessDenied
from plant.samples import SAMPLE_SCHEMA
from plant.site import SiteError, demo_site_text, load_demo_site, parse_site
from plant.users import Users

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)
SITE = load_demo_site()
FAST = LocalPasswords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))


def frame(tag: str, values: list[float | None], start: datetime = T0, step_s: float = 60.0,
          quality: str = "GOOD") -> pl.DataFrame:
    n = len(values)
    return pl.DataFrame({
        "ts": [start + timedelta(seconds=step_s * i) for i in range(n)], "tag": [tag] * n,
        "value": values, "quality": [quality] * n, "status": [None] * n, "server_ts": [None] * n,
        "received_ts": [None] * n,
    }, schema=SAMPLE_SCHEMA)


def point(deadband: float = 0.0, on: float = 0.0, off: float = 0.0, limit: float = 39.0) -> AlarmPoint:
    return AlarmPoint("BR01.TEMP:HH", "BR01.TEMP", "BR01", Condition.HI, Level.ACTION, limit, Priority.HIGH,
                      deadband, on, off)


def states(engine: AlarmEngine, alarm_id: str = "BR01.TEMP:HH") -> AlarmState:
    return engine.state(alarm_id)


def kinds(events, alarm_id: str) -> list[tuple[str, str]]:
    return [(e.event.value, e.state.value) for e in events if e.alarm_id == alarm_id]


# ---------------------------------------------------------------- ISA-18.2 state transitions


def test_every_state_transition():
    eng = AlarmEngine(SITE, points=[point()])
    assert states(eng) == AlarmState.NORMAL  # A
    ev = eng.process(frame("BR01.TEMP", [37.0, 39.5]))
    assert kinds(ev, "BR01.TEMP:HH") == [("ACTIVE", "UNACK")] and ev[0].annunciated  # A -> B
    assert ev[0].ts == T0 + timedelta(minutes=1) and ev[0].value == 39.5
    eng.ack("BR01.TEMP:HH", "op", "seen, heater checked")
    assert states(eng) == AlarmState.ACKED  # B -> C
    ev = eng.process(frame("BR01.TEMP", [37.0], T0 + timedelta(minutes=2)))
    assert kinds(ev, "BR01.TEMP:HH") == [("CLEAR", "NORMAL")]  # C -> A
    eng.process(frame("BR01.TEMP", [39.6], T0 + timedelta(minutes=3)))  # A -> B
    ev = eng.process(frame("BR01.TEMP", [37.0], T0 + timedelta(minutes=4)))
    assert kinds(ev, "BR01.TEMP:HH") == [("CLEAR", "RTN_UNACK")]  # B -> D
    ev = eng.process(frame("BR01.TEMP", [39.7], T0 + timedelta(minutes=5)))
    assert kinds(ev, "BR01.TEMP:HH") == [("ACTIVE", "UNACK")]  # D -> B (re-alarm)
    eng.process(frame("BR01.TEMP", [37.0], T0 + timedelta(minutes=6)))
    assert eng.ack("BR01.TEMP:HH", "op", "returned by itself").state == AlarmState.NORMAL  # D -> A
    with pytest.raises(AlarmActionError, match="BR01.TEMP:HH is NORMAL: nothing to acknowledge"):
        eng.ack("BR01.TEMP:HH", "op", "again")
    with pytest.raises(ValueError, match="a reason is required"):
        eng.ack("BR01.TEMP:HH", "op", " ")
    with pytest.raises(KeyError, match="BR01.NOPE:HH"):
        eng.ack("BR01.NOPE:HH", "op", "x")


def test_bad_data_neither_raises_nor_clears():
    eng = AlarmEngine(SITE, points=[point()])
    eng.process(frame("BR01.TEMP", [39.5]))
    ev = eng.process(frame("BR01.TEMP", [None, None], T0 + timedelta(minutes=1), quality="BAD"))
    assert ev == [] and states(eng) == AlarmState.UNACK


def test_shelving_hides_tracks_and_expires():
    eng = AlarmEngine(SITE, points=[point()])
    eng.process(frame("BR01.TEMP", [39.5]))
    ev = eng.shelve("BR01.TEMP:HH", "eng", "probe being replaced", 600)
    assert ev.state == AlarmState.SHELVED and ev.details()["until"].startswith("2025-03-03T08:10")  # B -> E
    # changes while shelved are journaled but not annunciated
    ev = eng.process(frame("BR01.TEMP", [37.0, 37.0, 39.8], T0 + timedelta(minutes=1)))
    assert kinds(ev, "BR01.TEMP:HH") == [("CLEAR", "SHELVED"), ("ACTIVE", "SHELVED")]
    assert not any(e.annunciated for e in ev)
    # the expiry comes from data time: the sample at 08:12 is evaluated after the shelve ran out at 08:10
    ev = eng.process(frame("BR01.TEMP", [39.9], T0 + timedelta(minutes=12)))
    assert kinds(ev, "BR01.TEMP:HH") == [("SHELVE_EXPIRED", "UNACK")]  # E -> B: still active, annunciated
    assert ev[0].ts == T0 + timedelta(minutes=10) and ev[0].annunciated
    # expiry with the condition gone returns to normal; tick() expires without data
    eng.shelve("BR01.TEMP:HH", "eng", "nuisance", 300)
    eng.process(frame("BR01.TEMP", [37.0], T0 + timedelta(minutes=13)))
    ev = eng.tick(T0 + timedelta(minutes=30))
    assert [(e.event, e.state) for e in ev if e.alarm_id == "BR01.TEMP:HH"] == [
        (EventKind.SHELVE_EXPIRED, AlarmState.NORMAL)]
    eng.shelve("BR01.TEMP:HH", "eng", "again", 300)
    assert eng.unshelve("BR01.TEMP:HH", "eng", "done").state == AlarmState.NORMAL
    with pytest.raises(ValueError, match="duration_s"):
        eng.shelve("BR01.TEMP:HH", "eng", "too long", 13 * 3600)


def test_designed_suppression_follows_room_state():
    """CR-B1 P05: the in-operation limit applies in operation, the at-rest one at rest (Annex 1)."""
    eng = AlarmEngine(SITE)
    occ = [1.0] * 5 + [0.0] * 5
    p05 = [9000.0] * 10  # fine in operation (limit 352 000), far above the at-rest limit 3 520
    ev = eng.process(pl.concat([frame("CR-B1.OCC", occ), frame("CR-B1.P05", p05)]))
    rest = [e for e in ev if e.alarm_id == "CR-B1.P05:HH_REST"]
    # while in operation the at-rest alarm is suppressed (not journaled); at rest it is annunciated
    assert [(e.event.value, e.state.value, e.ts) for e in rest] == [
        ("UNSUPPRESS", "UNACK", T0 + timedelta(minutes=5))]
    assert eng.state("CR-B1.P05:HH") == AlarmState.SUPPRESSED
    assert eng.state("CR-B1.P05:HH_REST") == AlarmState.UNACK
    # back in operation: the standing at-rest alarm is suppressed by design (journaled: it was not normal)
    ev = eng.process(pl.concat([frame("CR-B1.OCC", [1.0], T0 + timedelta(minutes=10)),
                                frame("CR-B1.P05", [9000.0], T0 + timedelta(minutes=10))]))
    assert [(e.event.value, e.state.value) for e in ev if e.alarm_id == "CR-B1.P05:HH_REST"] == [
        ("SUPPRESS", "SUPPRESSED")]
    with pytest.raises(AlarmActionError, match="suppressed by design"):
        eng.shelve("CR-B1.P05:HH_REST", "eng", "x", 60)


def test_unit_points_suppressed_between_batches():
    eng = AlarmEngine(SITE, unit_windows={"BR01": [(T0, T0 + timedelta(minutes=10))]})
    ev = eng.process(frame("BR01.TEMP", [37.0] * 10))
    ev += eng.tick(T0 + timedelta(hours=2))  # the batch ended: no data is expected, no stale alarm
    assert [e for e in ev if e.alarm_id == "BR01.TEMP:STALE"] == []
    assert eng.state("BR01.TEMP:STALE") == AlarmState.SUPPRESSED


# ---------------------------------------------------------------- chattering: deadband and delays


def noisy(n: int, seed: int = 3) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(39.0 + 0.15 * rng.standard_normal(n))  # a value hovering on the limit


def test_deadband_and_delays_suppress_chattering():
    values = noisy(600)
    raw = AlarmEngine(SITE, points=[point()])
    ev_raw = raw.process(frame("BR01.TEMP", values, step_s=1.0))
    tuned = AlarmEngine(SITE, points=[point(deadband=0.5, on=5.0, off=60.0)])
    ev_tuned = tuned.process(frame("BR01.TEMP", values, step_s=1.0))
    n_raw = sum(e.annunciated for e in ev_raw)
    n_tuned = sum(e.annunciated for e in ev_tuned)
    assert n_raw > 100 and n_tuned == 1, (n_raw, n_tuned)
    journal = pl.DataFrame([(i, e.ts, e.alarm_id, e.tag, e.owner, e.condition, e.level, e.priority, e.event.value,
                             e.state.value, e.annunciated, e.value, e.limit, e.actor, e.reason, e.detail)
                            for i, e in enumerate(ev_raw)], orient="row",
                           schema=["id", "ts", "alarm_id", "tag", "owner", "condition", "level", "priority",
                                   "event", "state", "annunciated", "value", "limit", "actor", "reason", "detail"])
    k = compute_kpis(journal)
    assert k.chattering == ("BR01.TEMP:HH",) and k.floods and k.pct_time_in_flood == 100.0


def test_on_delay_needs_a_sustained_condition():
    eng = AlarmEngine(SITE, points=[point(on=120.0)])
    assert eng.process(frame("BR01.TEMP", [39.5, 39.5, 37.0, 39.5, 39.5])) == []  # two minutes is not enough
    ev = eng.process(frame("BR01.TEMP", [39.5], T0 + timedelta(minutes=5)))
    assert kinds(ev, "BR01.TEMP:HH") == [("ACTIVE", "UNACK")] and ev[0].ts == T0 + timedelta(minutes=5)


def test_frame_boundaries_do_not_change_the_result():
    values = noisy(400, seed=11)
    whole = AlarmEngine(SITE, points=[point(deadband=0.05, on=2.0, off=5.0)])
    a = [(e.ts, e.event) for e in whole.process(frame("BR01.TEMP", values, step_s=1.0))]
    split = AlarmEngine(SITE, points=[point(deadband=0.05, on=2.0, off=5.0)])
    b = []
    for i in range(0, 400, 37):
        b += [(e.ts, e.event) for e in split.process(frame("BR01.TEMP", values[i:i + 37], T0 + timedelta(seconds=i),
                                                            step_s=1.0))]
    assert a == b and len(a) > 2


# ---------------------------------------------------------------- stale data, rate of change, Annex 1, prediction


def test_stale_data_from_gaps_bad_quality_and_silence():
    eng = AlarmEngine(SITE)  # default stale_s 300
    ev = eng.process(frame("BR01.PH", [7.1, 7.1]))
    ev += eng.process(frame("BR01.PH", [7.1], T0 + timedelta(minutes=20)))  # a 19-minute gap
    got = [(e.event.value, e.ts) for e in ev if e.alarm_id == "BR01.PH:STALE"]
    assert got == [("ACTIVE", T0 + timedelta(minutes=6)), ("CLEAR", T0 + timedelta(minutes=20))]
    ev = eng.process(frame("BR01.PH", [None] * 8, T0 + timedelta(minutes=21), quality="BAD"))
    assert [(e.event.value, e.ts) for e in ev if e.alarm_id == "BR01.PH:STALE"] == [
        ("ACTIVE", T0 + timedelta(minutes=25))]
    eng2 = AlarmEngine(SITE)
    eng2.process(frame("BR01.PH", [7.1]))
    assert [e.event.value for e in eng2.tick(T0 + timedelta(minutes=10)) if e.alarm_id == "BR01.PH:STALE"] == [
        "ACTIVE"]


def test_rate_of_change_on_room_pressure():
    eng = AlarmEngine(SITE)
    dp = [45.0, 45.1, 44.9, 20.0, 19.0, 18.8, 45.0, 45.0, 45.0, 45.0]  # a door opened for 3 minutes
    ev = eng.process(frame("CR-B1.DP", dp))
    roc = [(e.event.value, e.ts) for e in ev if e.alarm_id == "CR-B1.DP:ROC"]
    assert roc[0] == ("ACTIVE", T0 + timedelta(minutes=3))
    # the limit alarms wait on_delay_s = 180 (site file): the dip lasted 3 samples, so no LL alarm
    assert not [e for e in ev if e.alarm_id == "CR-B1.DP:LL"]


def test_grade_a_needs_consecutive_5um_counts():
    eng = AlarmEngine(SITE)
    single = [0.0, 35.31, 0.0, 0.0, 0.0]
    assert not [e for e in eng.process(frame("CR-A1.P50", single)) if e.alarm_id == "CR-A1.P50:HH"]
    ev = eng.process(frame("CR-A1.P50", [70.6, 105.9, 35.3], T0 + timedelta(minutes=5)))
    hh = [e for e in ev if e.alarm_id == "CR-A1.P50:HH"]
    assert [(e.event.value, e.priority, e.details()["annex1"]) for e in hh] == [("ACTIVE", "critical", True)]


def test_predictive_alarm_from_the_risk_hook():
    calls = []

    def risk(at, units):
        calls.append((at, tuple(units)))
        return {"BR02": Risk(0.92, (("do_slope_6h", 0.31), ("lactate", 0.12))), "BR03": 0.1}

    eng = AlarmEngine(SITE, risk=risk, settings=AlarmSettings(pred_every_s=600))
    ev = eng.process(frame("BR02.TEMP", [37.0] * 3))
    pred = [e for e in ev if e.condition == "PRED"]
    assert [(e.alarm_id, e.state.value) for e in pred] == [("BR02.RISK:PRED", "UNACK")]
    assert pred[0].details()["drivers"][0] == ["do_slope_6h", 0.31] and pred[0].details()["risk"] == 0.92
    eng.process(frame("BR02.TEMP", [37.0], T0 + timedelta(minutes=5)))
    assert len(calls) == 1  # asked again only every pred_every_s of data time


# ---------------------------------------------------------------- audit, permissions, journal


def test_operator_actions_are_audited_and_permission_checked(tmp_path):
    records = Records.open(tmp_path / "records.db")
    audit = AuditTrail(records)
    users = Users(records, audit, identity=FAST)
    users.init_admin("root", "Ada Admin", "admin-pass-9876")
    users.create("root", "olga", "Olga Operator", "operator", "operate-pass-1234")
    users.create("root", "ed", "Ed Engineer", "engineer", "engine-pass-1234")
    journal = AlarmJournal(records)
    eng = AlarmEngine(SITE, points=[point()], journal=journal, audit=audit, users=users)
    eng.process(frame("BR01.TEMP", [39.5]))
    eng.ack("BR01.TEMP:HH", "olga", "heater alarm seen")
    with pytest.raises(AccessDenied, match="alarm.shelve"):
        eng.shelve("BR01.TEMP:HH", "olga", "nuisance", 600)
    eng.shelve("BR01.TEMP:HH", "ed", "probe swap, work order 42", 600)
    trail = audit.entries(entity="alarm", entity_id="BR01.TEMP:HH")
    assert trail.select("actor", "action", "reason").rows() == [
        ("olga", "alarm.ack", "heater alarm seen"), ("ed", "alarm.shelve", "probe swap, work order 42")]
    assert '"state":"UNACK"' in trail["old"][0] and '"state":"ACKED"' in trail["new"][0]
    j = journal.read()
    assert j.select("event", "state", "actor").rows() == [("ACTIVE", "UNACK", "system"), ("ACK", "ACKED", "olga"),
                                                          ("SHELVE", "SHELVED", "ed")]
    # restart: the journal restores the alarm's state
    again = AlarmEngine(SITE, points=[point()])
    again.restore(j)
    assert again.state("BR01.TEMP:HH") == AlarmState.SHELVED
    assert audit.verify().ok


# ---------------------------------------------------------------- configuration


def test_demo_points_and_site_alarm_keys():
    pts = {p.id: p for p in build_points(SITE)}
    assert pts["CR-A1.P50:HH"].limit == 29 and pts["CR-A1.P50:HH"].mode == Mode.ALWAYS
    assert pts["CR-B1.P50:HH_REST"].limit == 29 and pts["CR-B1.P50:HH"].limit == 2930
    assert pts["CR-C1.P05:HH_REST"].limit == 352_000 and pts["CR-C1.P05:HH_REST"].mode == Mode.AT_REST
    assert pts["CR-D1.P50:HH_REST"].limit == 29_300 and "CR-D1.P50:HH" not in pts  # D: not predetermined
    assert pts["CR-B1.DP:LL"].on_delay_s == 180 and pts["CR-B1.DP:ROC"].on_delay_s == 0
    assert pts["BR01.TEMP:HH"].priority == Priority.HIGH and pts["BR01.TEMP:H"].priority == Priority.MEDIUM
    text = demo_site_text().replace('alert_high = 38.3\naction_low = 35.0\naction_high = 39.0\n',
                                    'alert_high = 38.3\naction_low = 35.0\naction_high = 39.0\npriority = "critical"\n'
                                    'deadband = 0.05\noff_delay_s = 30\n', 1)
    custom = {p.id: p for p in build_points(parse_site(text))}
    assert custom["BR01.TEMP:HH"].priority == Priority.CRITICAL and custom["BR01.TEMP:H"].priority == Priority.HIGH
    assert custom["BR01.TEMP:HH"].deadband == 0.05 and custom["BR01.TEMP:HH"].off_delay_s == 30


@pytest.mark.parametrize("extra, key, msg", [
    ('priority = "urgent"', "priority", "Input should be"),
    ("deadband = 60.0", "deadband", "not below the eng_range span"),
    ("on_delay_s = -1", "on_delay_s", "greater than or equal to 0"),
])
def test_site_alarm_keys_are_validated(extra, key, msg):
    text = demo_site_text().replace('alert_high = 38.3\n', f'alert_high = 38.3\n{extra}\n', 1)
    with pytest.raises(SiteError) as info:
        parse_site(text, "bad.toml")
    assert f"unit_types[0].tags[0].{key}" in str(info.value) and msg in str(info.value)
    weight = demo_site_text().replace('name = "WEIGHT"\n', 'name = "WEIGHT"\ndeadband = 0.1\n', 1)
    with pytest.raises(SiteError, match="deadband = 0.1 needs an alarm on tag WEIGHT"):
        parse_site(weight, "bad.toml")
