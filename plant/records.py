"""Batch records store: batches, setpoints, donor covariates, offline/release results, fault labels.

SQLAlchemy Core on SQLite (WAL) by default; only portable types and SQL, so PostgreSQL works with
the same code. Later modules (alarms, deviations, audit trail) add their tables to `metadata`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import (
    Boolean, CheckConstraint, Column, DateTime, Engine, Float, ForeignKey, Index, Integer, MetaData,
    PrimaryKeyConstraint, String, Table, Text, create_engine, event, or_, select, update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator

from plant.samples import TS_DTYPE

UTC = timezone.utc
KINDS = ("production", "process_characterisation", "engineering")
STATUSES = ("planned", "running", "harvested", "terminated")
DISPOSITIONS = ("released", "rejected")
SOURCES = ("recipe", "doe", "operator", "recommendation")
SEVERITIES = ("minor", "major", "critical")
_ENDED = ("harvested", "terminated")
_UPDATABLE = frozenset({"end_ts", "status", "disposition", "notes"})

# ---------------------------------------------------------------------------------------------
# Chain of identity

_ALNUM = string.digits + string.ascii_uppercase
_SITE_RE = re.compile(r"[A-Z0-9]{2,8}")
_COI_RE = re.compile(r"COI-([A-Z0-9]{2,8})-([A-Z0-9]{4})-([A-Z0-9]{4})-([A-Z0-9])")


def _mod37_2(chars: str) -> int:
    """ISO 7064 MOD 37-2 running remainder; detects every single substitution and adjacent swap."""
    p = 0
    for c in chars:
        p = ((p + _ALNUM.index(c)) * 2) % 37
    return p


def coi_id(site_code: str, seq: int, key: bytes) -> str:
    """Pseudonymous chain-of-identity id like `COI-DEMO-7K3F-9Q2M-X` (HMAC-SHA256 of site, seq)."""
    if not isinstance(site_code, str) or not _SITE_RE.fullmatch(site_code):
        raise ValueError(f"site_code must be 2-8 characters A-Z/0-9, got {site_code!r}")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError(f"seq must be a non-negative int, got {seq!r}")
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("key must be at least 16 bytes")
    for nonce in range(1000):
        msg = f"{site_code}:{seq}:{nonce}".encode()
        n = int.from_bytes(hmac.new(key, msg, hashlib.sha256).digest()[:8], "big")
        body = "".join(_ALNUM[(n // 36**i) % 36] for i in range(8))
        check = (1 - _mod37_2(site_code + body)) % 37
        if check < 36:  # MOD 37-2 needs a 37th symbol ('*') for 1 in 37 bodies; draw again
            return f"COI-{site_code}-{body[:4]}-{body[4:]}-{_ALNUM[check]}"
    raise AssertionError("unreachable: no alphanumeric check character in 1000 draws")


def valid_coi(s: object) -> bool:
    """True when `s` is a well-formed chain-of-identity id with a correct check character."""
    m = _COI_RE.fullmatch(s) if isinstance(s, str) else None
    if m is None:
        return False
    site, a, b, check = m.groups()
    return (_mod37_2(site + a + b) + _ALNUM.index(check)) % 37 == 1


# ---------------------------------------------------------------------------------------------
# Boundary records


def _to_utc(where: str, ts: object) -> datetime:
    if not isinstance(ts, datetime):
        raise TypeError(f"{where} must be a datetime, got {ts!r}")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{where} must be timezone-aware (UTC), got naive {ts!r}")
    return ts.astimezone(UTC)


def _normalise(obj: Any, optional: Iterable[str] = ()) -> None:
    """Convert every `ts`/`*_ts` field to aware UTC; naive or missing ones raise, naming it."""
    for f in fields(obj):
        if f.name == "ts" or f.name.endswith("_ts"):
            value = getattr(obj, f.name)
            if value is not None or f.name not in optional:
                object.__setattr__(obj, f.name, _to_utc(f"{type(obj).__name__}.{f.name}", value))


def _one_of(obj: Any, name: str, allowed: Sequence[str | None]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(f"{type(obj).__name__}.{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch, keyed by its chain-of-identity id; end_ts is set once harvested/terminated."""

    batch_id: str
    unit: str
    site: str
    recipe: str
    kind: str
    start_ts: datetime
    planned_end_ts: datetime
    end_ts: datetime | None = None
    status: str = "running"
    disposition: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if not valid_coi(self.batch_id):
            raise ValueError(f"BatchRecord.batch_id is not a valid COI id: {self.batch_id!r}")
        if not self.unit:
            raise ValueError(f"BatchRecord.unit is empty for {self.batch_id}")
        _normalise(self, optional=("end_ts",))
        _one_of(self, "kind", KINDS)
        _one_of(self, "status", STATUSES)
        _one_of(self, "disposition", (None, *DISPOSITIONS))
        if self.planned_end_ts <= self.start_ts:
            raise ValueError(f"BatchRecord.planned_end_ts must be after start_ts ({self.batch_id})")
        if self.end_ts is not None and self.end_ts < self.start_ts:
            raise ValueError(f"BatchRecord.end_ts is before start_ts ({self.batch_id})")
        if (self.end_ts is not None) != (self.status in _ENDED):
            raise ValueError(f"BatchRecord.end_ts must be set iff status is one of {_ENDED} "
                             f"({self.batch_id}: status={self.status!r}, end_ts={self.end_ts!r})")
        allowed = {"harvested": DISPOSITIONS, "terminated": ("rejected",)}.get(self.status, ())
        if self.disposition is not None and self.disposition not in allowed:
            raise ValueError(f"BatchRecord.disposition {self.disposition!r} is not allowed with "
                             f"status {self.status!r} ({self.batch_id})")


