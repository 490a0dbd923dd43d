"""The one record every data source emits: a tagged value with its quality and timestamps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum

import polars as pl


class Quality(StrEnum):
    """Quality of a sample; BAD/STALE/MISSING samples are stored, never dropped or zero-filled."""

    GOOD = "GOOD"
    UNCERTAIN = "UNCERTAIN"
    BAD = "BAD"
    STALE = "STALE"
    MISSING = "MISSING"


QUALITY_DTYPE = pl.Enum([q.value for q in Quality])
TS_DTYPE = pl.Datetime("us", "UTC")

# Long-format telemetry schema shared by the historian, the twin and the connectors.
SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "ts": TS_DTYPE,  # source timestamp (when the value was measured)
    "tag": pl.String(),
    "value": pl.Float64(),  # null when the source had no usable value (BAD, MISSING)
    "quality": QUALITY_DTYPE,
    "status": pl.String(),  # e.g. "BadSensorFailure", "exception 0x02"; null when fine
    "server_ts": TS_DTYPE,  # OPC UA server timestamp, when known
    "received_ts": TS_DTYPE,  # when cellwatch received it, when known
}


def _require_utc(name: str, ts: datetime | None) -> None:
    if ts is not None and (ts.tzinfo is None or ts.utcoffset() is None):
        raise ValueError(f"Sample.{name} must be timezone-aware (UTC), got naive {ts!r}")


@dataclass(frozen=True, slots=True)
class Sample:
    """A tagged value with quality, status and three UTC timestamps."""

    tag: str
    value: float | None
    quality: Quality
    source_ts: datetime | None
    server_ts: datetime | None
    received_ts: datetime
    status: str = ""

    def __post_init__(self) -> None:
        _require_utc("source_ts", self.source_ts)
        _require_utc("server_ts", self.server_ts)
        _require_utc("received_ts", self.received_ts)

    @property
    def ts(self) -> datetime:
        """The best timestamp known for the measurement: source, else server, else receipt."""
        return self.source_ts or self.server_ts or self.received_ts


def utcnow() -> datetime:
    """Current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def samples_to_frame(samples: list[Sample]) -> pl.DataFrame:
    """Convert samples to a frame in SAMPLE_SCHEMA (empty status becomes null)."""
    return pl.DataFrame(
        {
            "ts": [s.ts for s in samples],
            "tag": [s.tag for s in samples],
            "value": [s.value for s in samples],
            "quality": [s.quality.value for s in samples],
            "status": [s.status or None for s in samples],
            "server_ts": [s.server_ts for s in samples],
            "received_ts": [s.received_ts for s in samples],
        },
        schema=SAMPLE_SCHEMA,
    )


def empty_samples() -> pl.DataFrame:
    """An empty frame with SAMPLE_SCHEMA."""
    return pl.DataFrame(schema=SAMPLE_SCHEMA)
