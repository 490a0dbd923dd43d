"""Setpoint recommendations as frozen records, and the signed human decision on each of them.

A recommender proposes (models/recommend.py); a person accepts, modifies or rejects with a
reason and an e-signature (plant.gmp_records.record_recommendation_decision). The signature, its
audit entry and the recommendation's new status are stored in one transaction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import polars as pl
from sqlalchemy import Column, Connection, Float, Index, Integer, String, Table, Text, select, update

from plant.gmp_records import record_recommendation_decision
from plant.records import Records, UTCDateTime, metadata
from plant.users import Signature, Users

STATUSES = ("pending", "accepted", "modified", "rejected", "expired")

recommendations_table = Table(
    "recommendations", metadata,
    Column("id", String(40), primary_key=True),
    Column("batch_id", String(64), nullable=False),
    Column("unit", String(64), nullable=False),
    Column("tag", String(128), nullable=False),
    Column("current", Float, nullable=False),
    Column("proposed", Float, nullable=False),
    Column("gain", Float, nullable=False),
    Column("gain_low", Float, nullable=False),
    Column("gain_high", Float, nullable=False),
    Column("risk_change", Float, nullable=False),
    Column("drivers", Text, nullable=False),  # JSON list of [feature, contribution]
    Column("model_version", String(128), nullable=False),
    Column("input_hash", String(64), nullable=False),
    Column("created_ts", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("decided_by", String(128)),
    Column("decided_ts", UTCDateTime),
    Column("applied_value", Float),
    Column("reason", Text),
    Column("signature_id", Integer),
    Index("ix_recommendations_unit_created", "unit", "created_ts"),
    Index("ix_recommendations_batch", "batch_id"),
)


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One proposed setpoint change with its expected gain (relative yield), interval and reasons."""

    batch_id: str
    unit: str
    tag: str
    current: float
    proposed: float
    gain: float
    gain_low: float
    gain_high: float
    risk_change: float
    drivers: tuple[tuple[str, float], ...]
    model_version: str
    input_hash: str
    created_ts: datetime

    def __post_init__(self) -> None:
        if self.created_ts.tzinfo is None:
            raise ValueError(f"Recommendation.created_ts must be timezone-aware UTC, got {self.created_ts!r}")
        if not self.gain_low <= self.gain <= self.gain_high:
            raise ValueError(f"Recommendation {self.unit}.{self.tag}: gain {self.gain} outside its interval "
                             f"[{self.gain_low}, {self.gain_high}]")

    @property
    def id(self) -> str:
        """Stable id: the same proposal for the same inputs is the same recommendation."""
        key = f"{self.batch_id}|{self.tag}|{self.proposed!r}|{self.input_hash}|{self.created_ts.isoformat()}"
        return "REC-" + hashlib.sha256(key.encode()).hexdigest()[:16].upper()

    def shown(self) -> dict[str, object]:
        """The record as shown to the person deciding (what the signature binds)."""
        d = asdict(self)
        d["created_ts"] = self.created_ts.isoformat()
        d["drivers"] = [list(x) for x in self.drivers]
        return d


def _row(rec: Recommendation) -> dict[str, object]:
    d = asdict(rec)
    d["drivers"] = json.dumps([list(x) for x in rec.drivers])
    return {"id": rec.id, **d, "status": "pending"}


def _from_row(row: dict) -> Recommendation:
    return Recommendation(
        batch_id=row["batch_id"], unit=row["unit"], tag=row["tag"], current=row["current"], proposed=row["proposed"],
        gain=row["gain"], gain_low=row["gain_low"], gain_high=row["gain_high"], risk_change=row["risk_change"],
        drivers=tuple((str(f), float(c)) for f, c in json.loads(row["drivers"])), model_version=row["model_version"],
        input_hash=row["input_hash"], created_ts=row["created_ts"])


class RecommendationStore:
    """Pending advice and its decisions, in the records database."""

    def __init__(self, records: Records) -> None:
        self.records = records

    def add(self, recs: list[Recommendation]) -> list[str]:
        """Store new recommendations as pending; return their ids (an existing id is left alone)."""
        ids = []
        with self.records.engine.begin() as conn:
            for rec in recs:
                if conn.execute(select(recommendations_table.c.id).where(recommendations_table.c.id == rec.id)).first():
                    ids.append(rec.id)
                    continue
                conn.execute(recommendations_table.insert(), _row(rec))
                ids.append(rec.id)
        return ids

    def get(self, rec_id: str) -> tuple[Recommendation, str]:
        """The recommendation and its status; KeyError naming the id if unknown."""
        with self.records.engine.connect() as conn:
            row = conn.execute(select(recommendations_table).where(recommendations_table.c.id == rec_id)).mappings().first()
        if row is None:
            raise KeyError(f"unknown recommendation {rec_id!r}")
        return _from_row(dict(row)), row["status"]

    def table(self, status: str | None = None, unit: str | None = None, batch_id: str | None = None) -> pl.DataFrame:
        """Recommendations (newest first) with status and decision columns."""
        t = recommendations_table
        stmt = select(t).order_by(t.c.created_ts.desc(), t.c.id)
        for col, value in ((t.c.status, status), (t.c.unit, unit), (t.c.batch_id, batch_id)):
            if value is not None:
                stmt = stmt.where(col == value)
        with self.records.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
        return pl.DataFrame(rows, schema={c.name: _dtype(c) for c in t.columns}, orient="row") if rows else \
            pl.DataFrame(schema={c.name: _dtype(c) for c in t.columns})

    def decide(self, users: Users, username: str, password: str, rec_id: str, decision: str, reason: str = "",
               modified_to: float | None = None) -> Signature:
        """A signed decision: accepted, modified (to a value) or rejected; only pending advice can be decided."""
        rec, status = self.get(rec_id)
        if status != "pending":
            raise ValueError(f"recommendation {rec_id} is already {status}")
        applied = rec.proposed if decision == "accepted" else modified_to

        def set_status(conn: Connection, sig: Signature) -> None:
            done = conn.execute(update(recommendations_table).where(
                (recommendations_table.c.id == rec_id) & (recommendations_table.c.status == "pending")).values(
                status=decision, decided_by=username, decided_ts=sig.ts, applied_value=applied, reason=reason,
                signature_id=sig.id))
            if done.rowcount != 1:  # decided by someone else meanwhile: roll the signature back too
                raise ValueError(f"recommendation {rec_id} was decided meanwhile")

        return record_recommendation_decision(users, username, password, rec_id, rec.batch_id, decision, rec.shown(),
                                              reason, modified_to, also=set_status)


def _dtype(col: Column) -> pl.DataType:
    if isinstance(col.type, Float):
        return pl.Float64()
    if isinstance(col.type, Integer):
        return pl.Int64()
    if isinstance(col.type, UTCDateTime):
        return pl.Datetime("us", "UTC")
    return pl.String()


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
