"""Model lifecycle records: the locked hold-out batches and every promotion decision (who, what, when, why).

The tables join `plant.records.metadata`, so they live in the same database (and audit scope) as the
batch records. A hold-out, once locked, never changes: a new one gets a new name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
from sqlalchemy import CheckConstraint, Column, ForeignKey, Index, Integer, PrimaryKeyConstraint, String, Table, Text
from sqlalchemy import select

from plant.records import UTC, Records, UTCDateTime, _to_utc, metadata
from plant.samples import TS_DTYPE

OUTCOMES = ("promoted", "refused")

holdouts_table = Table(
    "model_holdouts", metadata,
    Column("name", String(64), nullable=False),
    Column("batch_id", String(40), ForeignKey("batches.batch_id"), nullable=False),
    Column("locked_ts", UTCDateTime(), nullable=False), Column("locked_by", String(128), nullable=False),
    PrimaryKeyConstraint("name", "batch_id"),
)
promotions_table = Table(
    "model_promotions", metadata,
    Column("id", Integer, primary_key=True),
    Column("ts", UTCDateTime(), nullable=False),
    Column("model_name", String(128), nullable=False), Column("version", String(32), nullable=False),
    Column("previous_version", String(32)), Column("outcome", String(16), nullable=False),
    Column("decided_by", String(128), nullable=False), Column("reason", Text, nullable=False),
    Column("holdout", String(64), nullable=False), Column("details", Text, nullable=False),
    CheckConstraint(f"outcome IN ({', '.join(repr(o) for o in OUTCOMES)})", name="outcome"),
    Index(None, "model_name", "ts"),
)
PROMOTION_SCHEMA: dict[str, pl.DataType] = {
    "ts": TS_DTYPE, "model_name": pl.String(), "version": pl.String(), "previous_version": pl.String(),
    "outcome": pl.String(), "decided_by": pl.String(), "reason": pl.String(), "holdout": pl.String(),
    "details": pl.String(),
}


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    """One gate decision: a challenger version promoted to champion, or refused, and why."""

    ts: datetime
    model_name: str
    version: str
    previous_version: str | None
    outcome: str
    decided_by: str
    reason: str
    holdout: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", _to_utc("PromotionRecord.ts", self.ts))
        if self.outcome not in OUTCOMES:
            raise ValueError(f"PromotionRecord.outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if not self.decided_by.strip():
            raise ValueError("PromotionRecord.decided_by is empty: a promotion needs a named person")
        if not self.reason.strip():
            raise ValueError("PromotionRecord.reason is empty: say why the model is promoted")


def _ensure(records: Records) -> None:
    metadata.create_all(records.engine, tables=[holdouts_table, promotions_table])


def lock_holdout(records: Records, name: str, batch_ids: list[str], by: str, ts: datetime) -> None:
    """Lock a named hold-out set of batches; refuses to change one that exists."""
    _ensure(records)
    if holdout(records, name) is not None:
        raise ValueError(f"hold-out {name!r} is already locked; lock a new one under another name")
    if not batch_ids:
        raise ValueError(f"hold-out {name!r}: no batches to lock")
    at = _to_utc("lock_holdout ts", ts)
    with records.engine.begin() as conn:
        conn.execute(holdouts_table.insert(), [{"name": name, "batch_id": b, "locked_ts": at, "locked_by": by}
                                               for b in sorted(batch_ids)])


def holdout(records: Records, name: str) -> list[str] | None:
    """Batch ids of a locked hold-out, or None when no such hold-out exists."""
    _ensure(records)
    t = holdouts_table
    with records.engine.connect() as conn:
        ids = list(conn.scalars(select(t.c.batch_id).where(t.c.name == name).order_by(t.c.batch_id)))
    return ids or None


def record_promotion(records: Records, rec: PromotionRecord) -> None:
    _ensure(records)
    row = {k: getattr(rec, k) for k in PROMOTION_SCHEMA if k != "details"}
    row["details"] = json.dumps(rec.details, sort_keys=True, default=str)
    with records.engine.begin() as conn:
        conn.execute(promotions_table.insert(), [row])


def promotions(records: Records, model_name: str | None = None) -> pl.DataFrame:
    """Promotion decisions (PROMOTION_SCHEMA), oldest first."""
    _ensure(records)
    t = promotions_table
    stmt = select(*(t.c[n] for n in PROMOTION_SCHEMA)).order_by(t.c.ts, t.c.id)
    if model_name is not None:
        stmt = stmt.where(t.c.model_name == model_name)
    with records.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(stmt)]
    return pl.DataFrame(rows, schema=PROMOTION_SCHEMA, orient="row")


__all__ = ["OUTCOMES", "UTC", "PromotionRecord", "holdout", "lock_holdout", "promotions", "record_promotion"]
