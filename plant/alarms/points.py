"""Alarm points: one per (tag, condition), derived from the site's limits and validated defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plant.site import ANNEX1_PARTICLE_LIMITS, Site, Tag


class Priority(IntEnum):
    """ISA-18.2 priorities; stored by name, compared by rank."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, name: str) -> Priority:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown alarm priority {name!r}; use low, medium, high or critical") from None


class Condition(StrEnum):
    HI = "HI"  # value above the limit
    LO = "LO"  # value below the limit
    ROC = "ROC"  # |rate of change| above the limit (per minute)
    STALE = "STALE"  # no usable value for stale_s
    PRED = "PRED"  # predicted deviation risk above the limit (0-1)


class Level(StrEnum):
    ALERT = "alert"
    ACTION = "action"


class Mode(StrEnum):
    """When a point is in service; outside it the point is suppressed by design (ISA-18.2 state F)."""

    ALWAYS = "always"
    OPERATING = "operating"  # room in operation (OCC = 1) / unit running a batch
    AT_REST = "at_rest"  # room at rest (OCC = 0)


@dataclass(frozen=True, slots=True)
class AlarmPoint:
    """One alarm: its tag, condition, limit, priority and anti-chattering settings."""

    id: str  # "<tag>:<suffix>", e.g. "CR-A1.P50:HH" or "CR-B1.P05:HH_REST"
    tag: str
    owner: str  # unit or room id
    condition: Condition
    level: Level
    limit: float
    priority: Priority
    deadband: float = 0.0
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    mode: Mode = Mode.ALWAYS
    annex1: bool = False  # an EU GMP Annex 1 particle limit (grade, at rest / in operation)
    description: str = ""