@dataclass(frozen=True, slots=True)
class SetpointChange:
    """A setpoint from `ts` on; the recipe's initial setpoints are changes at start_ts."""

    batch_id: str
    tag: str
    ts: datetime
    value: float
    source: str
    reason: str = ""

    def __post_init__(self) -> None:
        _normalise(self)
        _one_of(self, "source", SOURCES)


@dataclass(frozen=True, slots=True)
class DonorCovariate:
    """One covariate of the starting material: numeric `value` or categorical `text` (EAV)."""

    batch_id: str
    name: str
    value: float | None
    text: str | None = None

    def __post_init__(self) -> None:
        if self.value is None and self.text is None:
            raise ValueError(f"DonorCovariate {self.name!r} of {self.batch_id}: no value or text")


@dataclass(frozen=True, slots=True)
class OfflineResult:
    """An at-line/off-line measurement (VCD, viability, glucose, lactate, CAR %...)."""

    batch_id: str
    ts: datetime
    analyte: str
    value: float
    unit: str
    method: str = ""

    def __post_init__(self) -> None:
        _normalise(self)


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """A QC release attribute; qualitative ones (sterility: "no growth") use `text`, value None."""

    batch_id: str
    attribute: str
    value: float | None
    unit: str
    spec_low: float | None
    spec_high: float | None
    passed: bool
    ts: datetime
    text: str | None = None

    def __post_init__(self) -> None:
        _normalise(self)


@dataclass(frozen=True, slots=True)
class FaultLabel:
    """Ground truth of a fault the digital twin injected, on a unit and/or a room."""

    kind: str
    start_ts: datetime
    end_ts: datetime
    unit: str | None = None
    room: str | None = None
    batch_id: str | None = None
    severity: str = "minor"
    detail: str = ""
    source: str = "twin"

    def __post_init__(self) -> None:
        _normalise(self)
        _one_of(self, "severity", SEVERITIES)
        if self.unit is None and self.room is None:
            raise ValueError(f"FaultLabel {self.kind!r} needs a unit or a room")
        if self.end_ts < self.start_ts:
            raise ValueError(f"FaultLabel {self.kind!r}: end_ts is before start_ts")


# ---------------------------------------------------------------------------------------------
# Schema


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite hands back naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None or getattr(value, "tzinfo", None) is UTC:  # records are normalised already
            return value
        return _to_utc("timestamp parameter", value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s", "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
})


def _check_in(column: str, allowed: Sequence[str]) -> CheckConstraint:
    values = ", ".join(f"'{v}'" for v in allowed)
    return CheckConstraint(f"{column} IS NULL OR {column} IN ({values})", name=column)


def _batch_fk(nullable: bool = False) -> Column[str]:
    return Column("batch_id", String(40), ForeignKey("batches.batch_id"), nullable=nullable)


