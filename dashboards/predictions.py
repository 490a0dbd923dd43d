"""Model outputs for the panel (predicted harvest, yield trajectory, deviation risk, drivers), when a model is there.

Without a champion in the MLflow store every function here says why (`Unavailable`) and the pages show that
instead of a number. The models come from models.predict (BatchPredictor, loaded by the "champion" alias).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import polars as pl

from dashboards.context import Plant

log = logging.getLogger("cellwatch.panel")
TRAJECTORY_STEP = timedelta(hours=12)  # one prediction per half day: a trajectory costs one feature build each


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why there is no prediction (shown to the user as is)."""

    why: str


@dataclass(frozen=True, slots=True)
class Harvest:
    """Predicted harvest yield of a batch with its interval."""

    batch_id: str
    due: datetime | None
    low: float
    mid: float
    high: float
    what: str  # e.g. "viable cells at harvest"
    model_version: str
    applicable: bool = True


class Predictor(Protocol):
    """What the panel asks of the champion models."""

    version: str

    def harvest(self, batch_id: str, now: datetime) -> Harvest | Unavailable: ...
    def yield_trajectory(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable: ...  # ts, low, mid, high
    def risk(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable: ...  # ts, risk
    def drivers(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable: ...  # feature, contribution
    @property
    def threshold(self) -> float: ...


NO_MODEL = Unavailable("No model is registered yet: predictions appear here once a data scientist trains and "
                       "promotes one (Models page).")
NO_CHAMPION = Unavailable("No champion model yet: a data scientist promotes a trained model through the gate "
                          "(Models page); predictions appear then.")


class ChampionPredictor:
    """The champion yield and deviation models (models.predict.BatchPredictor) over the plant's stores."""

    def __init__(self, plant: Plant, batch_predictor: Any) -> None:
        self.plant, self.bp = plant, batch_predictor
        v = batch_predictor.versions
        self.version = f"yield v{v.get('yield', '?')}, deviation v{v.get('deviation', '?')}"

    @property
    def threshold(self) -> float:
        return float(self.bp.deviation_model.threshold_)

    def _predict(self, batch_id: str, at: datetime) -> Any:
        batch, src = self.plant.find_batch(batch_id)
        at = min(at, batch.end_ts or at)
        return self.bp.predict(src.historian, src.records, batch_id, at), batch

    def harvest(self, batch_id: str, now: datetime) -> Harvest | Unavailable:
        try:
            pred, batch = self._predict(batch_id, now)
        except KeyError as exc:
            return Unavailable(str(exc.args[0] if exc.args else exc))
        yf = pred.yield_forecast
        mid, low, high = yf.cells
        return Harvest(batch_id, batch.planned_end_ts, low, mid, high, "viable cells at harvest", yf.model_version,
                       bool(getattr(yf.applicability, "ok", True)))

    def _series(self, batch_id: str, now: datetime) -> list[tuple[datetime, Any]]:
        batch, _ = self.plant.find_batch(batch_id)
        end = min(now, batch.end_ts or now)
        times, t = [], batch.start_ts + timedelta(days=1)
        while t < end:
            times.append(t)
            t += TRAJECTORY_STEP
        times.append(end)
        return [(at, self._predict(batch_id, at)[0]) for at in times]

    def yield_trajectory(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable:
        rows = [(at, *(10 ** x for x in (p.yield_forecast.lo, p.yield_forecast.yield_log10, p.yield_forecast.hi)))
                for at, p in self._series(batch_id, now)]
        return pl.DataFrame(rows, schema={"ts": pl.Datetime("us", "UTC"), "low": pl.Float64(), "mid": pl.Float64(),
                                          "high": pl.Float64()}, orient="row")

    def risk(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable:
        rows = [(at, p.deviation.risk) for at, p in self._series(batch_id, now)]
        return pl.DataFrame(rows, schema={"ts": pl.Datetime("us", "UTC"), "risk": pl.Float64()}, orient="row")

    def drivers(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable:
        pred, _ = self._predict(batch_id, now)
        rows = [(f"yield: {d.feature}", d.contribution) for d in pred.yield_forecast.drivers]
        rows += [(f"risk: {d.feature}", d.contribution) for d in pred.deviation.drivers]
        return pl.DataFrame(rows, schema={"feature": pl.String(), "contribution": pl.Float64()}, orient="row")


def tracking(plant: Plant) -> Any:
    """The models package's view of the plant's MLflow store (artifacts in mlruns/ beside the database)."""
    from models.registry import Tracking

    return Tracking(plant.mlflow_db, plant.mlflow_db.parent / "mlruns")


def load(plant: Plant) -> Predictor | Unavailable:
    """The champion models as a Predictor, or why there is none (no store, no champion, or a load failure)."""
    if not plant.mlflow_db.exists():  # looking must not create a store (a new one takes seconds to set up)
        return NO_MODEL
    try:
        from models.predict import BatchPredictor

        return ChampionPredictor(plant, BatchPredictor.from_registry(tracking(plant), plant.site))
    except KeyError:
        return NO_CHAMPION
    except Exception as exc:  # noqa: BLE001 - a broken model must not take the panel down
        log.exception("loading the champion models failed")
        return Unavailable(f"The champion model could not be loaded ({type(exc).__name__}: {exc}).")
