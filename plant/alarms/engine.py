"""The alarm engine: sample frames in, ISA-18.2 alarm events out (journaled, audited, dispatched)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from plant.alarms.evaluate import CondChanges, Evaluator
from plant.alarms.journal import AlarmEvent, AlarmJournal, AlarmState, EventKind
from plant.alarms.points import (
    AlarmPoint, AlarmSettings, Condition, Level, Mode, Priority, build_points,
)
from plant.alarms.states import AlarmStatus
from plant.site import Site

if TYPE_CHECKING:
    from plant.audit import AuditTrail
    from plant.users import Users

log = logging.getLogger(__name__)
UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RISK_TAG = "RISK"  # predictive alarms live on the virtual tag <unit>.RISK


@dataclass(frozen=True, slots=True)
class Risk:
    """A deviation model's output for one unit: probability 0-1 and its main drivers."""

    risk: float
    drivers: tuple[tuple[str, float], ...] = ()  # (feature, contribution), largest first


# at (data time, units running a batch) -> risk per unit; the model itself comes from models/
RiskHook = Callable[[datetime, Sequence[str]], Mapping[str, "float | Risk"]]
Listener = Callable[[AlarmEvent], None]
Window = tuple[datetime, datetime | None]


def _us(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError(f"alarm engine times must be timezone-aware UTC, got naive {dt!r}")
    return (dt - EPOCH) // timedelta(microseconds=1)


def _dt(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


class AlarmEngine:
    """Evaluates every alarm point of a site on sample frames (SAMPLE_SCHEMA), in data time order."""

    def __init__(self, site: Site, *, settings: AlarmSettings | None = None, points: Sequence[AlarmPoint] | None = None,
                 journal: AlarmJournal | None = None, audit: AuditTrail | None = None, users: Users | None = None,
                 risk: RiskHook | None = None, unit_windows: Mapping[str, Sequence[Window]] | None = None,
                 listeners: Iterable[Listener] = ()) -> None:
        self.site = site
        self.cfg = settings or AlarmSettings()
        pts = list(points) if points is not None else build_points(site, self.cfg)
        if risk is not None:
            pts += [AlarmPoint(f"{u}.{RISK_TAG}:PRED", f"{u}.{RISK_TAG}", u, Condition.PRED, Level.ALERT,
                               self.cfg.pred_limit, Priority.MEDIUM, self.cfg.pred_deadband, 0.0,
                               self.cfg.pred_off_delay_s, Mode.OPERATING, description="predicted deviation risk")
                    for u in site.units]
        ids = [p.id for p in pts]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"alarm points: duplicate ids {dup}")
        self.points = pts
        self.index = {p.id: i for i, p in enumerate(pts)}
        self.status = [AlarmStatus() for _ in pts]
        self._eval = Evaluator(pts, self.cfg)
        self.journal, self.audit, self.users = journal, audit, users
        self.risk = risk
        self.listeners = list(listeners)
        self._state_tags = {f"{r}.{self.cfg.state_tag}": r for r in site.rooms}
        self._tags = sorted({p.tag for p in pts} | set(self._state_tags))
        self._by_owner: dict[str, list[int]] = {}
        for i, p in enumerate(pts):
            if p.mode != Mode.ALWAYS:
                self._by_owner.setdefault(p.owner, []).append(i)
        self._owner_state: dict[str, bool] = {}  # True: operating; unknown owners keep points enabled
        self._windows = {u: sorted((_us(a), _us(b) if b else None) for a, b in w)
                         for u, w in (unit_windows or {}).items()}
        self._watermark: int | None = None
        self._last_pred: int | None = None
        self.drivers: dict[str, tuple[float, tuple[tuple[str, float], ...]]] = {}
        self._shelved: set[int] = set()  # indices of shelved points, for cheap expiry checks
        self.samples = 0

    # ---------------------------------------------------------------- data in
    @property
    def now(self) -> datetime | None:
        """Data time of the newest sample processed (the engine's clock)."""
        return None if self._watermark is None else _dt(self._watermark)

    def process(self, frame: pl.DataFrame) -> list[AlarmEvent]:
        """Evaluate a frame of samples; returns (and journals, dispatches) the alarm events it caused."""
        f = frame.lazy().filter(pl.col("tag").is_in(self._tags)).select(
            "tag", ts=pl.col("ts").dt.epoch("us"), value=pl.col("value"),
            usable=((pl.col("quality") == "GOOD") | (pl.col("quality") == "UNCERTAIN"))
            & pl.col("value").is_not_null() & pl.col("value").is_not_nan()).collect()
        self.samples += frame.height
        if f.height == 0:
            return []
        wm = int(f["ts"].max())  # type: ignore[arg-type]
        first = self._watermark is None
        lo = int(f["ts"].min()) - 1 if first else self._watermark  # type: ignore[arg-type]
        self._watermark = max(wm, self._watermark or wm)
        states = self._room_states(f) + self._unit_states(lo, self._watermark, first)
        f = self._predict(f)
        changes = self._eval.evaluate(f.drop_nulls("ts"), self._watermark)
        return self._apply(states, changes)

    def tick(self, now: datetime) -> list[AlarmEvent]:
        """Advance the clock without data: shelving expiry and stale data (for live use when quiet)."""
        t = _us(now)
        if self._watermark is not None and t <= self._watermark:
            return []
        lo = self._watermark if self._watermark is not None else t - 1
        self._watermark = t
        empty = pl.DataFrame(schema={"tag": pl.String(), "ts": pl.Int64(), "value": pl.Float64(),
                                     "usable": pl.Boolean()})
        return self._apply(self._unit_states(lo, t, False), self._eval.evaluate(empty, t))

    def _room_states(self, f: pl.DataFrame) -> list[tuple[int, str, bool]]:
        occ = f.filter(pl.col("tag").is_in(list(self._state_tags)) & pl.col("usable")).sort("tag", "ts")
        out = []
        for tag, ts, v in occ.select("tag", "ts", "value").iter_rows() if occ.height < 64 else self._occ_changes(occ):
            room = self._state_tags[tag]
            on = v >= 0.5
            if self._owner_state.get(room) != on:
                self._owner_state[room] = on  # tentative: applied in time order by _apply
                out.append((ts, room, on))
        return out

    def _occ_changes(self, occ: pl.DataFrame) -> Iterable[tuple[str, int, float]]:
        """Rows where a room's state differs from its previous sample (plus each room's first row)."""
        b = occ.with_columns(on=pl.col("value") >= 0.5)
        b = b.filter((pl.col("on") != pl.col("on").shift(1).over("tag")).fill_null(True))
        return b.select("tag", "ts", "value").iter_rows()

    def _unit_states(self, lo: int, hi: int, first: bool) -> list[tuple[int, str, bool]]:
        out = []
        for unit, wins in self._windows.items():
            if first:  # the state just before the first sample
                out.append((lo, unit, any(a <= lo and (b is None or b > lo) for a, b in wins)))
            for a, b in wins:
                if lo < a <= hi:
                    out.append((a, unit, True))
                if b is not None and lo < b <= hi:
                    out.append((b, unit, False))
        return out

    def _predict(self, f: pl.DataFrame) -> pl.DataFrame:
        wm = self._watermark
        if self.risk is None or wm is None:
            return f
        if self._last_pred is not None and wm - self._last_pred < self.cfg.pred_every_s * 1e6:
            return f
        self._last_pred = wm
        running = [u for u in self.site.units if self._owner_state.get(u, True)]
        rows = []
        for unit, r in self.risk(_dt(wm), running).items():
            risk = r if isinstance(r, Risk) else Risk(float(r))
            if unit not in self.site.units:
                raise ValueError(f"risk hook returned an unknown unit {unit!r}")
            self.drivers[unit] = (risk.risk, risk.drivers)
            rows.append((f"{unit}.{RISK_TAG}", wm, float(risk.risk), True))
        extra = pl.DataFrame(rows, schema=f.schema, orient="row")
        return pl.concat([f, extra])

    # ---------------------------------------------------------------- the state machine, in time order
    def _apply(self, states: list[tuple[int, str, bool]], ch: CondChanges) -> list[AlarmEvent]:
        # state changes sort before condition changes at the same instant (kind 0 < 1)
        items = [(ts, 0, owner, on) for ts, owner, on in states]
        order = np.lexsort((ch.point, ch.ts))
        items += [(int(ch.ts[k]), 1, int(ch.point[k]), (int(ch.on[k]), float(ch.value[k]))) for k in order]
        items.sort(key=lambda x: (x[0], x[1]))
        events: list[AlarmEvent] = []
        for ts, kind, who, what in items:
            events += self._expire(ts)
            when = _dt(ts)
            if kind == 0:
                self._owner_state[who] = what
                for i in self._by_owner.get(who, ()):
                    p = self.points[i]
                    enabled = p.mode == Mode.ALWAYS or (p.mode == Mode.OPERATING) == what
                    ev = self.status[i].set_enabled(enabled)
                    if ev is not None:
                        events.append(self._event(i, when, ev))
            else:
                on, value = what
                ev = self.status[who].set_condition(bool(on), None if np.isnan(value) else value)
                if ev is not None:
                    events.append(self._event(who, when, ev))
        if self._watermark is not None:
            events += self._expire(self._watermark)
        self._emit(events)
        return events

    def _expire(self, ts: int) -> list[AlarmEvent]:
        out = []
        for i in sorted(self._shelved, key=lambda k: self.status[k].shelved_until):  # type: ignore[arg-type,return-value]
            s = self.status[i]
            if s.shelved_until is not None and _us(s.shelved_until) <= ts:
                until = s.shelved_until
                self._shelved.discard(i)
                out.append(self._event(i, until, s.unshelve(self.points[i].id, expired=True),
                                       reason="shelving expired"))
                self._audit("system", "alarm.shelve_expired", self.points[i].id, AlarmState.SHELVED,
                            self.status[i].state, "shelving expired", until)
        return out

    def _event(self, i: int, when: datetime, kind: EventKind, actor: str = "system", reason: str = "",
               detail: dict | None = None) -> AlarmEvent:
        p, s = self.points[i], self.status[i]
        s.since = when
        if kind in (EventKind.ACTIVE, EventKind.UNSUPPRESS) and p.condition == Condition.PRED:
            risk, drivers = self.drivers.get(p.owner, (s.value, ()))
            detail = {**(detail or {}), "risk": risk, "drivers": [list(d) for d in drivers]}
        if p.annex1 and kind == EventKind.ACTIVE:
            detail = {**(detail or {}), "annex1": True, "mode": p.mode.value}
        return AlarmEvent(when, p.id, p.tag, p.owner, p.condition.value, p.level.value, p.priority.name.lower(),
                          kind, s.state, s.value, p.limit, actor, reason,
                          json.dumps(detail, sort_keys=True, default=str) if detail else "")

    def _emit(self, events: list[AlarmEvent]) -> None:
        if self.journal is not None:
            self.journal.write(events)
        for ev in events:
            for listener in self.listeners:
                listener(ev)

    # ---------------------------------------------------------------- operator actions (audited)
    def _actor(self, actor: object, permission: str) -> str:
        if self.users is not None:
            self.users.require(actor, permission)  # type: ignore[arg-type]
        name = getattr(actor, "username", actor)
        if not isinstance(name, str) or not name:
            raise ValueError(f"alarm action needs a user name, got {actor!r}")
        return name

    def _audit(self, actor: str, action: str, alarm_id: str, old: AlarmState, new: AlarmState, reason: str,
               when: datetime, **extra: object) -> None:
        if self.audit is not None:
            self.audit.append(actor, action, "alarm", alarm_id, {"state": old.value},
                              {"state": new.value, "data_ts": when, **extra}, reason)

    def _act(self, alarm_id: str, actor: object, reason: str, permission: str, action: str,
             change: Callable[[AlarmStatus, str], EventKind], when: datetime | None, **extra: object) -> AlarmEvent:
        if alarm_id not in self.index:
            raise KeyError(f"unknown alarm {alarm_id!r}")
        if not reason.strip():
            raise ValueError(f"{action} of alarm {alarm_id}: a reason is required")
        who = self._actor(actor, permission)
        i = self.index[alarm_id]
        when = when or self.now or datetime.now(UTC)
        events = self._expire(_us(when))
        old = self.status[i].state
        kind = change(self.status[i], alarm_id)
        if self.status[i].shelved_until is None:
            self._shelved.discard(i)
        else:
            self._shelved.add(i)
        ev = self._event(i, when, kind, who, reason, {k: v for k, v in extra.items()} or None)
        self._audit(who, action, alarm_id, old, ev.state, reason, when, **extra)
        self._emit([*events, ev])
        return ev

    def ack(self, alarm_id: str, actor: object, reason: str, when: datetime | None = None) -> AlarmEvent:
        """Acknowledge (B -> C, D -> A); needs "alarm.ack"."""
        return self._act(alarm_id, actor, reason, "alarm.ack", "alarm.ack", lambda s, a: s.ack(a), when)

    def shelve(self, alarm_id: str, actor: object, reason: str, duration_s: float,
               when: datetime | None = None) -> AlarmEvent:
        """Shelve for duration_s (at most max_shelve_s); it returns by itself when that expires."""
        if not 0 < duration_s <= self.cfg.max_shelve_s:
            raise ValueError(f"shelve {alarm_id}: duration_s must be in (0, {self.cfg.max_shelve_s:g}], "
                             f"got {duration_s!r}")
        start = when or self.now or datetime.now(UTC)
        until = start + timedelta(seconds=duration_s)
        return self._act(alarm_id, actor, reason, "alarm.shelve", "alarm.shelve",
                         lambda s, a: s.shelve(a, until), start, until=until.isoformat())

    def unshelve(self, alarm_id: str, actor: object, reason: str, when: datetime | None = None) -> AlarmEvent:
        return self._act(alarm_id, actor, reason, "alarm.shelve", "alarm.unshelve",
                         lambda s, a: s.unshelve(a), when)

    def restore(self, journal: pl.DataFrame) -> int:
        """Resume from a journal (JOURNAL_SCHEMA): each alarm's last entry gives its condition and ack state."""
        last = journal.sort("ts", "id").group_by("alarm_id").last()
        n = 0
        for alarm_id, ts, event, state, value, detail in last.select(
                "alarm_id", "ts", "event", "state", "value", "detail").iter_rows():
            i = self.index.get(alarm_id)
            if i is None:
                continue
            s = self.status[i]
            s.condition = state in ("UNACK", "ACKED") or (state == "SHELVED" and event != "CLEAR")
            s.acked = state not in ("UNACK", "RTN_UNACK")
            s.value, s.since = value, ts
            if state == "SHELVED" and event == "SHELVE":
                s.shelved_until = datetime.fromisoformat(json.loads(detail)["until"])
                self._shelved.add(i)
            self._eval.cond[i] = self._eval.active[i] = int(s.condition)
            self._eval.run_start[i] = self._eval.last_ts[i] = _us(ts)
            n += 1
        return n

    # ---------------------------------------------------------------- views
    def state(self, alarm_id: str) -> AlarmState:
        if alarm_id not in self.index:
            raise KeyError(f"unknown alarm {alarm_id!r}")
        return self.status[self.index[alarm_id]].state

    def states(self, only_abnormal: bool = False) -> pl.DataFrame:
        """One row per point: id, tag, owner, condition, level, priority, state, value, since, shelved_until."""
        rows = [(p.id, p.tag, p.owner, p.condition.value, p.level.value, p.priority.name.lower(), s.state.value,
                 s.value, s.since, s.shelved_until) for p, s in zip(self.points, self.status)
                if not only_abnormal or s.state not in (AlarmState.NORMAL, AlarmState.SUPPRESSED)]
        schema = {"alarm_id": pl.String(), "tag": pl.String(), "owner": pl.String(), "condition": pl.String(),
                  "level": pl.String(), "priority": pl.String(), "state": pl.String(), "value": pl.Float64(),
                  "since": pl.Datetime("us", "UTC"), "shelved_until": pl.Datetime("us", "UTC")}
        return pl.DataFrame(rows, schema=schema, orient="row")

    @property
    def late_samples(self) -> int:
        """Samples skipped because they were older than ones already evaluated for their point."""
        return self._eval.late


def windows_from_batches(batches: pl.DataFrame) -> dict[str, list[Window]]:
    """Per unit, the (start, end) of its batches (BATCH_SCHEMA frame); an open batch has end None."""
    out: dict[str, list[Window]] = {}
    for unit, start, end in batches.filter(pl.col("status") != "planned").select("unit", "start_ts", "end_ts").iter_rows():
        out.setdefault(unit, []).append((start, end))
    return out