batches_table = Table(
    "batches", metadata,
    Column("batch_id", String(40), primary_key=True),
    Column("unit", String(64), nullable=False), Column("site", String(64), nullable=False),
    Column("recipe", String(128), nullable=False), Column("kind", String(32), nullable=False),
    Column("start_ts", UTCDateTime(), nullable=False),
    Column("planned_end_ts", UTCDateTime(), nullable=False), Column("end_ts", UTCDateTime()),
    Column("status", String(16), nullable=False), Column("disposition", String(16)),
    Column("notes", Text, nullable=False),
    _check_in("kind", KINDS), _check_in("status", STATUSES), _check_in("disposition", DISPOSITIONS),
    Index(None, "unit", "start_ts"), Index(None, "start_ts"),
)
setpoints_table = Table(
    "setpoints", metadata,
    Column("id", Integer, primary_key=True), _batch_fk(),
    Column("tag", String(128), nullable=False), Column("ts", UTCDateTime(), nullable=False),
    Column("value", Float, nullable=False), Column("source", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    _check_in("source", SOURCES), Index(None, "batch_id", "ts"),
)
covariates_table = Table(
    "donor_covariates", metadata,
    _batch_fk(), Column("name", String(64), nullable=False),
    Column("value", Float), Column("text", String(256)),
    PrimaryKeyConstraint("batch_id", "name"),
)
offline_table = Table(
    "offline_results", metadata,
    Column("id", Integer, primary_key=True), _batch_fk(),
    Column("ts", UTCDateTime(), nullable=False), Column("analyte", String(64), nullable=False),
    Column("value", Float, nullable=False), Column("unit", String(32), nullable=False),
    Column("method", String(128), nullable=False),
    Index(None, "batch_id", "analyte", "ts"),
)
release_table = Table(
    "release_results", metadata,
    Column("id", Integer, primary_key=True), _batch_fk(),
    Column("attribute", String(64), nullable=False), Column("value", Float),
    Column("unit", String(32), nullable=False),
    Column("spec_low", Float), Column("spec_high", Float),
    Column("passed", Boolean, nullable=False), Column("ts", UTCDateTime(), nullable=False),
    Column("text", String(256)),
    Index(None, "batch_id", "attribute"),
)
fault_labels_table = Table(
    "fault_labels", metadata,
    Column("id", Integer, primary_key=True), Column("kind", String(64), nullable=False),
    Column("start_ts", UTCDateTime(), nullable=False),
    Column("end_ts", UTCDateTime(), nullable=False),
    Column("unit", String(64)), Column("room", String(64)), _batch_fk(nullable=True),
    Column("severity", String(16), nullable=False), Column("detail", Text, nullable=False),
    Column("source", String(32), nullable=False),
    _check_in("severity", SEVERITIES),
    CheckConstraint("unit IS NOT NULL OR room IS NOT NULL", name="unit_or_room"),
    Index(None, "unit", "start_ts"), Index(None, "room", "start_ts"), Index(None, "batch_id"),
)

# Returned frames: one column per dataclass field, in field order.
BATCH_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(), "unit": pl.String(), "site": pl.String(), "recipe": pl.String(),
    "kind": pl.Enum(KINDS), "start_ts": TS_DTYPE, "planned_end_ts": TS_DTYPE, "end_ts": TS_DTYPE,
    "status": pl.Enum(STATUSES), "disposition": pl.Enum(DISPOSITIONS), "notes": pl.String(),
}
SETPOINT_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(), "tag": pl.String(), "ts": TS_DTYPE, "value": pl.Float64(),
    "source": pl.Enum(SOURCES), "reason": pl.String(),
}
COVARIATE_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(), "name": pl.String(), "value": pl.Float64(), "text": pl.String(),
}
OFFLINE_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(), "ts": TS_DTYPE, "analyte": pl.String(), "value": pl.Float64(),
    "unit": pl.String(), "method": pl.String(),
}
RELEASE_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(), "attribute": pl.String(), "value": pl.Float64(), "unit": pl.String(),
    "spec_low": pl.Float64(), "spec_high": pl.Float64(), "passed": pl.Boolean(), "ts": TS_DTYPE,
    "text": pl.String(),
}
FAULT_SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.String(), "start_ts": TS_DTYPE, "end_ts": TS_DTYPE, "unit": pl.String(),
    "room": pl.String(), "batch_id": pl.String(), "severity": pl.Enum(SEVERITIES),
    "detail": pl.String(), "source": pl.String(),
}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=10000"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _window(window: tuple[datetime, datetime]) -> tuple[datetime, datetime]:
    start, end = _to_utc("overlapping[0]", window[0]), _to_utc("overlapping[1]", window[1])
    if end < start:
        raise ValueError(f"overlapping window ends before it starts: {window!r}")
    return start, end