class AlarmSettings(BaseModel):
    """Engine-wide defaults; every one is overridable per tag in the site file (TagTemplate keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadband_frac: float = Field(default=0.005, ge=0, lt=0.5)  # of the eng_range span
    # Particle counts are Poisson and their eng_range spans decades: their deadband is a fraction of each limit.
    particle_deadband_frac: float = Field(default=0.2, ge=0, lt=1)
    # One >= 5.0 um count in a 1-minute sample (35 /m3) already exceeds 29 /m3; Annex 1 (9.30) treats single
    # counts as possibly false and consecutive counts as the signal: two consecutive samples by default.
    particle_on_delay_s: float = Field(default=60.0, ge=0)
    on_delay_s: float = Field(default=0.0, ge=0)
    off_delay_s: float = Field(default=120.0, ge=0)  # condition must stay clear 2 min before the alarm clears
    stale_s: float = Field(default=300.0, gt=0)  # 5 missed one-minute samples
    roc_window_s: float = Field(default=60.0, gt=0)  # rate of change over this window
    roc_deadband_frac: float = Field(default=0.1, ge=0, lt=1)
    pred_limit: float = Field(default=0.7, gt=0, lt=1)  # deviation risk (0-1) that raises a predictive alarm
    pred_deadband: float = Field(default=0.1, ge=0, lt=1)
    pred_every_s: float = Field(default=300.0, gt=0)  # how often the risk hook is asked
    pred_off_delay_s: float = Field(default=900.0, ge=0)
    max_shelve_s: float = Field(default=12 * 3600.0, gt=0)  # one shift: shelving longer needs an MOC
    state_tag: str = Field(default="OCC", min_length=1)  # room state tag: 1 in operation, 0 at rest


def settings(**overrides: object) -> AlarmSettings:
    """Validated AlarmSettings; the error names each bad key and value."""
    try:
        return AlarmSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (value: {e.get('input')!r})"
                        for e in exc.errors())
        raise ValueError(f"alarm settings: {bad}") from None


def _lower(p: Priority) -> Priority:
    return Priority(max(Priority.LOW, p - 1))


@dataclass(slots=True)
class _Builder:
    site: Site
    cfg: AlarmSettings
    out: list[AlarmPoint] = field(default_factory=list)

    def add(self, tag: Tag, suffix: str, cond: Condition, level: Level, limit: float, prio: Priority,
            deadband: float, mode: Mode = Mode.ALWAYS, annex1: bool = False, what: str = "",
            on: float | None = None, off: float | None = None) -> None:
        limit_kind = cond in (Condition.HI, Condition.LO)
        if tag.annex1 is not None and tag.deadband is None and limit_kind:
            deadband = self.cfg.particle_deadband_frac * limit
        if on is None:
            on = self.cfg.particle_on_delay_s if tag.annex1 == "5.0" and limit_kind else self.cfg.on_delay_s
        off = self.cfg.off_delay_s if off is None else off
        if limit_kind:  # the tag's own delays are for its limits; ROC and stale keep theirs
            on = tag.on_delay_s if tag.on_delay_s is not None else on
            off = tag.off_delay_s if tag.off_delay_s is not None else off
        self.out.append(AlarmPoint(f"{tag.name}:{suffix}", tag.name, tag.owner, cond, level, float(limit), prio,
                                   float(deadband), float(on), float(off), mode, annex1,
                                   what or f"{tag.description} {suffix}"))


def _default_priority(site: Site, tag: Tag) -> Priority:
    if tag.priority is not None:
        return Priority.parse(tag.priority)
    room = site.rooms.get(tag.owner)
    # Particles above the Annex 1 limit in the aseptic core (A, B) put product sterility at risk.
    if tag.annex1 is not None and room is not None and room.grade in ("A", "B"):
        return Priority.CRITICAL
    return Priority.HIGH


def build_points(site: Site, cfg: AlarmSettings | None = None) -> list[AlarmPoint]:
    """Every alarm point of a site: limits, Annex 1 at rest/in operation, rate of change, stale data."""
    cfg = cfg or AlarmSettings()
    b = _Builder(site, cfg)
    for tag in site.tags.values():
        lo, hi = tag.eng_range
        span = hi - lo
        # Status codes and states (uom "1") are discrete: their normal value may sit on the limit itself.
        discrete = tag.annex1 is not None or tag.uom == "1"
        db = tag.deadband if tag.deadband is not None else (0.0 if discrete else cfg.deadband_frac * span)
        action_p = _default_priority(site, tag)
        alert_p = _lower(action_p)
        room = site.rooms.get(tag.owner)
        has_state = room is not None and f"{tag.owner}.{cfg.state_tag}" in site.tags
        # Units alarm only while they run a batch; rooms always, except the state-dependent Annex 1 limits.
        base_mode = Mode.OPERATING if tag.owner in site.units else Mode.ALWAYS
        if tag.alert_low is not None:
            b.add(tag, "L", Condition.LO, Level.ALERT, tag.alert_low, alert_p, db, base_mode)
        if tag.action_low is not None:
            b.add(tag, "LL", Condition.LO, Level.ACTION, tag.action_low, action_p, db, base_mode)
        if tag.annex1 is not None and room is not None:
            _annex1_points(b, tag, room.grade, has_state, db, alert_p, action_p)
        else:
            if tag.alert_high is not None:
                b.add(tag, "H", Condition.HI, Level.ALERT, tag.alert_high, alert_p, db, base_mode)
            if tag.action_high is not None:
                b.add(tag, "HH", Condition.HI, Level.ACTION, tag.action_high, action_p, db, base_mode)
        if tag.roc_per_min is not None:
            b.add(tag, "ROC", Condition.ROC, Level.ALERT, tag.roc_per_min, Priority.LOW,
                  cfg.roc_deadband_frac * tag.roc_per_min, base_mode, what=f"{tag.description} rate of change")
        alarmed = any(p.tag == tag.name for p in b.out)
        if tag.stale_s is not None or alarmed:
            stale = tag.stale_s if tag.stale_s is not None else cfg.stale_s
            # Annex 1 asks for continuous particle monitoring in Grade A: losing it matters as much as an alarm.
            prio = Priority.HIGH if tag.annex1 and room is not None and room.grade == "A" else Priority.LOW
            b.add(tag, "STALE", Condition.STALE, Level.ALERT, stale, prio, 0.0, base_mode,
                  what=f"{tag.description}: no usable value for {stale:g} s", on=0.0, off=0.0)
    return b.out


def _annex1_points(b: _Builder, tag: Tag, grade: str, has_state: bool, db: float, alert_p: Priority,
                   action_p: Priority) -> None:
    """HH/H limits in operation and at rest; identical limits (Grade A) make one always-on pair."""
    size = 0 if tag.annex1 == "0.5" else 1
    op = tag.action_high  # the site resolved it to the in-operation Annex 1 limit (or a tighter one)
    rest = ANNEX1_PARTICLE_LIMITS[grade]["at_rest"][size]
    if rest is not None and op is not None:
        rest = min(rest, op)
    um = f">= {tag.annex1} um"
    if not has_state or rest is None or (op is not None and math.isclose(op, rest)):
        if op is not None:
            b.add(tag, "HH", Condition.HI, Level.ACTION, op, action_p, db, annex1=True,
                  what=f"Annex 1 grade {grade} {um} above {op:g} /m3")
        if tag.alert_high is not None:
            b.add(tag, "H", Condition.HI, Level.ALERT, tag.alert_high, alert_p, db, what=f"{um} above alert level")
        return
    if op is not None:
        b.add(tag, "HH", Condition.HI, Level.ACTION, op, action_p, db, Mode.OPERATING, True,
              f"Annex 1 grade {grade} in operation: {um} above {op:g} /m3")
    if tag.alert_high is not None:
        b.add(tag, "H", Condition.HI, Level.ALERT, tag.alert_high, alert_p, db, Mode.OPERATING,
              what=f"{um} above the in-operation alert level")
    b.add(tag, "HH_REST", Condition.HI, Level.ACTION, rest, action_p, db, Mode.AT_REST, True,
          f"Annex 1 grade {grade} at rest: {um} above {rest:g} /m3")
    if tag.alert_high is not None:
        # At rest the alert level keeps its in-operation ratio to the action limit.
        ratio = tag.alert_high / op if op else 0.5
        b.add(tag, "H_REST", Condition.HI, Level.ALERT, min(ratio * rest, rest), alert_p, db, Mode.AT_REST,
              what=f"{um} above the at-rest alert level")
