"""GMP deviations: opened from action-level excursions or by hand, linked to the batches affected,
taken through open -> investigation -> CAPA -> closed, the closure signed by QA (docs/compliance.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl
from sqlalchemy import (
    Column, Connection, ForeignKey, Index, Integer, PrimaryKeyConstraint, String, Table, Text, func, select,
    update,
)

from plant.alarms.journal import AlarmEvent, AlarmState, EventKind
from plant.audit import AuditTrail
from plant.guards import append_only
from plant.records import SEVERITIES, Records, UTCDateTime, metadata
from plant.samples import TS_DTYPE
from plant.site import Site

UTC = timezone.utc
STATES = ("open", "investigation", "capa", "closed")
CLASSIFICATIONS = SEVERITIES  # minor, major, critical
# Allowed moves and the permission each needs; closing is a QA e-signature (meaning "closed").
TRANSITIONS: dict[tuple[str, str], str] = {
    ("open", "investigation"): "deviation.investigate",
    ("investigation", "capa"): "deviation.investigate",
    ("capa", "investigation"): "deviation.investigate",  # the CAPA review sends it back
    ("capa", "closed"): "deviation.close",
}
_FIELDS = ("classification", "root_cause", "impact", "capa")
SYSTEM_ACTOR = "system:alarms"

deviations_table = Table(
    "deviations", metadata,
    Column("deviation_id", String(32), primary_key=True),
    Column("state", String(16), nullable=False), Column("title", String(256), nullable=False),
    Column("description", Text, nullable=False), Column("source", String(16), nullable=False),
    Column("alarm_id", String(160)), Column("tag", String(128)), Column("owner", String(64)),
    Column("classification", String(16)), Column("root_cause", Text, nullable=False),
    Column("impact", Text, nullable=False), Column("capa", Text, nullable=False),
    Column("event_start_ts", UTCDateTime(), nullable=False), Column("event_end_ts", UTCDateTime()),
    Column("opened_ts", UTCDateTime(), nullable=False), Column("opened_by", String(128), nullable=False),
    Column("closed_ts", UTCDateTime()), Column("closed_by", String(128)), Column("signature_id", Integer),
    Index(None, "state"), Index(None, "alarm_id", "state"), Index(None, "owner", "event_start_ts"),
)
deviation_batches_table = Table(
    "deviation_batches", metadata,
    Column("deviation_id", String(32), ForeignKey("deviations.deviation_id"), nullable=False),
    Column("batch_id", String(40), ForeignKey("batches.batch_id"), nullable=False),
    PrimaryKeyConstraint("deviation_id", "batch_id"), Index(None, "batch_id"),
)
deviation_events_table = Table(
    "deviation_events", metadata,
    Column("id", Integer, primary_key=True),
    Column("deviation_id", String(32), ForeignKey("deviations.deviation_id"), nullable=False),
    Column("ts", UTCDateTime(), nullable=False), Column("data_ts", UTCDateTime()),
    Column("actor", String(128), nullable=False), Column("action", String(32), nullable=False),
    Column("from_state", String(16)), Column("to_state", String(16)), Column("note", Text, nullable=False),
    Index(None, "deviation_id", "id"),
)
append_only(deviation_events_table)  # the timeline is a record: added to, never edited

DEVIATION_SCHEMA: dict[str, pl.DataType] = {
    "deviation_id": pl.String(), "state": pl.String(), "classification": pl.String(), "title": pl.String(),
    "owner": pl.String(), "alarm_id": pl.String(), "event_start_ts": TS_DTYPE, "opened_ts": TS_DTYPE,
    "closed_ts": TS_DTYPE, "batches": pl.String(),
}
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "ts": TS_DTYPE, "data_ts": TS_DTYPE, "actor": pl.String(), "action": pl.String(), "from_state": pl.String(),
    "to_state": pl.String(), "note": pl.String(),
}


class DeviationError(ValueError):
    """A lifecycle rule was broken; the message names the deviation, its state and what is missing."""


@dataclass(frozen=True, slots=True)
class Deviation:
    """A deviation record and the batches it is linked to."""

    deviation_id: str
    state: str
    title: str
    description: str
    source: str  # "alarm" or "manual"
    alarm_id: str | None
    tag: str | None
    owner: str | None
    classification: str | None
    root_cause: str
    impact: str
    capa: str
    event_start_ts: datetime
    event_end_ts: datetime | None
    opened_ts: datetime
    opened_by: str
    closed_ts: datetime | None
    closed_by: str | None
    signature_id: int | None
    batches: tuple[str, ...] = ()

    def signed_content(self) -> dict[str, Any]:
        """What a closure signature covers: the record as closed, without the signature itself."""
        skip = {"state", "closed_ts", "closed_by", "signature_id"}
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip},
                "state": "closed"}


def _name(actor: object) -> str:
    name = getattr(actor, "username", actor)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a deviation action needs a user name, got {actor!r}")
    return name


class Deviations:
    """The deviation register on a Records database; every change is on the audit trail."""

    def __init__(self, records: Records, audit: AuditTrail, users: Any | None = None, site: Site | None = None,
                 clock: Any = None) -> None:
        self.records, self.audit, self.users, self.site = records, audit, users, site
        self._engine = records.engine
        self._clock = clock or (lambda: datetime.now(UTC))
        metadata.create_all(self._engine, tables=[deviations_table, deviation_batches_table,
                                                  deviation_events_table])

    # ---------------------------------------------------------------- reading
    def get(self, deviation_id: str, conn: Connection | None = None) -> Deviation:
        if conn is None:
            with self._engine.connect() as c:
                return self.get(deviation_id, c)
        t = deviations_table
        row = conn.execute(select(t).where(t.c.deviation_id == deviation_id)).first()
        if row is None:
            raise KeyError(f"unknown deviation {deviation_id!r}")
        b = deviation_batches_table
        batches = tuple(conn.scalars(select(b.c.batch_id).where(b.c.deviation_id == deviation_id)
                                     .order_by(b.c.batch_id)))
        return Deviation(**row._mapping, batches=batches)

    def list(self, state: str | None = None, owner: str | None = None) -> pl.DataFrame:
        """Deviations (DEVIATION_SCHEMA) by opening time; `batches` is a comma-separated list."""
        t, b = deviations_table, deviation_batches_table
        stmt = select(t.c.deviation_id, t.c.state, t.c.classification, t.c.title, t.c.owner, t.c.alarm_id,
                      t.c.event_start_ts, t.c.opened_ts, t.c.closed_ts)
        if state is not None:
            if state not in STATES:
                raise ValueError(f"state must be one of {STATES}, got {state!r}")
            stmt = stmt.where(t.c.state == state)
        if owner is not None:
            stmt = stmt.where(t.c.owner == owner)
        with self._engine.connect() as conn:
            rows = conn.execute(stmt.order_by(t.c.event_start_ts, t.c.deviation_id)).all()
            links: dict[str, list[str]] = {}
            for d, bid in conn.execute(select(b.c.deviation_id, b.c.batch_id).order_by(b.c.batch_id)):
                links.setdefault(d, []).append(bid)
        data = [(*r, ",".join(links.get(r[0], []))) for r in rows]
        return pl.DataFrame(data, schema=DEVIATION_SCHEMA, orient="row")

    def events(self, deviation_id: str) -> pl.DataFrame:
        """The deviation's timeline (EVENT_SCHEMA), oldest first."""
        t = deviation_events_table
        with self._engine.connect() as conn:
            rows = conn.execute(select(*(t.c[n] for n in EVENT_SCHEMA)).where(t.c.deviation_id == deviation_id)
                                .order_by(t.c.id)).all()
        return pl.DataFrame([tuple(r) for r in rows], schema=EVENT_SCHEMA, orient="row")

    # ---------------------------------------------------------------- opening
    def open(self, actor: object, title: str, description: str, event_ts: datetime, *, owner: str | None = None,
             tag: str | None = None, alarm_id: str | None = None, batches: Sequence[str] | None = None,
             reason: str = "", conn: Connection | None = None) -> Deviation:
        """Open a deviation by hand ("deviation.open") or from an alarm; links batches open at event_ts."""
        who = _name(actor)
        if who != SYSTEM_ACTOR and self.users is not None:
            self.users.require(actor, "deviation.open")
        if not title.strip():
            raise DeviationError("a deviation needs a title")
        if event_ts.tzinfo is None:
            raise ValueError(f"deviation event_ts must be timezone-aware UTC, got {event_ts!r}")
        linked = list(batches) if batches is not None else self._affected(owner, event_ts)
        if conn is None:
            with self.audit.transaction() as own:
                return self.open(actor, title, description, event_ts, owner=owner, tag=tag, alarm_id=alarm_id,
                                 batches=linked, reason=reason, conn=own)
        now = self._clock()
        year = event_ts.astimezone(UTC).year
        n = conn.scalar(select(func.count()).select_from(deviations_table)
                        .where(deviations_table.c.deviation_id.like(f"DEV-{year}-%"))) or 0
        dev_id = f"DEV-{year}-{n + 1:04d}"
        row = dict(deviation_id=dev_id, state="open", title=title.strip()[:256], description=description,
                   source="alarm" if alarm_id and who == SYSTEM_ACTOR else "manual", alarm_id=alarm_id, tag=tag,
                   owner=owner, classification=None, root_cause="", impact="", capa="",
                   event_start_ts=event_ts.astimezone(UTC), event_end_ts=None, opened_ts=now, opened_by=who,
                   closed_ts=None, closed_by=None, signature_id=None)
        conn.execute(deviations_table.insert().values(row))
        if linked:
            conn.execute(deviation_batches_table.insert(), [{"deviation_id": dev_id, "batch_id": b} for b in linked])
        self._event(conn, dev_id, who, "open", None, "open", reason or title, event_ts)
        dev = self.get(dev_id, conn)
        self.audit.append(who, "deviation.open", "deviation", dev_id, None, dataclasses.asdict(dev),
                          reason or f"opened: {title}", conn=conn)
        return dev

    def _affected(self, owner: str | None, ts: datetime) -> list[str]:
        """Batches open at ts on the unit, or on every unit in the room."""
        if owner is None or self.site is None:
            return []
        units = [owner] if owner in self.site.units else [u.id for u in self.site.units_in_room(owner)]
        return [b.batch_id for b in self.records.batches_active_at(ts, units)] if units else []

    def _event(self, conn: Connection, dev_id: str, actor: str, action: str, old: str | None, new: str | None,
               note: str, data_ts: datetime | None = None) -> None:
        conn.execute(deviation_events_table.insert().values(
            deviation_id=dev_id, ts=self._clock(), data_ts=data_ts, actor=actor, action=action, from_state=old,
            to_state=new, note=note))

    # ---------------------------------------------------------------- lifecycle
    def transition(self, deviation_id: str, to: str, actor: object, reason: str, *, password: str | None = None,
                   **fields: str) -> Deviation:
        """Move a deviation to `to`, recording `fields` (classification, root_cause, impact, capa) first.

        Closing needs the QA signer's password: it is an e-signature (meaning "closed") bound to the record.
        """
        if to not in STATES:
            raise DeviationError(f"{deviation_id}: unknown state {to!r}; states are {STATES}")
        if unknown := sorted(set(fields) - set(_FIELDS)):
            raise DeviationError(f"{deviation_id}: cannot set {unknown}; fields are {_FIELDS}")
        if not reason.strip():
            raise DeviationError(f"{deviation_id}: a reason is required for the move to {to}")
        if "classification" in fields and fields["classification"] not in CLASSIFICATIONS:
            raise DeviationError(f"{deviation_id}: classification must be one of {CLASSIFICATIONS}, "
                                 f"got {fields['classification']!r}")
        dev = self.get(deviation_id)
        permission = TRANSITIONS.get((dev.state, to))
        if permission is None:
            allowed = [b for a, b in TRANSITIONS if a == dev.state]
            raise DeviationError(f"{deviation_id} is {dev.state}: cannot move to {to} (allowed: {allowed or 'none'})")
        after = dataclasses.replace(dev, **fields)
        self._check_complete(after, to)
        who = _name(actor)
        if to == "closed":
            return self._close(after, actor, reason, password)
        if self.users is not None:
            self.users.require(actor, permission)
        with self.audit.transaction() as conn:
            self._store(conn, dev, who, to, reason, fields)
        return self.get(deviation_id)

    @staticmethod
    def _check_complete(dev: Deviation, to: str) -> None:
        need = {"investigation": ("classification",), "capa": ("classification", "root_cause", "impact"),
                "closed": ("classification", "root_cause", "impact", "capa")}.get(to, ())
        missing = [f for f in need if not getattr(dev, f)]
        if missing:
            raise DeviationError(f"{dev.deviation_id}: moving to {to} needs {', '.join(missing)}")

    def _store(self, conn: Connection, dev: Deviation, who: str, to: str, reason: str, fields: dict[str, str],
               **extra: Any) -> None:
        t = deviations_table
        moved = conn.execute(update(t).where(t.c.deviation_id == dev.deviation_id, t.c.state == dev.state)
                             .values(state=to, **fields, **extra)).rowcount
        if moved != 1:  # someone else moved it since we read it
            raise DeviationError(f"{dev.deviation_id} changed state meanwhile; reload and try again")
        self._event(conn, dev.deviation_id, who, "transition", dev.state, to, reason)
        old = {"state": dev.state, **{k: getattr(dev, k) for k in fields}}
        self.audit.append(who, f"deviation.{to}", "deviation", dev.deviation_id, old,
                          {"state": to, **fields, **extra}, reason, conn=conn)

    def _close(self, dev: Deviation, actor: object, reason: str, password: str | None) -> Deviation:
        if self.users is None:
            raise DeviationError(f"{dev.deviation_id}: closing needs a QA e-signature (no user register given)")
        if not password:
            raise DeviationError(f"{dev.deviation_id}: closing is signed: the QA signer's password is required")
        who = _name(actor)
        fields = {k: getattr(dev, k) for k in _FIELDS}
        now = self._clock()

        def store(conn: Connection, sig: Any) -> None:
            self._store(conn, dev, who, "closed", reason, fields, closed_ts=now, closed_by=who,
                        signature_id=sig.id)

        self.users.sign(who, password, "closed", "deviation", dev.deviation_id, dev.signed_content(), reason,
                        permission="deviation.close", on_signed=store)
        return self.get(dev.deviation_id)

    def signature_valid(self, deviation_id: str) -> bool:
        """True when a closed deviation still holds exactly the content its QA signature covers."""
        dev = self.get(deviation_id)
        if dev.signature_id is None or self.users is None:
            return False
        sig = next((s for s in self.users.signatures("deviation", deviation_id) if s.id == dev.signature_id), None)
        return sig is not None and self.users.signature_matches(sig, dev.signed_content())

    # ---------------------------------------------------------------- from alarms
    def on_alarm(self, ev: AlarmEvent, merge: timedelta = timedelta(hours=4)) -> Deviation | None:
        """Alarm listener: an action-level excursion opens a deviation (or extends a recent open one)."""
        if ev.level != "action":
            return None
        if ev.event == EventKind.CLEAR:
            self._extend(ev, end=True)
            return None
        if ev.event not in (EventKind.ACTIVE, EventKind.UNSUPPRESS) or ev.state == AlarmState.SUPPRESSED:
            return None
        recent = self._extend(ev, end=False, merge=merge)
        if recent is not None:
            return recent
        what = "Annex 1 " if ev.details().get("annex1") else ""
        title = f"{what}action limit excursion: {ev.tag} {'above' if ev.condition != 'LO' else 'below'} {ev.limit:g}"
        desc = (f"Alarm {ev.alarm_id} ({ev.priority} priority) became active at {ev.ts:%Y-%m-%d %H:%M:%S} UTC "
                f"with value {ev.value if ev.value is not None else '-'}; limit {ev.limit:g}.")
        return self.open(SYSTEM_ACTOR, title, desc, ev.ts, owner=ev.owner, tag=ev.tag, alarm_id=ev.alarm_id,
                         reason=f"action-level excursion {ev.alarm_id}")

    def _extend(self, ev: AlarmEvent, end: bool, merge: timedelta = timedelta(hours=4)) -> Deviation | None:
        t = deviations_table
        with self.audit.transaction() as conn:
            row = conn.execute(select(t.c.deviation_id, t.c.event_end_ts, t.c.event_start_ts)
                               .where(t.c.alarm_id == ev.alarm_id, t.c.state != "closed")
                               .order_by(t.c.event_start_ts.desc()).limit(1)).first()
            if row is None:
                return None
            if end:
                conn.execute(update(t).where(t.c.deviation_id == row.deviation_id).values(event_end_ts=ev.ts))
                self._event(conn, row.deviation_id, SYSTEM_ACTOR, "excursion_end", None, None,
                            f"{ev.alarm_id} returned within limits", ev.ts)
                return None
            last = row.event_end_ts or row.event_start_ts
            if ev.ts - last > merge:
                return None
            conn.execute(update(t).where(t.c.deviation_id == row.deviation_id).values(event_end_ts=None))
            new = [b for b in self._affected(ev.owner, ev.ts)
                   if b not in self.get(row.deviation_id, conn).batches]
            if new:
                conn.execute(deviation_batches_table.insert(),
                             [{"deviation_id": row.deviation_id, "batch_id": b} for b in new])
            self._event(conn, row.deviation_id, SYSTEM_ACTOR, "excursion", None, None,
                        f"{ev.alarm_id} active again (value {ev.value}); merged into this deviation", ev.ts)
            self.audit.append(SYSTEM_ACTOR, "deviation.excursion", "deviation", row.deviation_id, None,
                              {"alarm_id": ev.alarm_id, "data_ts": ev.ts, "batches_added": new},
                              f"repeat excursion within {merge}", conn=conn)
            return self.get(row.deviation_id, conn)
