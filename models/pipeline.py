"""`cellwatch train` and `cellwatch evaluate`: the training pipeline with MLflow tracking and registration."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from models import report
from models.card import Check, acceptance, model_card
from models.config import ModelConfig
from models.dataset import PlantData, load_plant_data
from models.evaluate import DeviationEval, YieldEval
from models.registry import Tracking, code_version, load_models, log_model, setup
from models.training import (
    Prepared, Split, Trained, evaluate_trained, fit_baselines, fit_models, prepare, split_batches,
)
from plant.historian import Historian
from plant.records import Records
from plant.site import Site

HEADLINE = ["yield_rmse_day5", "yield_rmse_pls_day5", "yield_rmse_pls_robust_day5", "yield_rmse_ratio_pls_day5",
            "yield_rmse_mean_day3plus", "yield_coverage_day3plus", "yield_days3plus_no_worse_than_pls",
            "dev_faults", "dev_detection_rate", "dev_false_alarms_per_batch_day", "dev_median_lead_h_both_alarmed",
            "dev_median_lead_h_censored", "dev_pca_detected_share_matched_fa", "dev_pca_fa_rate_matched",
            "dev_limit_alarm_detected_share", "dev_brier"]


@dataclass(frozen=True)
class RunResult:
    """What a train or evaluate run produced."""

    metrics: dict[str, float]
    checks: dict[str, list[Check]]
    versions: dict[str, str]
    timings: dict[str, float]
    fingerprint: str
    run_id: str | None
    report_dir: Path
    yield_eval: YieldEval = field(repr=False)
    deviation_eval: DeviationEval = field(repr=False)


def _read(data_dir: Path, site: Site, cfg: ModelConfig) -> tuple[PlantData, Records]:
    if not (data_dir / "records.db").exists():
        raise ValueError(f"{data_dir}: no records.db here (cellwatch simulate or cellwatch import first)")
    records = Records.open(data_dir / "records.db")
    data = load_plant_data(Historian(data_dir / "historian"), records, site, bucket_min=cfg.bucket_min)
    return data, records


def _split_info(p: Prepared, data: PlantData) -> dict[str, str]:
    b = data.batches.filter(pl.col("batch_id").is_in(list(p.split.train)))
    t = data.batches.filter(pl.col("batch_id").is_in(list(p.split.test)))
    return {"training batches": f"{len(p.split.train)} ({b['start_ts'].min():%Y-%m-%d} .. {b['start_ts'].max():%Y-%m-%d})",
            "hold-out batches": f"{len(p.split.test)} ({t['start_ts'].min():%Y-%m-%d} .. {t['start_ts'].max():%Y-%m-%d}), "
                                f"locked as {p.split.holdout_name!r}",
            "data fingerprint (sha256 of the training features)": p.fingerprint,
            "code version": code_version()}


def _summary(metrics: dict[str, float], checks: dict[str, list[Check]], info: dict[str, str]) -> list[tuple[str, str]]:
    rows = "".join(f"<tr><td>{k}</td><td>{c.name}</td><td>{c.limit}</td><td>{c.value:.4g}</td>"
                   f"<td class='{'pass' if c.passed else 'fail'}'>{'pass' if c.passed else 'FAIL'}</td></tr>"
                   for k, cs in checks.items() for c in cs)
    return [("Data and code", "<ul>" + "".join(f"<li>{k}: {v}</li>" for k, v in info.items()) + "</ul>"),
            ("Acceptance criteria", f"<table><tr><th>model</th><th>criterion</th><th>limit</th><th>value</th>"
                                    f"<th>result</th></tr>{rows}</table>"),
            ("Headline metrics", report.metrics_table(metrics, HEADLINE))]


def _log_run(mlflow, metrics: dict[str, float], paths: dict[str, Path]) -> None:  # noqa: ANN001
    mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN metrics are left out
    for name, path in paths.items():
        # report.html at the top level too: the panel's gate hashes the run's top-level report*/eval* artifact
        mlflow.log_artifact(str(path), artifact_path=None if name == "report.html" else "plots")


def train(data_dir: Path, site: Site, cfg: ModelConfig, tracking: Tracking | None, n_trials: int | None = None,
          storage: str | None = None, study: str | None = None, out_dir: Path | None = None) -> RunResult:
    """Load, split, tune, fit, evaluate against baselines, and (with tracking) log and register both models."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data, records = _read(data_dir, site, cfg)
    timings["load_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    split = split_batches(data, records, cfg)
    p = prepare(data, split, cfg)
    timings["features_s"] = time.perf_counter() - t
    trained = fit_models(p, cfg, n_trials, storage, study)
    timings |= trained.timings
    t = time.perf_counter()
    base = fit_baselines(p)
    ye, de = evaluate_trained(data, p, trained.yield_model, trained.deviation_model, base, cfg)
    metrics = ye.metrics | de.metrics
    timings["evaluate_s"] = time.perf_counter() - t
    checks = {k: acceptance(k, metrics, cfg) for k in ("yield", "deviation")}
    info = _split_info(p, data)
    out = out_dir or Path(tempfile.mkdtemp(prefix="cellwatch-report-"))
    paths = report.build("cellwatch training run", ye, de, _summary(metrics, checks, info), out)
    versions: dict[str, str] = {}
    run_id = None
    if tracking is not None:
        t = time.perf_counter()
        run_id, versions = _track(tracking, cfg, p, trained, metrics, checks, info, paths, n_trials, storage)
        timings["mlflow_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    records.close()
    return RunResult(metrics, checks, versions, timings, p.fingerprint, run_id, out, ye, de)


def _track(tracking: Tracking, cfg: ModelConfig, p: Prepared, trained: Trained, metrics: dict[str, float],
           checks: dict[str, list[Check]], info: dict[str, str], paths: dict[str, Path], n_trials: int | None,
           storage: str | None) -> tuple[str, dict[str, str]]:
    mlflow = setup(tracking)
    versions: dict[str, str] = {}
    tags = {"cellwatch.data_fingerprint": p.fingerprint, "cellwatch.code_version": info["code version"],
            "cellwatch.holdout": p.split.holdout_name}
    with mlflow.start_run(run_name="train") as parent:
        mlflow.set_tags(tags | {"cellwatch.kind": "train"})
        mlflow.log_params(cfg.as_dict() | {"n_trials": cfg.n_trials if n_trials is None else n_trials,
                                           "optuna_storage": storage or "in-memory",
                                           "train_batches": len(p.split.train), "holdout_batches": len(p.split.test)})
        _log_run(mlflow, metrics, paths)
        mlflow.log_dict({"train": list(p.split.train), "holdout": list(p.split.test)}, "split.json")
        for kind, model, tuned, example in (
                ("yield", trained.yield_model, trained.yield_tune, p.yield_train),
                ("deviation", trained.deviation_model, trained.deviation_tune, p.warn_train)):
            km = {k: v for k, v in metrics.items() if k.startswith("yield_" if kind == "yield" else "dev_")}
            card = model_card(kind, info, km, checks[kind])
            with mlflow.start_run(run_name=kind, nested=True):
                mlflow.set_tags(tags | {"cellwatch.kind": kind})
                mlflow.log_params({"lgbm." + k: v for k, v in (tuned.params if tuned else {}).items()}
                                  | {"n_rounds": model.n_rounds, "seed": cfg.seed})
                if tuned:
                    mlflow.log_metrics({"optuna_best_value": tuned.best_value, "optuna_trials": tuned.n_complete,
                                        "optuna_pruned": tuned.n_pruned})
                _log_run(mlflow, km, paths)
                mlflow.log_text(card, "model_card.md")
                headline = {k: v for k, v in km.items() if k in HEADLINE and v == v}
                vtags = tags | {"cellwatch.metrics": json.dumps(headline),
                                "cellwatch.acceptance": "pass" if all(c.passed for c in checks[kind]) else "fail"}
                domain = trained.domain if kind == "yield" else None
                versions[kind] = log_model(mlflow, kind, model, domain, example.head(50), vtags, card)
        return parent.info.run_id, versions


def evaluate(data_dir: Path, site: Site, cfg: ModelConfig, tracking: Tracking, alias: str = "champion",
             out_dir: Path | None = None) -> RunResult:
    """Evaluate the registered models of an alias (or version) and the baselines on the locked hold-out."""
    t0 = time.perf_counter()
    loaded = load_models(tracking, alias)
    data, records = _read(data_dir, site, cfg)
    split: Split = split_batches(data, records, cfg)
    p = prepare(data, split, cfg)
    base = fit_baselines(p)
    ye, de = evaluate_trained(data, p, loaded.yield_model, loaded.deviation_model, base, cfg)
    metrics = ye.metrics | de.metrics
    checks = {k: acceptance(k, metrics, cfg) for k in ("yield", "deviation")}
    info = _split_info(p, data) | {f"{k} model version": v for k, v in loaded.versions.items()}
    out = out_dir or Path(tempfile.mkdtemp(prefix="cellwatch-eval-"))
    paths = report.build(f"cellwatch evaluation ({alias})", ye, de, _summary(metrics, checks, info), out)
    mlflow = setup(tracking)
    with mlflow.start_run(run_name=f"evaluate-{alias}") as run:
        mlflow.set_tags({"cellwatch.kind": "evaluate", "cellwatch.alias": alias,
                         "cellwatch.data_fingerprint": p.fingerprint}
                        | {f"cellwatch.{k}_version": v for k, v in loaded.versions.items()})
        _log_run(mlflow, metrics, paths)
    records.close()
    timings = {"total_s": time.perf_counter() - t0}
    return RunResult(metrics, checks, loaded.versions, timings, p.fingerprint, run.info.run_id, out, ye, de)
