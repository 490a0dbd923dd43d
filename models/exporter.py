"""`cellwatch export`: write a history (historian + records) in the documented import format (docs/import.md)."""

from __future__ import annotations

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


def export_history(data_dir: Path, out_dir: Path, site: Site, fmt: str = "parquet") -> dict[str, Path]:
    """Telemetry of the site's units (long format) and the batch records, one file per kind."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"format must be parquet or csv, got {fmt!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = Records.open(data_dir / "records.db")
    tags = [t for u in site.units for t in (x.name for x in site.unit_tags(u))]
    tel = (Historian(data_dir / "historian").read(tags)
           .select(timestamp="ts", unit=pl.col("tag").str.split(".").list.first(),
                   tag=pl.col("tag").str.split(".").list.last(), value="value",
                   quality=pl.col("quality").cast(pl.String), status="status"))
    b = rec.batches()
    cells = rec.release_results().filter(pl.col("attribute") == "TOTAL_VIABLE_CELLS").select(
        "batch_id", harvest_viable_cells="value")
    batches = b.join(cells, on="batch_id", how="left", maintain_order="left").select(
        "batch_id", "unit", "recipe", start="start_ts", end="end_ts", planned_end="planned_end_ts",
        kind=pl.col("kind").cast(pl.String), disposition=pl.col("disposition").cast(pl.String),
        harvest_viable_cells="harvest_viable_cells")
    off = rec.offline_results().select("batch_id", timestamp="ts", analyte="analyte", value="value", unit="unit",
                                       method="method")
    cov = rec.covariates()
    sps = rec.setpoints().select("batch_id", timestamp="ts", tag="tag", value="value",
                                 source=pl.col("source").cast(pl.String))
    devs = rec.fault_labels().filter(pl.col("unit").is_not_null()).select(
        "unit", "kind", start="start_ts", end="end_ts", batch_id="batch_id",
        severity=pl.col("severity").cast(pl.String))
    rec.close()
    ext = f".{fmt}"
    return {name: _write(df, out_dir / f"{name}{ext}") for name, df in (
        ("telemetry", tel), ("batches", batches), ("offline", off), ("covariates", cov), ("setpoints", sps),
        ("deviations", devs))}
