"""Inference for a running batch as of a time t: yield with interval, deviation risk, drivers, applicability.

This is the interface the setpoint recommender uses: load the champion by alias, build the feature row of
a batch at t, change the setpoints in it (`with_setpoints`) and predict again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import polars as pl

from models.dataset import load_plant_data
from models.deviation import DeviationModel
from models.domain import Applicability, DomainModel
from models.features import as_of
from models.yield_model import YieldModel
from plant.historian import Historian
from plant.records import Records
from plant.site import Site


@dataclass(frozen=True, slots=True)
class Driver:
    """One input's share of a prediction (LightGBM's own feature contribution, SHAP-style)."""

    feature: str
    value: float | str | None
    contribution: float  # yield: log10 cells; deviation: log-odds of the raw score


@dataclass(frozen=True, slots=True)
class YieldForecast:
    batch_id: str
    as_of: datetime
    culture_h: float
    yield_log10: float
    lo: float
    hi: float
    interval: float
    drivers: tuple[Driver, ...]
    applicability: Applicability
    model_version: str

    @property
    def cells(self) -> tuple[float, float, float]:
        """(median, lo, hi) in viable cells."""
        return 10**self.yield_log10, 10**self.lo, 10**self.hi


@dataclass(frozen=True, slots=True)
class DeviationRisk:
    batch_id: str
    as_of: datetime
    risk: float  # calibrated probability that a deviation starts within the horizon (or is under way)
    threshold: float
    above_threshold: bool  # a single evaluation; the alarm also needs PERSIST_MIN of it
    horizon_h: float
    drivers: tuple[Driver, ...]
    model_version: str


@dataclass(frozen=True, slots=True)
class BatchPrediction:
    yield_forecast: YieldForecast
    deviation: DeviationRisk
    features: pl.DataFrame  # the one feature row both used (what-if: with_setpoints(...) and predict_row)


def drivers(contrib: np.ndarray, names: list[str], row: dict, top: int = 5) -> tuple[Driver, ...]:
    """The largest absolute contributions of one row (bias column dropped), one-hot columns named by source."""
    c = contrib[:-1]
    order = np.argsort(-np.abs(c))[:top]
    out = []
    for i in order:
        name = names[i]
        source = name.split("=", 1)[0] if "=" in name else name
        out.append(Driver(name, row.get(source), float(c[i])))
    return tuple(out)


def with_setpoints(row: pl.DataFrame, setpoints: dict[str, float], controls: dict[str, str]) -> pl.DataFrame:
    """The feature row as if these setpoints were put in force at t (held until harvest)."""
    exprs = []
    for tag, value in setpoints.items():
        if f"sp_{tag}" not in row.columns:
            raise KeyError(f"{tag} is not a setpoint feature of the models (known: "
                           f"{', '.join(c[3:] for c in row.columns if c.startswith('sp_') and not c.endswith('_avg'))})")
        exprs.append(pl.lit(float(value)).alias(f"sp_{tag}"))
        pv = controls.get(tag)
        if pv and f"{pv}_dev_sp_1h" in row.columns:
            exprs.append((pl.col(f"{pv}_mean_1h") - float(value)).alias(f"{pv}_dev_sp_1h"))
            exprs.append((pl.col(f"{pv}_mean_1h") - float(value)).abs().alias(f"{pv}_absdev_sp_1h"))
    return row.with_columns(exprs)


class BatchPredictor:
    """Both models plus their applicability domain; predictions for one batch at a time."""

    def __init__(self, yield_model: YieldModel, domain: DomainModel, deviation_model: DeviationModel, site: Site,
                 horizon_h: float, versions: dict[str, str] | None = None, bucket_min: int = 10) -> None:
        self.yield_model = yield_model
        self.domain = domain
        self.deviation_model = deviation_model
        self.site = site
        self.horizon_h = horizon_h
        self.versions = versions or {}
        self.bucket_min = bucket_min

    @classmethod
    def from_registry(cls, tracking: object, site: Site, alias: str = "champion", horizon_h: float = 2.0,
                      bucket_min: int = 10) -> BatchPredictor:
        """Load both models by alias ("champion", "challenger") or version number."""
        from models.registry import load_models

        m = load_models(tracking, alias)  # type: ignore[arg-type]
        return cls(m.yield_model, m.domain, m.deviation_model, site, horizon_h, m.versions, bucket_min)

    def features(self, hist: Historian, records: Records, batch_id: str, at: datetime | None = None) -> pl.DataFrame:
        """The feature row of a batch as known at `at` (default now), from data before `at` only."""
        at = (at or datetime.now(timezone.utc)).astimezone(timezone.utc)
        data = load_plant_data(hist, records, self.site, [batch_id], until=at, bucket_min=self.bucket_min)
        if data.batches.height == 0:
            raise KeyError(f"batch {batch_id} had not started at {at.isoformat()}")
        return as_of(data, batch_id, at)

    def predict(self, hist: Historian, records: Records, batch_id: str, at: datetime | None = None,
                setpoints: dict[str, float] | None = None) -> BatchPrediction:
        """Yield and deviation risk of a running batch at `at`; `setpoints` asks "what if these were in force"."""
        row = self.features(hist, records, batch_id, at)
        if setpoints:
            from models.dataset import site_tags

            row = with_setpoints(row, setpoints, site_tags(self.site)[1])
        return self.predict_row(row)

    def predict_row(self, row: pl.DataFrame) -> BatchPrediction:
        """Predict from a feature row (as built by `features`, possibly changed by `with_setpoints`)."""
        r = row.row(0, named=True)
        iv = self.yield_model.predict_interval(row).row(0, named=True)
        yc = self.yield_model.contributions(row)[0]
        yf = YieldForecast(r["batch_id"], r["t"], float(r["t_h"]), iv["yield_log10"], iv["lo"], iv["hi"],
                           self.yield_model.interval, drivers(yc, self.yield_model.encoder_.names_, r),
                           self.domain.check(row)[0], self.versions.get("yield", ""))
        p = float(self.deviation_model.predict_proba(row)[0])
        dc = self.deviation_model.contributions(row)[0]
        dr = DeviationRisk(r["batch_id"], r["t"], p, self.deviation_model.threshold_,
                           p >= self.deviation_model.threshold_, self.horizon_h,
                           drivers(dc, self.deviation_model.encoder_.names_, r), self.versions.get("deviation", ""))
        return BatchPrediction(yf, dr, row)


__all__ = ["BatchPrediction", "BatchPredictor", "DeviationRisk", "Driver", "YieldForecast",
           "with_setpoints"]
