"""Training the recommender's models from plant data: the setpoint-aware yield variant, the applicability
domain, and a deviation-risk model; saved together under one content-hash version."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from models.config import ModelConfig
from models.dataset import PlantData
from models.deviation import DeviationModel
from models.domain import DomainModel
from models.encoding import fingerprint
from models.features import feature_rows, rows_every
from models.labels import online_deviations, warning_labels, yield_target
from models.recommend import RecommenderModels
from models.setpoint_model import PLAN, SetpointYieldModel, plan_features, state_columns


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Rows and model sizes of a recommender training run."""

    step_h: float = 6.0  # one yield row per batch every step_h hours
    first_h: float = 24.0  # the advisory window: rows from here ...
    last_before_h: float = 12.0  # ... to this many hours before the planned harvest
    n_members: int = 8
    n_rounds: int = 300
    risk_step_min: int = 60  # deviation-model rows
    risk_rounds: int = 200
    seed: int = 7


def completed_ids(data: PlantData) -> list[str]:
    """Finished batches with a yield outcome."""
    done = data.batches.filter(pl.col("end_ts").is_not_null()).join(data.outcomes, on="batch_id", how="semi")
    return done.sort("start_ts", "batch_id")["batch_id"].to_list()


def training_rows(data: PlantData, cfg: TrainConfig) -> pl.DataFrame:
    """Feature rows of finished batches in the advisory window, with log10_tvc and the plan_* columns."""
    d = data.select(completed_ids(data))
    f = feature_rows(d, rows_every(d, int(round(cfg.step_h * 60)), cfg.first_h))
    f = yield_target(d, f).filter(pl.col("t_h") <= pl.col("planned_h") - cfg.last_before_h)
    return plan_features(d, f)


def fit_risk_model(data: PlantData, cfg: TrainConfig, mcfg: ModelConfig) -> DeviationModel:
    """The deviation model (models.deviation) on an hourly grid of the finished batches."""
    d = data.select(completed_ids(data))
    f = feature_rows(d, rows_every(d, cfg.risk_step_min))
    w = warning_labels(f, online_deviations(d, mcfg.no_signature_kinds), mcfg.warning_horizon_h, mcfg.warning_grace_h)
    excused = (w["y"] == 1).to_numpy() | w["ignore"].to_numpy()
    return DeviationModel(None, cfg.risk_rounds, mcfg.cv_folds, mcfg.target_false_alarms_per_batch_day,
                          cfg.seed).fit(w, w["y"].to_numpy(), w["batch_id"].to_numpy(), excused)


def fit_recommender(data: PlantData, cfg: TrainConfig | None = None, mcfg: ModelConfig | None = None,
                    deviation: DeviationModel | None = None) -> tuple[RecommenderModels, dict[str, float]]:
    """Fit every model the recommender needs (a given deviation model is used as is); returns models and stats."""
    cfg, mcfg = cfg or TrainConfig(), mcfg or ModelConfig()
    stats: dict[str, float] = {}
    t0 = time.perf_counter()
    f = training_rows(data, cfg)
    if f.height == 0 or f["batch_id"].n_unique() < 8:
        raise ValueError(f"{f['batch_id'].n_unique()} finished batches with an outcome: too few to train on")
    stats["rows_s"] = time.perf_counter() - t0
    plans = [c for c in f.columns if c.startswith(PLAN)]
    x = f.select([*state_columns(f, data.online_tags), *plans])
    t0 = time.perf_counter()
    sm = SetpointYieldModel(None, cfg.n_rounds, cfg.n_members, seed=cfg.seed).fit(
        x, f["log10_tvc"].to_numpy(), f["batch_id"].to_numpy())
    stats["fit_setpoint_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dom = DomainModel().fit(f.drop(plans))
    stats["fit_domain_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dev = deviation if deviation is not None else fit_risk_model(data, cfg, mcfg)
    stats["fit_deviation_s"] = time.perf_counter() - t0
    stats |= {"n_rows": float(f.height), "n_batches": float(f["batch_id"].n_unique()),
              "n_doe_batches": float(data.batches.filter(pl.col("kind") == "process_characterisation")
                                     .join(f.select("batch_id").unique(), on="batch_id").height)}
    meta = {"train": asdict(cfg), "data_fingerprint": fingerprint(f.select("batch_id", "k_end", "log10_tvc"))}
    return RecommenderModels(sm, dom, dev, _version(sm, dom, dev, meta)), stats


def _version(sm: SetpointYieldModel, dom: DomainModel, dev: DeviationModel | None, meta: dict) -> str:
    """recommender-<12 hex>: a hash of every model's content and the training set-up."""
    h = hashlib.sha256()
    for b in [sm.core_.booster_, sm.core_.lo_booster_, sm.core_.hi_booster_, *sm.members_]:
        h.update(b.model_to_string().encode())
    h.update(json.dumps(dom.to_dict(), sort_keys=True, default=float).encode())
    if dev is not None:
        h.update(dev.booster_.model_to_string().encode())
    h.update(json.dumps(meta, sort_keys=True).encode())
    return f"recommender-{h.hexdigest()[:12]}"


def save_models(models: RecommenderModels, path: str | Path) -> Path:
    """Write the models under path (setpoint/, domain.json, deviation/, version.json)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    models.setpoint.save(p / "setpoint")
    models.domain.save(p / "domain.json")
    if models.deviation is not None:
        models.deviation.save(p / "deviation")
    (p / "version.json").write_text(json.dumps({"version": models.version}))
    return p


def load_models(path: str | Path) -> RecommenderModels:
    """Models saved by save_models."""
    p = Path(path)
    dev = DeviationModel.load(p / "deviation") if (p / "deviation").exists() else None
    version = json.loads((p / "version.json").read_text())["version"]
    return RecommenderModels(SetpointYieldModel.load(p / "setpoint"), DomainModel.load(p / "domain.json"), dev,
                             version)


def gain_curves(models: RecommenderModels, rows: pl.DataFrame, tag: str, values: list[float]) -> list[float]:
    """Mean relative gain over rows of holding `tag` at each value instead of the recorded plan (diagnostics)."""
    x = rows.select(models.setpoint.inputs)
    base = models.setpoint.member_predictions(x).mean(axis=1)
    out = []
    for v in values:
        p = models.setpoint.member_predictions(x.with_columns(pl.lit(v, dtype=pl.Float64).alias(f"{PLAN}{tag}")))
        out.append(float(np.mean(10.0 ** (p.mean(axis=1) - base) - 1.0)))
    return out
