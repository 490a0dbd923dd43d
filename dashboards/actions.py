"""What the pages change, as small typed functions: each checks the user's permission (refusals are recorded
by plant.users) and goes through the plant's own record-keeping, so the panel adds no second path."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import polars as pl

from dashboards.context import Plant
from dashboards.queries import plant_now
from plant.alarms import AlarmEngine, AlarmEvent
from plant.deviations import Deviation
from plant.users import Session, Signature

UTC = timezone.utc
DECISIONS = {"Accept": "accepted", "Modify": "modified", "Reject": "rejected"}


def check_modification(plant: Plant, rec_id: str, value: float) -> None:
    """A modified setpoint must stay inside the tag's PAR and within its largest single step."""
    rec, _ = plant.recommendations.get(rec_id)
    tag = plant.site.tags.get(f"{rec.unit}.{rec.tag}")
    if tag is None or tag.par is None:
        raise ValueError(f"{rec.unit}.{rec.tag} is not a controllable setpoint of this site")
    lo, hi = tag.par
    if not lo <= value <= hi:
        raise ValueError(f"{tag.name} = {value:g} is outside its proven acceptable range [{lo:g}, {hi:g}] {tag.uom}")
    if tag.max_step is not None and abs(value - rec.current) > tag.max_step + 1e-9:
        raise ValueError(f"{tag.name}: a change from {rec.current:g} to {value:g} is larger than the largest "
                         f"single step {tag.max_step:g} {tag.uom}")


def decide_recommendation(plant: Plant, session: Session, rec_id: str, decision: str, password: str,
                          reason: str = "", modified_to: float | None = None) -> Signature:
    """Accept, modify or reject pending advice with an e-signature of the logged-in user."""
    plant.users.require(session, "recommendation.decide")
    if decision == "modified":
        if modified_to is None:
            raise ValueError("a modification needs the new setpoint value")
        check_modification(plant, rec_id, modified_to)
    return plant.recommendations.decide(plant.users, session.username, password, rec_id, decision, reason,
                                        modified_to if decision == "modified" else None)


def _engine_for(plant: Plant, alarm_id: str) -> tuple[AlarmEngine, datetime]:
    """A short-lived engine holding one alarm's state from the journal, and the time to act at."""
    engine = AlarmEngine(plant.site, points=list(plant.points), journal=plant.journal, audit=plant.audit,
                         users=plant.users)
    if alarm_id not in engine.index:
        raise KeyError(f"unknown alarm {alarm_id!r}")
    history = plant.journal.read(alarm_id=alarm_id)
    engine.restore(history)
    # Journal time is data time: act at the plant's clock, never before the alarm's own last entry.
    when = plant_now(plant, datetime.now(UTC)) or datetime.now(UTC)
    if history.height:
        when = max(when, history["ts"].max() + timedelta(microseconds=1))  # type: ignore[operator]
    return engine, when


def ack_alarm(plant: Plant, session: Session, alarm_id: str, reason: str) -> AlarmEvent:
    """Acknowledge an alarm (needs alarm.ack); journaled and on the audit trail."""
    engine, when = _engine_for(plant, alarm_id)
    return engine.ack(alarm_id, session, reason, when)


def shelve_alarm(plant: Plant, session: Session, alarm_id: str, reason: str, hours: float) -> AlarmEvent:
    """Shelve an alarm for some hours (needs alarm.shelve); it returns by itself when that expires."""
    engine, when = _engine_for(plant, alarm_id)
    return engine.shelve(alarm_id, session, reason, hours * 3600.0, when)


def unshelve_alarm(plant: Plant, session: Session, alarm_id: str, reason: str) -> AlarmEvent:
    engine, when = _engine_for(plant, alarm_id)
    return engine.unshelve(alarm_id, session, reason, when)


def open_deviation(plant: Plant, session: Session, title: str, description: str, owner: str | None,
                   event_ts: datetime) -> Deviation:
    """Open a deviation by hand (needs deviation.open); batches running on the owner are linked."""
    return plant.deviations.open(session, title, description, event_ts, owner=owner or None,
                                 reason="opened in the panel")


def move_deviation(plant: Plant, session: Session, deviation_id: str, to: str, reason: str,
                   password: str | None = None, **fields: str) -> Deviation:
    """Move a deviation along its lifecycle; closing is QA's e-signature (the password re-authenticates)."""
    return plant.deviations.transition(deviation_id, to, session, reason, password=password,
                                       **{k: v for k, v in fields.items() if v})


def sign_review(plant: Plant, session: Session, batch_id: str, shown: pl.DataFrame, password: str,
                reason: str = "") -> Signature:
    """QA signs the audit-trail excerpt of a batch as reviewed: exactly the entries shown."""
    return plant.review.sign_review(session.username, password, batch_id, shown, reason)


def export_audit(plant: Plant, session: Session, frame: pl.DataFrame, filters: dict[str, object]) -> bytes:
    """CSV of audit entries for download (needs audit.export); the export itself goes on the audit trail."""
    plant.users.require(session, "audit.export")
    data = frame.write_csv().encode()
    plant.audit.append(session.username, "export", "audit_trail", "panel-export.csv", None,
                       {"rows": frame.height, "sha256": hashlib.sha256(data).hexdigest(),
                        "filters": {k: str(v) for k, v in filters.items() if v not in (None, "")}})
    return data
