"""Connector state changes as records: when each data source connected, was lost and recovered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import polars as pl
from sqlalchemy import Column, Index, Integer, String, Table, Text, select

from plant.records import Records, UTCDateTime, metadata
from plant.samples import TS_DTYPE

connector_events_table = Table(
    "connector_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", UTCDateTime(), nullable=False),
    Column("endpoint", String(128), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("from_state", String(16), nullable=False),
    Column("to_state", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Index("ix_connector_events_endpoint_ts", "endpoint", "ts"),
)

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "ts": TS_DTYPE, "endpoint": pl.String(), "protocol": pl.String(), "from_state": pl.String(),
    "to_state": pl.String(), "reason": pl.String(),
}


@dataclass(frozen=True, slots=True)
class ConnectorEvent:
    """One state change of a connector (e.g. READY -> RECONNECTING because the server closed)."""

    ts: datetime
    endpoint: str
    protocol: str
    from_state: str
    to_state: str
    reason: str = ""

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None or self.ts.utcoffset() is None:
            raise ValueError(f"ConnectorEvent.ts must be timezone-aware (UTC), got naive {self.ts!r}")


def add_connector_events(records: Records, events: Sequence[ConnectorEvent]) -> None:
    """Store state changes (creates the table on first use)."""
    if not events:
        return
    metadata.create_all(records.engine, tables=[connector_events_table])
    rows = [{k: getattr(e, k) for k in EVENT_SCHEMA} for e in events]
    with records.engine.begin() as conn:
        conn.execute(connector_events_table.insert(), rows)


def connector_events(records: Records, endpoint: str | None = None) -> pl.DataFrame:
    """State changes in the order they happened, optionally for one endpoint."""
    metadata.create_all(records.engine, tables=[connector_events_table])
    t = connector_events_table
    stmt = select(*(t.c[k] for k in EVENT_SCHEMA)).order_by(t.c.id)
    if endpoint is not None:
        stmt = stmt.where(t.c.endpoint == endpoint)
    with records.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(stmt)]
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")
