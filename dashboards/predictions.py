"""Model outputs for the panel (predicted harvest, yield trajectory, deviation risk, drivers), when a model is there.

Without a champion in the MLflow store every function here says why (`Unavailable`) and the pages show that
instead of a number. The models come from models.predict (BatchPredictor, loaded by the "champion" alias).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
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
        self._traj: tuple[tuple[str, datetime], tuple[list[datetime], pl.DataFrame]] | None = None
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
                       bool(getattr(yf.applicability, "in_domain", True)))

    def _rows(self, src: Any, at: list[tuple[str, datetime]], until: datetime) -> pl.DataFrame:
        """Feature rows of batches at as-of times (several per batch allowed), in the order of `at`, from ONE read
        of their data and one vectorised feature pass (models.features.feature_rows, as the recommender's batch
        state does): eight running batches cost about what one did batch by batch."""
        from dataclasses import replace

        from models.dataset import load_plant_data
        from models.features import feature_rows

        ids = sorted({b for b, _ in at})
        data = load_plant_data(src.historian, src.records, self.plant.site, ids, until=until,
                               bucket_min=self.bp.bucket_min)
        w = timedelta(minutes=self.bp.bucket_min)
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        grid = lambda t: epoch + ((t - epoch) // w) * w  # noqa: E731 - as models.features.as_of floors t
        starts = dict(data.batches.select("batch_id", "start_ts").iter_rows())
        keep = pl.DataFrame([(b, (grid(t) - grid(starts[b])) // w) for b, t in at],
                            schema={"batch_id": pl.String(), "k_end": pl.Int32()}, orient="row")
        ends = {b: grid(max(t for bb, t in at if bb == b)) for b in ids}
        batches = data.batches.with_columns(
            data_end=pl.col("batch_id").replace_strict(ends, return_dtype=pl.Datetime("us", "UTC"))
        ).with_columns(data_h=(pl.col("data_end") - pl.col("start_ts")).dt.total_seconds() / 3600.0)
        rows = feature_rows(replace(data, batches=batches), keep)
        if rows.height != keep.height:
            raise ValueError(f"{rows.height} feature rows for {keep.height} requested")
        return rows

    def harvests(self, batch_ids: list[str], now: datetime) -> dict[str, Harvest | Unavailable]:
        """Predicted harvest of several running batches of the live plant at once (one read, one feature pass);
        a batch the batched pass cannot serve is predicted on its own."""
        out: dict[str, Harvest | Unavailable] = {}
        batches = {}
        for b in batch_ids:
            try:
                rec, src = self.plant.find_batch(b)
            except KeyError as exc:
                out[b] = Unavailable(str(exc.args[0] if exc.args else exc))
                continue
            if src.name == "live" and rec.start_ts < now and (rec.end_ts is None or rec.end_ts > now):
                batches[b] = rec
        if batches:
            try:
                rows = self._rows(self.plant.live, [(b, now) for b in batches], now)
                iv = self.bp.yield_model.predict_interval(rows)
                verdicts = self.bp.domain.check(rows)
                for i, b in enumerate(rows["batch_id"].to_list()):
                    r = iv.row(i, named=True)
                    out[b] = Harvest(b, batches[b].planned_end_ts, 10 ** r["lo"], 10 ** r["yield_log10"],
                                     10 ** r["hi"], "viable cells at harvest", self.bp.versions.get("yield", ""),
                                     bool(getattr(verdicts[i], "in_domain", True)))
            except Exception:  # noqa: BLE001 - one odd batch must not cost the others their tiles
                log.warning("batched harvest prediction failed; predicting batch by batch", exc_info=True)
        for b in batch_ids:
            if b not in out:
                out[b] = self.harvest(b, now)
        return out

    def _series(self, batch_id: str, now: datetime) -> list[tuple[datetime, Any]]:
        times, _, _ = self._times(batch_id, now)
        return [(at, self._predict(batch_id, at)[0]) for at in times]

    def _times(self, batch_id: str, now: datetime) -> tuple[list[datetime], Any, Any]:
        batch, src = self.plant.find_batch(batch_id)
        end = min(now, batch.end_ts or now)
        times, t = [], batch.start_ts + timedelta(days=1)
        while t < end:
            times.append(t)
            t += TRAJECTORY_STEP
        times.append(end)
        return times, src, end

    def _trajectory_rows(self, batch_id: str, now: datetime) -> tuple[list[datetime], pl.DataFrame] | None:
        """Feature rows of the trajectory's times from one read and one feature pass (None: do it time by time).
        The last one is kept: the yield trajectory and the risk over time ask for the same rows."""
        key = (batch_id, now)
        if self._traj is not None and self._traj[0] == key:
            return self._traj[1]
        try:
            times, src, end = self._times(batch_id, now)
            got = times, self._rows(src, [(batch_id, t) for t in times], end)
        except Exception:  # noqa: BLE001 - e.g. a batch too young for a row: the one-by-one path says why
            log.debug("batched trajectory failed for %s", batch_id, exc_info=True)
            return None
        self._traj = (key, got)
        return got

    def yield_trajectory(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable:
        schema = {"ts": pl.Datetime("us", "UTC"), "low": pl.Float64(), "mid": pl.Float64(), "high": pl.Float64()}
        got = self._trajectory_rows(batch_id, now)
        if got is not None:
            times, rows = got
            iv = self.bp.yield_model.predict_interval(rows)
            return pl.DataFrame({"ts": times, "low": 10 ** iv["lo"].to_numpy(), "mid": 10 ** iv["yield_log10"].to_numpy(),
                                 "high": 10 ** iv["hi"].to_numpy()}, schema=schema)
        rows = [(at, *(10 ** x for x in (p.yield_forecast.lo, p.yield_forecast.yield_log10, p.yield_forecast.hi)))
                for at, p in self._series(batch_id, now)]
        return pl.DataFrame(rows, schema=schema, orient="row")

    def risk(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable:
        schema = {"ts": pl.Datetime("us", "UTC"), "risk": pl.Float64()}
        got = self._trajectory_rows(batch_id, now)
        if got is not None:
            times, rows = got
            return pl.DataFrame({"ts": times, "risk": self.bp.deviation_model.predict_proba(rows)}, schema=schema)
        rows = [(at, p.deviation.risk) for at, p in self._series(batch_id, now)]
        return pl.DataFrame(rows, schema=schema, orient="row")

    def drivers(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable:
        pred, _ = self._predict(batch_id, now)
        rows = [(f"yield: {d.feature}", d.contribution) for d in pred.yield_forecast.drivers]
        rows += [(f"risk: {d.feature}", d.contribution) for d in pred.deviation.drivers]
        return pl.DataFrame(rows, schema={"feature": pl.String(), "contribution": pl.Float64()}, orient="row")


def tracking(plant: Plant) -> Any:
    """The models package's view of the plant's MLflow store (artifacts in mlruns/ beside the database)."""
    from models.registry import Tracking

    return Tracking(plant.mlflow_db, plant.mlflow_db.parent / "mlruns")


def store_exists(plant: Plant) -> bool:
    """Whether the plant has an MLflow store at all (looking creates nothing)."""
    return plant.mlflow_db.exists()


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
