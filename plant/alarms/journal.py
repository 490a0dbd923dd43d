"""The alarm journal: every alarm event (activation, clear, ack, shelve, suppression) in records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import polars as pl
from sqlalchemy import Column, Float, Index, Integer, String, Table, Text, func, select

from plant.guards import append_only
from plant.records import Records, UTCDateTime, metadata
from plant.samples import TS_DTYPE


class AlarmState(StrEnum):
    """ISA-18.2 alarm states (letters as in the standard's state diagram)."""

    NORMAL = "NORMAL"  # A: clear, acknowledged
    UNACK = "UNACK"  # B: active, unacknowledged
    ACKED = "ACKED"  # C: active, acknowledged
    RTN_UNACK = "RTN_UNACK"  # D: returned to normal, unacknowledged
    SHELVED = "SHELVED"  # E: shelved by an operator until an expiry
    SUPPRESSED = "SUPPRESSED"  # F: suppressed by design (state of the room or unit)


class EventKind(StrEnum):
    ACTIVE = "ACTIVE"  # condition became active (annunciated unless shelved/suppressed)
    CLEAR = "CLEAR"  # condition returned to normal
    ACK = "ACK"
    SHELVE = "SHELVE"
    UNSHELVE = "UNSHELVE"
    SHELVE_EXPIRED = "SHELVE_EXPIRED"
    SUPPRESS = "SUPPRESS"  # by design: the owner left the state the point applies in
    UNSUPPRESS = "UNSUPPRESS"


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One journal entry; `annunciated` is true when it put a new alarm in front of the operator."""

    ts: datetime
    alarm_id: str
    tag: str
    owner: str
    condition: str
    level: str
    priority: str
    event: EventKind
    state: AlarmState  # after the event
    value: float | None
    limit: float
    actor: str = "system"
    reason: str = ""
    detail: str = ""  # JSON: model drivers of a predictive alarm, shelve expiry, ...

    @property
    def annunciated(self) -> bool:
        return self.state == AlarmState.UNACK and self.event in (EventKind.ACTIVE, EventKind.UNSHELVE,
                                                                  EventKind.SHELVE_EXPIRED, EventKind.UNSUPPRESS)

    def details(self) -> dict[str, Any]:
        return json.loads(self.detail) if self.detail else {}


journal_table = Table(
    "alarm_journal", metadata,
    Column("id", Integer, primary_key=True),
    Column("ts", UTCDateTime(), nullable=False),
    Column("alarm_id", String(160), nullable=False), Column("tag", String(128), nullable=False),
    Column("owner", String(64), nullable=False), Column("condition", String(8), nullable=False),
    Column("level", String(8), nullable=False), Column("priority", String(8), nullable=False),
    Column("event", String(16), nullable=False), Column("state", String(12), nullable=False),
    Column("annunciated", Integer, nullable=False),
    Column("value", Float), Column("limit_value", Float, nullable=False),
    Column("actor", String(128), nullable=False), Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Index(None, "ts"), Index(None, "alarm_id", "ts"), Index(None, "owner", "ts"),
)
append_only(journal_table)  # a GMP record: events are added, never edited
# Each replay of stored data (`cellwatch alarms run`): where the next one resumes.
replays_table = Table(
    "alarm_replays", metadata,
    Column("id", Integer, primary_key=True), Column("run_ts", UTCDateTime(), nullable=False),
    Column("data_start", UTCDateTime(), nullable=False), Column("data_end", UTCDateTime(), nullable=False),
    Column("samples", Integer, nullable=False), Column("events", Integer, nullable=False),
)

JOURNAL_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int64(), "ts": TS_DTYPE, "alarm_id": pl.String(), "tag": pl.String(), "owner": pl.String(),
    "condition": pl.String(), "level": pl.String(), "priority": pl.String(), "event": pl.String(),
    "state": pl.String(), "annunciated": pl.Boolean(), "value": pl.Float64(), "limit": pl.Float64(),
    "actor": pl.String(), "reason": pl.String(), "detail": pl.String(),
}


class AlarmJournal:
    """Write and read the alarm journal of a Records database."""

    def __init__(self, records: Records) -> None:
        self._engine = records.engine
        metadata.create_all(self._engine, tables=[journal_table, replays_table])  # checkfirst

    def write(self, events: Sequence[AlarmEvent]) -> int:
        if not events:
            return 0
        rows = [{"ts": e.ts, "alarm_id": e.alarm_id, "tag": e.tag, "owner": e.owner, "condition": e.condition,
                 "level": e.level, "priority": e.priority, "event": e.event.value, "state": e.state.value,
                 "annunciated": int(e.annunciated), "value": e.value, "limit_value": e.limit,
                 "actor": e.actor, "reason": e.reason, "detail": e.detail} for e in events]
        with self._engine.begin() as conn:
            conn.execute(journal_table.insert(), rows)
        return len(rows)

    def read(self, start: datetime | None = None, end: datetime | None = None, owner: str | None = None,
             alarm_id: str | None = None, owners: Sequence[str] | None = None) -> pl.DataFrame:
        """Journal rows (JOURNAL_SCHEMA) in [start, end), by ts then id."""
        t = journal_table
        cols = [t.c[n] if n != "limit" else t.c.limit_value.label("limit") for n in JOURNAL_SCHEMA]
        stmt = select(*cols)
        if start is not None:
            stmt = stmt.where(t.c.ts >= start)
        if end is not None:
            stmt = stmt.where(t.c.ts < end)
        if owner is not None:
            stmt = stmt.where(t.c.owner == owner)
        if owners is not None:
            stmt = stmt.where(t.c.owner.in_(list(owners)))
        if alarm_id is not None:
            stmt = stmt.where(t.c.alarm_id == alarm_id)
        with self._engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(stmt.order_by(t.c.ts, t.c.id))]
        return pl.DataFrame(rows, schema=JOURNAL_SCHEMA, orient="row")

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(journal_table)) or 0)

    def record_replay(self, run_ts: datetime, start: datetime, end: datetime, samples: int, events: int) -> None:
        with self._engine.begin() as conn:
            conn.execute(replays_table.insert().values(run_ts=run_ts, data_start=start, data_end=end,
                                                       samples=samples, events=events))

    def replayed_until(self) -> datetime | None:
        """End of the data the last replay evaluated (the next one starts there)."""
        t = replays_table
        with self._engine.connect() as conn:
            return conn.scalar(select(t.c.data_end).order_by(t.c.id.desc()).limit(1))
