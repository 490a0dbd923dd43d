"""Training the recommender's models from plant data: the setpoint response surface (records of every harvested
batch), the applicability domain and a deviation-risk model (telemetry of the newest batches); saved together
under one content-hash version."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from models.config import ModelConfig
from models.dataset import PlantData, load_plant_data
from models.deviation import DeviationModel
from models.domain import DomainModel
from models.features import feature_rows, rows_every
from models.labels import online_deviations, warning_labels, yield_target
from models.recommend import RecommenderModels
from models.setpoint_model import SetpointEffectModel, batch_table
from plant.historian import Historian
from plant.records import Records
from plant.site import Site

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """What a recommender training run reads and fits."""

    anchor_h: float = 26.0  # the response surface adjusts for the cell counts up to here (day-1 count)
    telemetry_batches: int = 300  # newest harvested batches the domain and risk models learn from
    domain_step_h: float = 6.0
    risk_step_min: int = 120
    risk_rounds: int = 200
    n_boot: int = 200
    seed: int = 7


def site_par(site: Site) -> dict[tuple[str, str], tuple[float, float]]:
    """(unit kind, setpoint) -> PAR, from the site's controllable tags."""
    return {(u.kind, t.short): t.par for u in site.units.values() for t in site.controllable(u.id)
            if t.par is not None}


def fit_domain(data: PlantData, cfg: TrainConfig) -> DomainModel:
    """Applicability domain (models.domain) on feature rows of finished batches inside the advisory window."""
    f = feature_rows(data, rows_every(data, round(cfg.domain_step_h * 60), 24.0))
    return DomainModel().fit(yield_target(data, f).drop("log10_tvc"))


def fit_risk_model(data: PlantData, cfg: TrainConfig, mcfg: ModelConfig) -> DeviationModel:
    """The deviation model (models.deviation) on a coarse grid of the finished batches."""
    f = feature_rows(data, rows_every(data, cfg.risk_step_min))
    w = warning_labels(f, online_deviations(data, mcfg.no_signature_kinds), mcfg.warning_horizon_h,
                       mcfg.warning_grace_h)
    excused = (w["y"] == 1).to_numpy() | w["ignore"].to_numpy()
    return DeviationModel(None, cfg.risk_rounds, mcfg.cv_folds, mcfg.target_false_alarms_per_batch_day,
                          cfg.seed).fit(w, w["y"].to_numpy(), w["batch_id"].to_numpy(), excused)


def train_recommender(hist: Historian, records: Records, site: Site, cfg: TrainConfig | None = None,
                      mcfg: ModelConfig | None = None, deviation: DeviationModel | None = None,
                      ) -> tuple[RecommenderModels, dict[str, float]]:
    """Fit every model the recommender needs (a given deviation model is used as it is); models and statistics."""
    cfg, mcfg = cfg or TrainConfig(), mcfg or ModelConfig()
    stats: dict[str, float] = {}
    t0 = time.perf_counter()
    table = batch_table(records, site, cfg.anchor_h)
    if table.height < 20:
        raise ValueError(f"{table.height} harvested batches with a yield: too few to learn setpoint effects from")
    effect = SetpointEffectModel(cfg.anchor_h, cfg.n_boot, seed=cfg.seed).fit(table, site_par(site))
    stats["fit_effect_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    newest = table.sort("start_ts").tail(cfg.telemetry_batches)["batch_id"].to_list()
    data = load_plant_data(hist, records, site, newest, until=FAR_FUTURE, bucket_min=mcfg.bucket_min)
    stats["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    domain = fit_domain(data, cfg)
    stats["fit_domain_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dev = deviation if deviation is not None else fit_risk_model(data, cfg, mcfg)
    stats["fit_deviation_s"] = time.perf_counter() - t0
    doe = table.join(records.batches().filter(pl.col("kind") == "process_characterisation").select("batch_id"),
                     on="batch_id", how="semi")
    stats |= {"n_batches": float(table.height), "n_doe_batches": float(doe.height),
              "n_telemetry_batches": float(len(newest)), "residual_sd_log10": effect.residual_sd_}
    meta = {"train": asdict(cfg), "batches": sorted(table["batch_id"].to_list())}
    return RecommenderModels(effect, domain, dev, _version(effect, domain, dev, meta)), stats


def _version(effect: SetpointEffectModel, dom: DomainModel, dev: DeviationModel | None, meta: dict) -> str:
    """recommender-<12 hex>: a hash of every model's content and the training set-up."""
    h = hashlib.sha256(json.dumps(effect.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(dom.to_dict(), sort_keys=True, default=float).encode())
    if dev is not None:
        h.update(dev.booster_.model_to_string().encode())
    h.update(json.dumps(meta, sort_keys=True).encode())
    return f"recommender-{h.hexdigest()[:12]}"


def save_models(models: RecommenderModels, path: str | Path) -> Path:
    """Write the models under path (effect.json, domain.json, deviation/, version.json)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    models.effect.save(p / "effect.json")
    models.domain.save(p / "domain.json")
    if models.deviation is not None:
        models.deviation.save(p / "deviation")
    (p / "version.json").write_text(json.dumps({"version": models.version}))
    return p


def load_models(path: str | Path) -> RecommenderModels:
    """Models saved by save_models."""
    p = Path(path)
    if not (p / "version.json").exists():
        raise ValueError(f"{p}: no recommender models here (version.json missing)")
    dev = DeviationModel.load(p / "deviation") if (p / "deviation").exists() else None
    version = json.loads((p / "version.json").read_text())["version"]
    return RecommenderModels(SetpointEffectModel.load(p / "effect.json"), DomainModel.load(p / "domain.json"), dev,
                             version)
