"""`cellwatch import`: load a site's exported history (CSV or Parquet) into a fresh historian + records store.

Formats (docs/import.md has the reference with examples):
  telemetry   timestamp, unit, tag, value[, quality][, status]     long format, one row per sample
  batches     batch_id, unit, recipe, start[, end][, planned_end][, kind][, disposition][, harvest_viable_cells]
  offline     batch_id, timestamp, analyte, value[, unit][, method]                      (optional)
  covariates  batch_id, name[, value][, text]                                             (optional)
  setpoints   batch_id, timestamp, tag, value[, source]                                   (optional)
  deviations  unit, kind, start, end[, batch_id][, severity]                              (optional)
Timestamps are ISO 8601 with a UTC offset (or Parquet timestamps with a time zone). Every error names the
file, the row (1-based data row; CSV line = row + 1) and the column.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import polars as pl

from plant.historian import Historian
from plant.records import (
    KINDS, SOURCES, BatchRecord, DonorCovariate, FaultLabel, OfflineResult, Records, ReleaseResult, SetpointChange,
    coi_id, valid_coi,
)
from plant.samples import QUALITY_DTYPE, SAMPLE_SCHEMA, TS_DTYPE, Quality
from plant.site import Site

REQUIRED = {
    "telemetry": ("timestamp", "unit", "tag", "value"),
    "batches": ("batch_id", "unit", "recipe", "start"),
    "offline": ("batch_id", "timestamp", "analyte", "value"),
    "covariates": ("batch_id", "name"),
    "setpoints": ("batch_id", "timestamp", "tag", "value"),
    "deviations": ("unit", "kind", "start", "end"),
}
_CHUNK_ROWS = 2_000_000  # telemetry rows per historian append: bounded memory for multi-GB exports


class ImportError_(ValueError):  # noqa: N801 (ImportError is a builtin)
    """A problem in an import file: names the file, the row and the column."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    batches: int
    samples: int
    offline: int
    covariates: int
    setpoints: int
    deviations: int
    renamed_ids: int  # site batch ids that were not chain-of-identity ids and got one


def _scan(path: Path) -> pl.LazyFrame:
    suffix = path.suffix.lower()
    if not path.exists():
        raise ImportError_(f"{path}: file not found")
    if suffix == ".parquet":
        return pl.scan_parquet(path)
    if suffix in (".csv", ".txt"):
        return pl.scan_csv(path, infer_schema=False)  # all text: we parse and name bad cells ourselves
    raise ImportError_(f"{path}: unknown format {suffix!r}; use .csv or .parquet")


def _need(path: Path, kind: str, columns: list[str]) -> None:
    missing = [c for c in REQUIRED[kind] if c not in columns]
    if missing:
        raise ImportError_(f"{path}: missing column(s) {missing}; the {kind} file needs {list(REQUIRED[kind])} "
                           f"(found {columns})")


def _line(path: Path, row: int) -> str:
    return f"row {row}" + (f" (line {row + 1})" if path.suffix.lower() != ".parquet" else "")


def _bad(path: Path, frame: pl.DataFrame, ok: pl.Series, column: str, what: str, offset: int = 0) -> None:
    """Raise naming the first row where `ok` is False."""
    bad = (~ok.fill_null(False)).arg_true()
    if bad.len():
        i = int(bad[0])
        raise ImportError_(f"{path}: {_line(path, offset + i + 1)}, column {column!r}: {what} "
                           f"(value: {frame[column][i]!r})")


def _time(path: Path, df: pl.DataFrame, column: str, offset: int = 0, optional: bool = False) -> pl.Series:
    s = df[column]
    if isinstance(s.dtype, pl.Datetime):
        if s.dtype.time_zone is None:
            raise ImportError_(f"{path}: column {column!r} holds timestamps without a time zone; store UTC times")
        return s.dt.convert_time_zone("UTC").cast(TS_DTYPE)
    text = s.cast(pl.String).str.strip_chars()
    parsed = text.str.to_datetime(time_unit="us", strict=False, time_zone="UTC")
    has_zone = text.str.contains(r"(Z|[+-]\d\d:?\d\d)$")
    ok = (parsed.is_not_null() & has_zone) | (text.is_null() | (text == "")) if optional else \
        parsed.is_not_null() & has_zone
    _bad(path, df, ok, column, "not an ISO 8601 time with a UTC offset (e.g. 2025-01-06T08:00:00Z)", offset)
    return parsed.cast(TS_DTYPE)