def _overlaps(table: Table, window: tuple[datetime, datetime]) -> Any:
    """Half-open [start, end) overlap; a null end_ts means still open."""
    start, end = _window(window)
    return (table.c.start_ts < end) & or_(table.c.end_ts.is_(None), table.c.end_ts > start)


class Records:
    """The batch records store; `Records.open("records.db")` or `Records("postgresql://...")`."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine(url)
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", _sqlite_pragmas)
        metadata.create_all(self._engine)

    @classmethod
    def open(cls, path_or_url: str | os.PathLike[str]) -> Records:
        """Open a database URL, or a SQLite file path (parent folders are created)."""
        text = os.fspath(path_or_url)
        if "://" in text:
            return cls(text)
        Path(text).parent.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{text}")

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for modules that add their own tables to `metadata`."""
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writers --------------------------------------------------------------------------

    def _insert(self, table: Table, cls: type, records: Sequence[Any]) -> None:
        bad = [r for r in records if not isinstance(r, cls)]
        if bad:
            raise TypeError(f"expected {cls.__name__} records, got {type(bad[0]).__name__}")
        if not records:
            return
        names = [f.name for f in fields(cls)]
        rows = [{n: getattr(r, n) for n in names} for r in records]
        try:
            with self._engine.begin() as conn:
                conn.execute(table.insert(), rows)
        except IntegrityError as exc:
            raise self._explain(table, rows, exc) from exc

    def _explain(self, table: Table, rows: list[dict[str, Any]], exc: IntegrityError) -> ValueError:
        """Turn a constraint violation into an error that names the offending batch ids."""
        ids = sorted({r["batch_id"] for r in rows if r["batch_id"] is not None})
        with self._engine.connect() as conn:
            known = set(conn.scalars(select(batches_table.c.batch_id)
                                     .where(batches_table.c.batch_id.in_(ids))))
        if table is batches_table:
            repeated = {b for b, n in Counter(r["batch_id"] for r in rows).items() if n > 1}
            dup = sorted(known | repeated)
            if dup:
                return ValueError(f"batch id(s) already exist: {', '.join(dup)}")
        elif missing := [b for b in ids if b not in known]:
            return ValueError(f"{table.name}: unknown batch id(s): {', '.join(missing)}")
        return ValueError(f"{table.name}: {exc.orig}")

    def add_batches(self, batches: Sequence[BatchRecord]) -> None:
        self._insert(batches_table, BatchRecord, batches)

    def add_setpoints(self, changes: Sequence[SetpointChange]) -> None:
        self._insert(setpoints_table, SetpointChange, changes)

    def add_covariates(self, covariates: Sequence[DonorCovariate]) -> None:
        self._insert(covariates_table, DonorCovariate, covariates)

    def add_offline_results(self, results: Sequence[OfflineResult]) -> None:
        self._insert(offline_table, OfflineResult, results)

    def add_release_results(self, results: Sequence[ReleaseResult]) -> None:
        self._insert(release_table, ReleaseResult, results)

    def add_fault_labels(self, labels: Sequence[FaultLabel]) -> None:
        self._insert(fault_labels_table, FaultLabel, labels)

    def update_batch(self, batch_id: str, **changes: Any) -> BatchRecord:
        """Change end_ts/status/disposition/notes; returns the updated, re-validated record."""
        if unknown := sorted(set(changes) - _UPDATABLE):
            raise ValueError(f"update_batch cannot change {unknown}; allowed: {sorted(_UPDATABLE)}")
        with self._engine.begin() as conn:
            new = replace(self._get(conn, batch_id), **changes)
            conn.execute(update(batches_table).where(batches_table.c.batch_id == batch_id)
                         .values({k: getattr(new, k) for k in changes}))
        return new

    # -- readers --------------------------------------------------------------------------

    def _frame(self, table: Table, schema: dict[str, pl.DataType], *where: Any,
               order: Sequence[str] = ()) -> pl.DataFrame:
        stmt = select(*(table.c[n] for n in schema)).where(*where)
        stmt = stmt.order_by(*(table.c[n] for n in order), *table.primary_key.columns)
        with self._engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(stmt)]
        return pl.DataFrame(rows, schema=schema, orient="row")

    @staticmethod
    def _eq(table: Table, **values: Any) -> list[Any]:
        return [table.c[k] == v for k, v in values.items() if v is not None]

    def _get(self, conn: Any, batch_id: str) -> BatchRecord:
        t = batches_table
        row = conn.execute(select(t).where(t.c.batch_id == batch_id)).first()
        if row is None:
            raise KeyError(f"unknown batch id: {batch_id}")
        return BatchRecord(**row._mapping)

    def get_batch(self, batch_id: str) -> BatchRecord:
        with self._engine.connect() as conn:
            return self._get(conn, batch_id)

    def batches(self, unit: str | None = None, status: str | None = None,
                overlapping: tuple[datetime, datetime] | None = None) -> pl.DataFrame:
        """Batches (BATCH_SCHEMA) by start_ts; `overlapping` keeps those open in [start, end)."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        where = self._eq(batches_table, unit=unit, status=status)
        if overlapping is not None:
            where.append(_overlaps(batches_table, overlapping))
        return self._frame(batches_table, BATCH_SCHEMA, *where, order=("start_ts",))

    def batches_active_at(self, ts: datetime,
                          units: Iterable[str] | None = None) -> list[BatchRecord]:
        """Batches started (not merely planned) and not yet ended at `ts`, on `units` if given."""
        t, at = batches_table, _to_utc("ts", ts)
        stmt = select(t).where(t.c.start_ts <= at, or_(t.c.end_ts.is_(None), t.c.end_ts > at),
                               t.c.status != "planned").order_by(t.c.unit, t.c.start_ts)
        if units is not None:
            stmt = stmt.where(t.c.unit.in_([units] if isinstance(units, str) else list(units)))
        with self._engine.connect() as conn:
            return [BatchRecord(**row._mapping) for row in conn.execute(stmt)]

    def setpoints(self, batch_id: str | None = None) -> pl.DataFrame:
        """Setpoint changes (SETPOINT_SCHEMA) by batch_id, ts, insertion order."""
        where = self._eq(setpoints_table, batch_id=batch_id)
        return self._frame(setpoints_table, SETPOINT_SCHEMA, *where, order=("batch_id", "ts"))

    def setpoints_in_force(self, batch_id: str, ts: datetime) -> dict[str, float]:
        """Per tag, the latest change at or before `ts` (the later-inserted one on a tie)."""
        at = _to_utc("ts", ts)
        t = setpoints_table
        stmt = (select(t.c.tag, t.c.value).where(t.c.batch_id == batch_id, t.c.ts <= at)
                .order_by(t.c.ts, t.c.id))
        with self._engine.connect() as conn:
            self._get(conn, batch_id)
            return {tag: value for tag, value in conn.execute(stmt)}

    def covariates(self, batch_id: str | None = None, wide: bool = False) -> pl.DataFrame:
        """Long (COVARIATE_SCHEMA) or wide: batch_id + one column per name (text -> String)."""
        where = self._eq(covariates_table, batch_id=batch_id)
        long = self._frame(covariates_table, COVARIATE_SCHEMA, *where, order=("batch_id", "name"))
        if not wide:
            return long
        textual = set(long.filter(pl.col("text").is_not_null())["name"])
        schema: dict[str, pl.DataType] = {"batch_id": pl.String()}
        for name in sorted(set(long["name"])):
            schema[name] = pl.String() if name in textual else pl.Float64()
        rows: dict[str, dict[str, Any]] = {}
        for b, name, value, text in long.iter_rows():
            rows.setdefault(b, {"batch_id": b})[name] = text if name in textual else value
        return pl.DataFrame(list(rows.values()), schema=schema)

    def offline_results(self, batch_id: str | None = None,
                        analyte: str | None = None) -> pl.DataFrame:
        """Offline results (OFFLINE_SCHEMA) by batch_id, ts."""
        where = self._eq(offline_table, batch_id=batch_id, analyte=analyte)
        return self._frame(offline_table, OFFLINE_SCHEMA, *where, order=("batch_id", "ts"))

    def release_results(self, batch_id: str | None = None) -> pl.DataFrame:
        """Release results (RELEASE_SCHEMA) by batch_id, attribute."""
        where = self._eq(release_table, batch_id=batch_id)
        return self._frame(release_table, RELEASE_SCHEMA, *where, order=("batch_id", "attribute"))

    def fault_labels(self, unit: str | None = None, room: str | None = None,
                     batch_id: str | None = None,
                     overlapping: tuple[datetime, datetime] | None = None) -> pl.DataFrame:
        """Fault labels (FAULT_SCHEMA) by start_ts; `overlapping` as in `batches`."""
        where = self._eq(fault_labels_table, unit=unit, room=room, batch_id=batch_id)
        if overlapping is not None:
            where.append(_overlaps(fault_labels_table, overlapping))
        return self._frame(fault_labels_table, FAULT_SCHEMA, *where, order=("start_ts",))
