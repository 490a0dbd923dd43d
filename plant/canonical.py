"""Canonical JSON and record hashes: one spelling per value, so a hash means one content."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any
from uuid import UUID

import polars as pl

UTC = timezone.utc


def _plain(obj: Any, where: str) -> Any:
    """`obj` as JSON-native values with a single spelling (UTC times, sorted sets, no NaN)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, Enum):
        return _plain(obj.value, where)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        # JSON has no NaN/inf; spell them as strings so hashing never fails on a bad reading
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, datetime):
        if obj.tzinfo is None or obj.utcoffset() is None:
            raise ValueError(f"{where}: naive datetime {obj!r}; use timezone-aware UTC")
        return obj.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, (Decimal, UUID, PurePath)):
        return str(obj)
    if isinstance(obj, bytes):
        return obj.hex()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(obj)}
    if isinstance(obj, pl.DataFrame):
        return {"columns": obj.columns, "rows": _plain(obj.rows(), f"{where}.rows")}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        items = [_plain(v, f"{where}{{}}") for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "_asdict"):  # namedtuples and SQLAlchemy rows
        return _plain(obj._asdict(), where)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _plain(obj.item(), where)
    raise TypeError(f"{where}: cannot serialise {type(obj).__name__} for the audit trail")


def canonical_json(obj: object) -> str:
    """One JSON spelling per value: sorted keys, no spaces, UTC ISO times, sorted sets."""
    return json.dumps(_plain(obj, "value"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def record_hash(obj: object) -> str:
    """SHA-256 (hex) of the canonical JSON of a record: what e-signatures bind to."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()
