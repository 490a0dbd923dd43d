"""Training pipeline without tracking: split by time, build datasets, tune, fit models and baselines, evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import polars as pl

from models.baselines import PCAMonitor, PLSYield
from models.config import ModelConfig
from models.dataset import PlantData
from models.deviation import EXCLUDE as DEV_EXCLUDE
from models.deviation import DeviationModel
from models.domain import DomainModel
from models.encoding import Encoder, fingerprint
from models.evaluate import DeviationEval, YieldEval, evaluate_deviation, evaluate_yield
from models.features import feature_rows, rows_at_hours, rows_every
from models.labels import limit_alarm, online_deviations, warning_labels, yield_target
from models.tuning import TuneData, TuneResult, tune
from models.yield_model import YieldModel
from plant.model_records import holdout, lock_holdout
from plant.records import Records

DAYS = tuple(range(1, 15))


@dataclass(frozen=True)
class Split:
    """Batches for training (older) and the locked hold-out (newer), each oldest first."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    holdout_name: str


@dataclass(frozen=True)
class Prepared:
    """Feature rows of one split: yield rows (6 h grid + day boundaries) and warning rows (labelled grid)."""

    split: Split
    yield_train: pl.DataFrame
    yield_test: pl.DataFrame  # day boundaries of held-out batches
    warn_train: pl.DataFrame  # + y, ignore, kind, fit (rows the booster learns from)
    fingerprint: str


@dataclass
class Trained:
    """Every fitted object of one training run, with the tuning results and timings."""

    yield_model: YieldModel
    deviation_model: DeviationModel
    domain: DomainModel
    yield_tune: TuneResult | None
    deviation_tune: TuneResult | None
    timings: dict[str, float] = field(default_factory=dict)


def completed(data: PlantData) -> pl.DataFrame:
    """Ended batches with a yield outcome, oldest first."""
    b = data.batches.filter(pl.col("end_ts").is_not_null()).join(data.outcomes, on="batch_id", how="semi")
    return b.sort("start_ts", "batch_id")


def split_batches(data: PlantData, records: Records, cfg: ModelConfig, name: str = "default",
                  by: str = "cellwatch") -> Split:
    """Train on older batches, test on the locked hold-out; the first call locks the newest fraction."""
    done = completed(data)
    ids = done["batch_id"].to_list()
    locked = holdout(records, name)
    if locked is None:
        n_test = max(1, round(cfg.holdout_fraction * len(ids)))
        if len(ids) - n_test < 4:
            raise ValueError(f"{len(ids)} completed batches with an outcome: too few to train and hold out")
        locked = ids[-n_test:]
        lock_holdout(records, name, locked, by, datetime.now(timezone.utc))
    held = set(locked)
    test = tuple(b for b in ids if b in held)
    train = tuple(b for b in ids if b not in held)
    if not test:
        raise ValueError(f"hold-out {name!r}: none of its batches is in this data")
    return Split(train, test, name)


def _order(frame: pl.DataFrame, ids: tuple[str, ...]) -> pl.DataFrame:
    """Rows of the given batches, in batch (time) order then k_end: folds and validation follow time."""
    rank = pl.DataFrame({"batch_id": list(ids), "_rank": range(len(ids))})
    return frame.join(rank, on="batch_id").sort("_rank", "k_end").drop("_rank")