def _number(path: Path, df: pl.DataFrame, column: str, offset: int = 0, optional: bool = True) -> pl.Series:
    s = df[column]
    if s.dtype.is_numeric():
        return s.cast(pl.Float64)
    text = s.cast(pl.String).str.strip_chars()
    empty = text.is_null() | (text == "")
    parsed = text.cast(pl.Float64, strict=False)
    ok = parsed.is_not_null() | (empty if optional else pl.Series([False] * len(s)))
    _bad(path, df, ok, column, "not a number", offset)
    return parsed


def _text(df: pl.DataFrame, column: str) -> pl.Series:
    if column not in df.columns:
        return pl.Series(column, [None] * df.height, dtype=pl.String)
    s = df[column].cast(pl.String).str.strip_chars()
    return s.replace("", None)


def _telemetry_chunk(path: Path, df: pl.DataFrame, site: Site, offset: int) -> pl.DataFrame:
    unit, tag = _text(df, "unit"), _text(df, "tag")
    _bad(path, df, unit.is_in(list(site.units)), "unit", f"not a unit of the site (known: {', '.join(site.units)})",
         offset)
    full = unit + "." + tag
    _bad(path, df, full.is_in(list(site.tags)), "tag", "not a tag of this unit in the site file", offset)
    value = _number(path, df, "value", offset)
    ts = _time(path, df, "timestamp", offset)
    if "quality" in df.columns:
        q = _text(df, "quality").str.to_uppercase()
        _bad(path, df, q.is_null() | q.is_in([x.value for x in Quality]), "quality",
             f"not one of {[x.value for x in Quality]}", offset)
        quality = q.fill_null(pl.Series([Quality.GOOD.value if v is not None else Quality.BAD.value for v in value]))
    else:  # no quality column: a sample without a value is BAD, never a zero
        quality = pl.Series([Quality.GOOD.value if v is not None else Quality.BAD.value for v in value])
    return pl.DataFrame({
        "ts": ts, "tag": full, "value": value, "quality": quality.cast(QUALITY_DTYPE), "status": _text(df, "status"),
        "server_ts": pl.Series([None] * df.height, dtype=TS_DTYPE),
        "received_ts": pl.Series([None] * df.height, dtype=TS_DTYPE),
    }).select(list(SAMPLE_SCHEMA))


def import_telemetry(path: Path, site: Site, hist: Historian) -> int:
    """Validate and append a telemetry file chunk by chunk; returns samples stored."""
    lf = _scan(path)
    _need(path, "telemetry", lf.collect_schema().names())
    n = 0
    offset = 0
    while True:
        chunk = lf.slice(offset, _CHUNK_ROWS).collect()
        if chunk.height == 0:
            break
        n += hist.append(_telemetry_chunk(path, chunk, site, offset))
        offset += chunk.height
        if chunk.height < _CHUNK_ROWS:
            break
    return n


def _read(path: Path | None, kind: str) -> pl.DataFrame | None:
    if path is None:
        return None
    df = _scan(path).collect()
    _need(path, kind, df.columns)
    return df


def _id_map(path: Path, df: pl.DataFrame, site: Site, key: bytes) -> dict[str, str]:
    ids = _text(df, "batch_id")
    _bad(path, df, ids.is_not_null(), "batch_id", "empty")
    dup = ids.is_duplicated()
    _bad(path, df, ~dup, "batch_id", "appears twice")
    out, seq = {}, 0
    for b in ids:
        if valid_coi(b):
            out[b] = b
        else:  # a site's own id: issue a pseudonymous chain-of-identity id, keep the site id in the notes
            while (new := coi_id(site.info.code, seq, key)) in out.values():
                seq += 1
            out[b] = new
            seq += 1
    return out


def _batches(path: Path, df: pl.DataFrame, site: Site, ids: dict[str, str]) -> tuple[list[BatchRecord],
                                                                                     list[ReleaseResult]]:
    start, end = _time(path, df, "start"), _time(path, df, "end", optional=True) if "end" in df.columns else None
    planned = _time(path, df, "planned_end", optional=True) if "planned_end" in df.columns else None
    cells = _number(path, df, "harvest_viable_cells") if "harvest_viable_cells" in df.columns else None
    unit, recipe, kind = _text(df, "unit"), _text(df, "recipe"), _text(df, "kind").fill_null("production")
    _bad(path, df, unit.is_in(list(site.units)), "unit", f"not a unit of the site (known: {', '.join(site.units)})")
    _bad(path, df, recipe.is_not_null(), "recipe", "empty")
    _bad(path, df, kind.is_in(list(KINDS)), "kind", f"not one of {list(KINDS)}")
    disp = _text(df, "disposition")
    _bad(path, df, disp.is_null() | disp.is_in(["released", "rejected"]), "disposition", "not released/rejected")
    batches, release = [], []
    for i, b in enumerate(_text(df, "batch_id")):
        e = end[i] if end is not None else None
        harvest = site.recipes[recipe[i]].harvest_day if recipe[i] in site.recipes else 14.0
        pe = (planned[i] if planned is not None else None) or e or start[i] + timedelta(days=harvest)
        try:
            rec = BatchRecord(ids[b], unit[i], site.info.code, recipe[i], kind[i], start[i], pe, e,
                              "harvested" if e is not None else "running", disp[i] if e is not None else None,
                              "" if ids[b] == b else f"site batch id: {b}")
        except ValueError as exc:
            raise ImportError_(f"{path}: {_line(path, i + 1)}: {exc}") from None
        batches.append(rec)
        if cells is not None and cells[i] is not None and e is not None:
            release.append(ReleaseResult(ids[b], "TOTAL_VIABLE_CELLS", float(cells[i]), "cells", None, None, True, e))
    return batches, release


