"""GMP audit trail: append-only, hash-chained entries (who, what, when, old -> new, why).

Each entry stores the SHA-256 of its own content and of the previous entry, so an altered, removed
or re-ordered row breaks the chain and `verify` names it. Database triggers refuse UPDATE and
DELETE of audit rows on SQLite and PostgreSQL; appends are serialised across processes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    func,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import OperationalError

from plant.audit_verify import GENESIS, ChainCheck, check_head, entry_hash
from plant.canonical import canonical_json, record_hash
from plant.guards import GUARDED, append_only, install_guards, missing_guards
from plant.records import Records, UTCDateTime, metadata
from plant.samples import TS_DTYPE

__all__ = ["AUDIT_SCHEMA", "GENESIS", "AuditEntry", "AuditTrail", "VerifyResult", "audit_table",
           "canonical_json", "entry_hash", "install_guards", "record_hash"]

UTC = timezone.utc
_HELD = threading.local()  # databases whose append lock this thread holds
_PG_LOCK_KEY = 0x63_77_61_75_64_69_74  # "cwaudit": advisory lock id that serialises appends
_LIMITS = {"actor": 128, "action": 64, "entity": 64, "entity_id": 128}

# ---------------------------------------------------------------------------------------------
# Schema and append-only guards

audit_table = Table(
    "audit_trail", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("ts", UTCDateTime(), nullable=False),
    Column("actor", String(_LIMITS["actor"]), nullable=False),
    Column("action", String(_LIMITS["action"]), nullable=False),
    Column("entity", String(_LIMITS["entity"]), nullable=False),
    Column("entity_id", String(_LIMITS["entity_id"]), nullable=False),
    Column("old", Text), Column("new", Text), Column("reason", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Index(None, "entity", "entity_id"), Index(None, "actor"), Index(None, "ts"),
)
# The chain head, one row: authoritative for the next append, so deleting the newest entries
# leaves a gap that `verify` reports instead of being silently re-chained over.
audit_head_table = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False), Column("hash", String(64), nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

append_only(audit_table)
# built once: an append is three statements, and building them cost as much as running them
_HEAD = select(audit_head_table.c.seq, audit_head_table.c.hash)
_INSERT = audit_table.insert()
_MOVE_HEAD = (update(audit_head_table).where(audit_head_table.c.id == 1)
              .values(seq=bindparam("new_seq"), hash=bindparam("new_hash")))

# ---------------------------------------------------------------------------------------------
# Entries


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit entry; `old`/`new` are canonical JSON (None: no value), `ts` is UTC."""

    seq: int
    ts: datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    old: str | None
    new: str | None
    reason: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of `AuditTrail.verify`: each problem names the entry seq and what is wrong."""

    ok: bool
    problems: list[str]
    entries: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    warnings: list[str] = field(default_factory=list)


AUDIT_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(), "ts": TS_DTYPE, "actor": pl.String(), "action": pl.String(),
    "entity": pl.String(), "entity_id": pl.String(), "old": pl.String(), "new": pl.String(),
    "reason": pl.String(), "prev_hash": pl.String(), "hash": pl.String(),
}


def _text_field(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"audit entry {name} must be a non-empty string, got {value!r}")
    if len(value) > _LIMITS[name]:
        raise ValueError(f"audit entry {name} is longer than {_LIMITS[name]}: {value[:40]!r}...")
    return value


class AuditTrail:
    """Append, search, export and verify the audit trail of a `Records` database."""

    lock_timeout_s = 10.0  # how long an append waits for another process's append to finish

    def __init__(self, records: Records) -> None:
        self._engine = records.engine
        self._sqlite = self._engine.dialect.name == "sqlite"
        # plant.audit may be imported after Records created the other tables; add ours (checkfirst)
        metadata.create_all(self._engine, tables=[audit_table, audit_head_table])
        with self.transaction() as conn:
            if conn.execute(select(audit_head_table.c.id)).first() is None:
                last = conn.execute(select(audit_table.c.seq, audit_table.c.hash)
                                    .order_by(audit_table.c.seq.desc()).limit(1)).first()
                seq, digest = (last.seq, last.hash) if last is not None else (0, GENESIS)
                conn.execute(audit_head_table.insert().values(id=1, seq=seq, hash=digest))

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction that holds the append lock; pass it to `append(conn=...)`.

        Use it to change a record and put the change on the audit trail atomically.
        """
        held = _HELD.__dict__.setdefault("urls", set())
        key = str(self._engine.url)
        if key in held:
            # a second connection would wait for our own lock: 10 s on SQLite, forever on PG
            raise RuntimeError("audit transaction already open in this thread: pass its "
                               "connection as append(..., conn=conn) instead of nesting")
        held.add(key)
        try:
            with self._locked() as conn:
                yield conn
        finally:
            held.discard(key)

    @contextmanager
    def _locked(self) -> Iterator[Connection]:
        if self._sqlite:
            # BEGIN IMMEDIATE takes the write lock up front, so no other process can append
            # between our read of the chain head and our insert.
            with self._engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                _begin_immediate(conn, self.lock_timeout_s)
                try:
                    yield conn
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
        else:
            with self._engine.begin() as conn:
                conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
                yield conn

    def append(self, actor: str, action: str, entity: str, entity_id: str, old: object = None,
               new: object = None, reason: str = "", *, conn: Connection | None = None) -> AuditEntry:
        """Append one entry (old/new JSON-serialised); inside `transaction()` when `conn` given."""
        values = {name: _text_field(name, value) for name, value in
                  (("actor", actor), ("action", action), ("entity", entity), ("entity_id", entity_id))}
        if not isinstance(reason, str):
            raise TypeError(f"audit entry reason must be a string, got {reason!r}")
        old_s = None if old is None else canonical_json(old)
        new_s = None if new is None else canonical_json(new)
        if conn is None:
            with self.transaction() as own:
                return self._append(own, values, old_s, new_s, reason)
        return self._append(conn, values, old_s, new_s, reason)

    def _append(self, conn: Connection, v: dict[str, str], old: str | None, new: str | None,
                reason: str) -> AuditEntry:
        head = conn.execute(_HEAD).first()
        if head is None:  # the head row was deleted: fall back to the newest entry
            head = conn.execute(select(audit_table.c.seq, audit_table.c.hash)
                                .order_by(audit_table.c.seq.desc()).limit(1)).first()
            conn.execute(audit_head_table.insert().values(id=1, seq=0, hash=GENESIS))
        seq, prev = (head.seq + 1, head.hash) if head is not None else (1, GENESIS)
        ts = datetime.now(UTC)
        digest = entry_hash(seq, ts, v["actor"], v["action"], v["entity"], v["entity_id"],
                            old, new, reason, prev)
        entry = AuditEntry(seq, ts, v["actor"], v["action"], v["entity"], v["entity_id"], old, new,
                           reason, prev, digest)
        conn.execute(_INSERT, {f: getattr(entry, f) for f in AUDIT_SCHEMA})
        conn.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": digest})
        return entry

    # -- reading ---------------------------------------------------------------------------

    def _where(self, entity: str | None, entity_id: str | None, actor: str | None,
               since: datetime | None, until: datetime | None, text: str | None) -> list[Any]:
        t = audit_table
        where = [t.c[k] == v for k, v in
                 (("entity", entity), ("entity_id", entity_id), ("actor", actor)) if v is not None]
        if since is not None:
            where.append(t.c.ts >= _aware("since", since))
        if until is not None:
            where.append(t.c.ts < _aware("until", until))
        if text:
            cols = (t.c.actor, t.c.action, t.c.entity, t.c.entity_id, t.c.old, t.c.new, t.c.reason)
            where.append(or_(*(c.icontains(text, autoescape=True) for c in cols)))
        return where

    def entries(self, entity: str | None = None, entity_id: str | None = None,
                actor: str | None = None, since: datetime | None = None,
                until: datetime | None = None, text: str | None = None) -> pl.DataFrame:
        """Entries (AUDIT_SCHEMA) by seq; since <= ts < until; `text`: case-insensitive search."""
        stmt = (select(*(audit_table.c[n] for n in AUDIT_SCHEMA))
                .where(*self._where(entity, entity_id, actor, since, until, text))
                .order_by(audit_table.c.seq))
        with self._engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(stmt)]
        return pl.DataFrame(rows, schema=AUDIT_SCHEMA, orient="row")

    def get(self, seq: int) -> AuditEntry:
        """The entry at `seq`; KeyError naming it when there is none."""
        with self._engine.connect() as conn:
            row = conn.execute(select(audit_table).where(audit_table.c.seq == seq)).first()
        if row is None:
            raise KeyError(f"no audit entry {seq}")
        return AuditEntry(**row._mapping)

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest entry: write it down elsewhere as an anchor for `verify`."""
        with self._engine.connect() as conn:
            row = conn.execute(select(audit_head_table.c.seq, audit_head_table.c.hash)).first()
        return (0, GENESIS) if row is None else (row.seq, row.hash)

    def export(self, path: str | Path, fmt: str | None = None, **filters: Any) -> Path:
        """Write entries (filters as in `entries`) to CSV or Parquet (from the suffix or `fmt`)."""
        out = Path(path)
        kind = (fmt or out.suffix.lstrip(".")).lower()
        if kind not in ("csv", "parquet"):
            raise ValueError(f"{out}: export format must be csv or parquet, got {kind!r}")
        frame = self.entries(**filters)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        if kind == "csv":
            frame.write_csv(tmp)
        else:
            frame.write_parquet(tmp)
        tmp.replace(out)  # atomic: a reader never sees half an export
        return out

    # -- verification ----------------------------------------------------------------------

    def verify(self, anchors: Iterable[tuple[int, str]] = ()) -> VerifyResult:
        """Recompute the chain; name every altered, missing, re-ordered or unanchored entry.

        `anchors` are (seq, hash) pairs recorded outside the database (see `head`): they catch
        an attacker who rewrote the whole chain after an entry, which no in-database check can.
        """
        t = audit_table
        chain = ChainCheck()
        with self._engine.connect() as conn:
            for table in GUARDED:
                if _exists(conn, table):
                    chain.problems += [f"append-only trigger {name} on {table} is missing "
                                       "(dropped?)" for name in missing_guards(conn, table)]
            head = conn.execute(select(audit_head_table.c.seq, audit_head_table.c.hash)).first()
            # ts as stored (text on SQLite), so an edited, unparseable one is reported, not raised
            cols = [c if c.name != "ts" else type_coerce(c, String).label("ts") for c in t.c]
            for row in conn.execution_options(yield_per=2000).execute(
                    select(*cols).order_by(t.c.seq)):
                chain.feed(row)
            for seq, digest in anchors:
                stored = conn.scalar(select(t.c.hash).where(t.c.seq == seq))
                if stored is None:
                    chain.problems.append(f"anchor entry {seq} is missing from the audit trail")
                elif stored != digest:
                    chain.problems.append(f"entry {seq}: hash differs from the anchor "
                                          f"{digest[:12]}... kept outside the database "
                                          "(chain rewritten?)")
        problems = chain.problems + check_head(head, chain.last_seq, chain.last_hash)
        head_seq, head_hash = (head.seq, head.hash) if head else (chain.last_seq, chain.last_hash)
        return VerifyResult(not problems, problems, chain.count, head_seq, head_hash,
                            chain.warnings)


def _begin_immediate(conn: Connection, timeout_s: float) -> None:
    """BEGIN IMMEDIATE, retrying every ~1 ms: SQLite's own busy handler backs off to sleeps of
    up to 100 ms, which let one busy writer starve the others (see bench/bench_audit.py)."""
    deadline = time.monotonic() + timeout_s
    conn.exec_driver_sql("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise TimeoutError(f"audit trail: write lock not free after {timeout_s:.0f} s "
                                       f"({exc.orig})") from exc
                time.sleep(random.uniform(0.0005, 0.002))
    finally:
        conn.exec_driver_sql("PRAGMA busy_timeout = 10000")  # Records' setting, for the pool


def _exists(conn: Connection, table: str) -> bool:
    return conn.dialect.has_table(conn, table)


def _aware(name: str, ts: datetime) -> datetime:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {ts!r}")
    return ts.astimezone(UTC)


def entry_from_row(row: Mapping[str, Any]) -> AuditEntry:
    """An `AuditEntry` from an `entries()` row dict."""
    return AuditEntry(**{k: row[k] for k in AUDIT_SCHEMA})