def prepare(data: PlantData, split: Split, cfg: ModelConfig) -> Prepared:
    """Features and labels of the training batches and the yield rows of the held-out ones."""
    d = data.select([*split.train, *split.test])
    step = cfg.warning_train_step_min
    keep = pl.concat([rows_every(d, step), rows_at_hours(d, [24.0 * x for x in DAYS])]).unique()
    feats = feature_rows(d, keep)
    per6 = int(cfg.yield_step_h * 60) // d.bucket_min
    day_rows = rows_at_hours(d, [24.0 * x for x in DAYS])
    is_day = feats.join(day_rows.with_columns(_day=pl.lit(True)), on=["batch_id", "k_end"], how="left",
                        maintain_order="left")["_day"].fill_null(False)
    feats = feats.with_columns(_day=is_day)
    yrows = yield_target(d, feats.filter((pl.col("k_end") % per6 == 0) | pl.col("_day")).drop("_day"))
    yrows = yrows.filter(pl.col("t_h") < pl.col("planned_h"))
    yield_train = _order(yrows, split.train)
    yield_test = _order(yrows.join(day_rows, on=["batch_id", "k_end"], how="semi"), split.test)
    grid = feats.filter(pl.col("k_end") % (step // d.bucket_min) == 0).drop("_day")
    devs = online_deviations(d, cfg.no_signature_kinds)
    warn = _order(warning_labels(grid, devs, cfg.warning_horizon_h, cfg.warning_grace_h), split.train)
    inside = (pl.col("y") == 1) & (pl.col("k_end") % (120 // d.bucket_min) == 0)  # every 2 h inside deviations
    warn = warn.with_columns(fit=~pl.col("ignore") & (_near_fault(warn, devs, cfg) | inside | _quiet_row(warn, cfg, d)))
    warn = warn.with_columns(weight=_event_weights(warn))
    fp = fingerprint(pl.concat([yield_train.drop("log10_tvc"), warn.drop("y", "ignore", "kind", "fit")],
                               how="diagonal_relaxed").unique(["batch_id", "k_end"], keep="first"))
    return Prepared(split, yield_train, yield_test, warn, fp)


def _near_fault(rows: pl.DataFrame, devs: pl.DataFrame, cfg: ModelConfig) -> pl.Expr:
    """Rows around where labels change: onset (H + 6 h before to 12 h after) and end of each deviation."""
    before = pl.duration(hours=cfg.warning_horizon_h + 6)
    after = pl.duration(hours=cfg.warning_grace_h + 4)
    m = rows.select("batch_id", "t").join(devs.select("batch_id", "start_ts", "end_ts"), on="batch_id")
    onset = (pl.col("t") >= pl.col("start_ts") - before) & (pl.col("t") < pl.col("start_ts") + pl.duration(hours=12))
    ending = (pl.col("t") >= pl.col("end_ts") - pl.duration(hours=2)) & (pl.col("t") < pl.col("end_ts") + after)
    near = m.filter(onset | ending).select("batch_id", "t").unique()
    flag = rows.join(near.with_columns(_n=pl.lit(True)), on=["batch_id", "t"], how="left", maintain_order="left")
    return pl.lit(flag["_n"].fill_null(False))


def _event_weights(rows: pl.DataFrame) -> pl.Series:
    """Each deviation weighs the same however long it lasts: a 2 h CO2 failure as much as a 9-day pH drift."""
    fit_pos = pl.col("fit") & (pl.col("y") == 1)
    n_event = fit_pos.sum().over("event")
    mean_event = rows.filter(fit_pos).group_by("event").len()["len"].mean() or 1.0
    return rows.select(pl.when(fit_pos).then(mean_event / n_event).otherwise(1.0).alias("weight")).to_series()


def _quiet_row(rows: pl.DataFrame, cfg: ModelConfig, d: PlantData) -> pl.Expr:
    every = max(1, cfg.warning_quiet_step_min // d.bucket_min)
    return pl.col("k_end") % every == 0


def _val_mask(groups: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """The newest `fraction` of the batches (groups in time order) validate the tuning."""
    _, first = np.unique(groups, return_index=True)
    order = groups[np.sort(first)]
    val = set(order[int(round((1 - fraction) * len(order))):])
    return np.array([g in val for g in groups])


def _tune_yield(p: Prepared, cfg: ModelConfig, n_trials: int, storage: str | None, study: str | None) -> TuneResult:
    f = p.yield_train
    g = f["batch_id"].to_numpy()
    val = _val_mask(g)
    fit_rows, val_rows = f.filter(pl.Series(~val)), f.filter(pl.Series(val))
    enc = Encoder().fit(fit_rows)
    probe = YieldModel()
    probe.offset_default_ = float(np.median(fit_rows["log10_tvc"].to_numpy()))
    td = TuneData(enc.transform(fit_rows), fit_rows["log10_tvc"].to_numpy(), enc.transform(val_rows),
                  val_rows["log10_tvc"].to_numpy(), probe.offset(fit_rows), probe.offset(val_rows))
    return tune("yield", td, n_trials, cfg.seed, storage, f"{study}-yield" if study else None)


def _tune_deviation(p: Prepared, cfg: ModelConfig, n_trials: int, storage: str | None,
                    study: str | None) -> TuneResult:
    w = p.warn_train
    val = _val_mask(w["batch_id"].to_numpy())
    fit_rows = w.filter(pl.Series(~val) & pl.col("fit"))
    val_rows = w.filter(pl.Series(val) & pl.col("fit"))
    enc = Encoder(DEV_EXCLUDE).fit(fit_rows)
    td = TuneData(enc.transform(fit_rows), fit_rows["y"].to_numpy(), enc.transform(val_rows), val_rows["y"].to_numpy(),
                  w_fit=fit_rows["weight"].to_numpy(), w_val=val_rows["weight"].to_numpy())
    return tune("deviation", td, n_trials, cfg.seed, storage, f"{study}-deviation" if study else None)


def fit_models(p: Prepared, cfg: ModelConfig, n_trials: int | None = None, storage: str | None = None,
               study: str | None = None) -> Trained:
    """Tune (n_trials per model, default from config) and fit both models and the applicability domain."""
    n = cfg.n_trials if n_trials is None else n_trials
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    yt = _tune_yield(p, cfg, n, storage, study) if n > 0 or storage else None
    timings["tune_yield_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    f = p.yield_train
    ym = YieldModel(yt.params if yt else None, yt.n_rounds if yt else 300, cfg.interval, cfg.calibration_fraction,
                    cfg.seed)
    ym.fit(f, f["log10_tvc"].to_numpy(), f["batch_id"].to_numpy())
    dom = DomainModel().fit(f)
    timings["fit_yield_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dt = _tune_deviation(p, cfg, n, storage, study) if n > 0 or storage else None
    timings["tune_deviation_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = p.warn_train
    dm = DeviationModel(dt.params if dt else None, dt.n_rounds if dt else 200, cfg.deviation_cv_folds,
                        cfg.target_false_alarms_per_batch_day, cfg.seed)
    dm.fit(w, w["y"].to_numpy(), w["batch_id"].to_numpy(), (w["y"] == 1).to_numpy() | w["ignore"].to_numpy(),
           w["fit"].to_numpy(), w["weight"].to_numpy())
    timings["fit_deviation_s"] = time.perf_counter() - t0
    return Trained(ym, dm, dom, yt, dt, timings)


@dataclass(frozen=True)
class Baselines:
    pls: PLSYield
    pls_robust: PLSYield
    pca: PCAMonitor


def fit_baselines(p: Prepared) -> Baselines:
    """PLS per culture day (plain and without outlier batches) and PCA on normal-operation rows."""
    f = p.yield_train
    y, g = f["log10_tvc"].to_numpy(), f["batch_id"].to_numpy()
    normal = p.warn_train.filter(pl.col("y") == 0, ~pl.col("ignore"))
    normal = normal.filter(pl.col("k_end") % 12 == 0) if normal.height > 40_000 else normal  # 2 h grid is plenty
    return Baselines(PLSYield().fit(f, y, g), PLSYield(exclude_outliers=True).fit(f, y, g), PCAMonitor().fit(normal))


def holdout_yield_rows(data: PlantData, split: Split) -> pl.DataFrame:
    """Day-boundary feature rows (with the outcome) of the hold-out batches, in time order."""
    d = data.select(split.test)
    rows = yield_target(d, feature_rows(d, rows_at_hours(d, [24.0 * x for x in DAYS])))
    return _order(rows.filter(pl.col("t_h") < pl.col("planned_h")), split.test)


def warning_timeline(data: PlantData, split: Split, cfg: ModelConfig) -> tuple[pl.DataFrame, pl.DataFrame,
                                                                                  pl.DataFrame]:
    """Every bucket of the held-out batches: (timeline with labels and limit alarm, features, faults)."""
    d = data.select(split.test)
    feats = feature_rows(d, rows_every(d, d.bucket_min))
    devs = online_deviations(d, cfg.no_signature_kinds)
    lab = warning_labels(feats.select("batch_id", "k_end", "t", "t_h"), devs, cfg.warning_horizon_h,
                         cfg.warning_grace_h)
    lab = lab.join(limit_alarm(d), on=["batch_id", "k_end"], how="left", maintain_order="left")
    tl = lab.with_columns(excused=(pl.col("y") == 1) | pl.col("ignore"), limit_alarm=pl.col("limit_alarm")
                          .fill_null(False))
    return tl, feats, devs


def evaluate_trained(data: PlantData, p: Prepared, ym: YieldModel, dm: DeviationModel, base: Baselines,
                     cfg: ModelConfig) -> tuple[YieldEval, DeviationEval]:
    """Both models and their baselines on the held-out batches."""
    ye = evaluate_yield(ym, p.yield_test, {"pls": base.pls, "pls_robust": base.pls_robust}, cfg.interval)
    tl, feats, devs = warning_timeline(data, p.split, cfg)
    de = evaluate_deviation(dm, base.pca, tl, feats, devs, cfg.warning_horizon_h, cfg.warning_grace_h)
    return ye, de
