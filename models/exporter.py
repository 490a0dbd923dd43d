"""`cellwatch export`: write a history (historian + records) in the documented import format (docs/import.md)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl

from plant.historian import Historian
from plant.records import Records
from plant.site import Site

ISO = "%Y-%m-%dT%H:%M:%S%.6fZ"


def _write(df: pl.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df = df.with_columns([pl.col(c).dt.strftime(ISO) for c, t in df.schema.items() if isinstance(t, pl.Datetime)])
        df.write_csv(path)
    else:
        df.write_parquet(path, compression="zstd")
    return path


def export_history(data_dir: Path, out_dir: Path, site: Site, fmt: str = "parquet",
                   batch_ids: list[str] | None = None) -> dict[str, Path]:
    """Telemetry of the site's units (long format) and the batch records, one file per kind (some batches only,
    with their telemetry between start and end, when batch_ids is given)."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"format must be parquet or csv, got {fmt!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = Records.open(data_dir / "records.db")
    hist = Historian(data_dir / "historian")
    b = rec.batches()
    if batch_ids is None:
        tags = [t for u in site.units for t in (x.name for x in site.unit_tags(u))]
        raw = hist.read(tags)
    else:
        b = b.filter(pl.col("batch_id").is_in(batch_ids))
        raw = pl.concat([hist.read([t.name for t in site.unit_tags(r["unit"])], r["start_ts"],
                                   r["end_ts"] + timedelta(microseconds=1) if r["end_ts"] else None)
                         for r in b.iter_rows(named=True)])
    keep = pl.col("batch_id").is_in(b["batch_id"].implode())
    tel = (raw
           .select(timestamp="ts", unit=pl.col("tag").str.split(".").list.first(),
                   tag=pl.col("tag").str.split(".").list.last(), value="value",
                   quality=pl.col("quality").cast(pl.String), status="status"))
    cells = rec.release_results().filter(pl.col("attribute") == "TOTAL_VIABLE_CELLS").select(
        "batch_id", harvest_viable_cells="value")
    batches = b.join(cells, on="batch_id", how="left", maintain_order="left").select(
        "batch_id", "unit", "recipe", start="start_ts", end="end_ts", planned_end="planned_end_ts",
        kind=pl.col("kind").cast(pl.String), disposition=pl.col("disposition").cast(pl.String),
        harvest_viable_cells="harvest_viable_cells")
    off = rec.offline_results().filter(keep).select("batch_id", timestamp="ts", analyte="analyte", value="value",
                                                    unit="unit", method="method")
    cov = rec.covariates().filter(keep)
    sps = rec.setpoints().filter(keep).select("batch_id", timestamp="ts", tag="tag", value="value",
                                              source=pl.col("source").cast(pl.String))
    devs = rec.fault_labels().filter(pl.col("unit").is_not_null(), keep | pl.col("batch_id").is_null()).select(
        "unit", "kind", start="start_ts", end="end_ts", batch_id="batch_id",
        severity=pl.col("severity").cast(pl.String))
    rec.close()
    ext = f".{fmt}"
    return {name: _write(df, out_dir / f"{name}{ext}") for name, df in (
        ("telemetry", tel), ("batches", batches), ("offline", off), ("covariates", cov), ("setpoints", sps),
        ("deviations", devs))}