def _mapped(path: Path, df: pl.DataFrame, ids: dict[str, str]) -> list[str]:
    b = _text(df, "batch_id")
    _bad(path, df, b.is_in(list(ids)), "batch_id", "not in the batches file")
    return [ids[x] for x in b]


def import_history(out_dir: Path, site: Site, telemetry: Path, batches: Path, offline: Path | None = None,
                   covariates: Path | None = None, setpoints: Path | None = None,
                   deviations: Path | None = None) -> ImportResult:
    """Validate every file, then write out_dir/historian and out_dir/records.db (out_dir must be empty)."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ImportError_(f"{out_dir}: already holds data; import into an empty folder")
    key = os.environ.get("CELLWATCH_COI_KEY", f"cellwatch-import-{site.info.code}").encode().ljust(16, b"-")
    bdf = _read(batches, "batches")
    assert bdf is not None
    ids = _id_map(batches, bdf, site, key)
    brecs, release = _batches(batches, bdf, site, ids)
    frames = {k: _read(p, k) for k, p in (("offline", offline), ("covariates", covariates),
                                          ("setpoints", setpoints), ("deviations", deviations))}
    off, cov, sps, devs = [], [], [], []
    if (df := frames["offline"]) is not None:
        b, ts, v = _mapped(offline, df, ids), _time(offline, df, "timestamp"), _number(offline, df, "value", 0, False)
        an, un, me = _text(df, "analyte"), _text(df, "unit").fill_null(""), _text(df, "method").fill_null("")
        off = [OfflineResult(b[i], ts[i], an[i], float(v[i]), un[i], me[i]) for i in range(df.height)]
    if (df := frames["covariates"]) is not None:
        b, name = _mapped(covariates, df, ids), _text(df, "name")
        v = _number(covariates, df, "value") if "value" in df.columns else pl.Series([None] * df.height)
        tx = _text(df, "text")
        _bad(covariates, df, v.is_not_null() | tx.is_not_null(), "value", "neither value nor text given")
        cov = [DonorCovariate(b[i], name[i], v[i], tx[i]) for i in range(df.height)]
    if (df := frames["setpoints"]) is not None:
        b, ts, v = _mapped(setpoints, df, ids), _time(setpoints, df, "timestamp"), _number(setpoints, df, "value",
                                                                                          0, False)
        tag, src = _text(df, "tag"), _text(df, "source").fill_null("recipe")
        _bad(setpoints, df, src.is_in(list(SOURCES)), "source", f"not one of {list(SOURCES)}")
        sps = [SetpointChange(b[i], tag[i], ts[i], float(v[i]), src[i]) for i in range(df.height)]
    if (df := frames["deviations"]) is not None:
        s, e = _time(deviations, df, "start"), _time(deviations, df, "end")
        unit, kind = _text(df, "unit"), _text(df, "kind")
        _bad(deviations, df, unit.is_in(list(site.units)), "unit", "not a unit of the site")
        _bad(deviations, df, e >= s, "end", "before start")
        bid = [ids.get(x) if x else None for x in _text(df, "batch_id")]
        sev = _text(df, "severity").fill_null("major")
        devs = [FaultLabel(kind[i], s[i], e[i], unit=unit[i], batch_id=bid[i], severity=sev[i], source="site")
                for i in range(df.height)]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        n = import_telemetry(telemetry, site, Historian(out_dir / "historian"))  # validated chunk by chunk
        with Records.open(out_dir / "records.db") as rec:
            rec.add_batches(brecs)
            rec.add_release_results(release)
            rec.add_offline_results(off)
            rec.add_covariates(cov)
            rec.add_setpoints(sps)
            rec.add_fault_labels(devs)
    except BaseException:
        for child in out_dir.iterdir():  # the folder was empty: leave nothing half-imported behind
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    renamed = sum(1 for k, v in ids.items() if k != v)
    return ImportResult(len(brecs), n, len(off), len(cov), len(sps), len(devs), renamed)
