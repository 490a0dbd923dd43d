"""What the Models page reads: MLflow runs and registered versions, champion vs challenger, input drift,
and the signed promotion through the gate. MLflow is imported lazily (about 3 s)."""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import polars as pl

from dashboards.context import Plant
from plant.gmp_records import record_model_promotion
from plant.model_records import PromotionRecord, promotions, record_promotion
from plant.users import Session, Signature

UTC = timezone.utc
CHAMPION, CHALLENGER = "champion", "challenger"
DRIFT_WATCH, DRIFT_ALERT = 0.1, 0.25  # PSI: < 0.1 stable, 0.1-0.25 watch, > 0.25 drifted (usual rule of thumb)


@dataclass(frozen=True, slots=True)
class Version:
    """A registered model version with its aliases and its run's metrics."""

    model: str
    version: str
    aliases: tuple[str, ...]
    created: datetime
    run_id: str | None
    metrics: dict[str, float]
    description: str


def store_exists(plant: Plant) -> bool:
    """Whether the MLflow store exists (nothing is created by looking: a new store takes seconds to set up)."""
    return plant.mlflow_db.exists()


def client(plant: Plant) -> Any:
    """An MlflowClient on the data folder's store (sqlite metadata, artifacts under mlruns/)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in the server log
    import mlflow

    return mlflow.MlflowClient(tracking_uri=plant.mlflow_uri, registry_uri=plant.mlflow_uri)


def registry_api() -> Any | None:
    """models.registry when the models package provides it (train/promote through its gate)."""
    try:
        return importlib.import_module("models.registry")
    except ImportError:
        return None


def _ts(ms: int | None) -> datetime:
    return datetime.fromtimestamp((ms or 0) / 1000, UTC)


def versions(mc: Any) -> list[Version]:
    """Every registered version of every model, newest first."""
    out = []
    for rm in mc.search_registered_models():
        # version search results carry no aliases; the registered model holds them (alias -> version)
        by_version: dict[str, list[str]] = {}
        for alias, version in (mc.get_registered_model(rm.name).aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        for v in mc.search_model_versions(f"name='{rm.name}'"):
            metrics = dict(mc.get_run(v.run_id).data.metrics) if v.run_id else {}
            out.append(Version(rm.name, str(v.version), tuple(sorted(by_version.get(str(v.version), ()))),
                               _ts(v.creation_timestamp), v.run_id, metrics, v.description or ""))
    return sorted(out, key=lambda v: (v.model, -int(v.version)))


def versions_frame(vs: list[Version]) -> pl.DataFrame:
    rows = [(v.model, v.version, ", ".join(v.aliases), v.created, v.run_id, v.description) for v in vs]
    return pl.DataFrame(rows, schema={"model": pl.String(), "version": pl.String(), "aliases": pl.String(),
                                      "created": pl.Datetime("us", "UTC"), "run": pl.String(),
                                      "description": pl.String()}, orient="row")


def runs(mc: Any, limit: int = 50) -> pl.DataFrame:
    """The newest runs of every experiment: name, experiment, start, status and their metrics."""
    exps = {e.experiment_id: e.name for e in mc.search_experiments()}
    if not exps:
        return pl.DataFrame()
    rows = []
    for r in mc.search_runs(list(exps), max_results=limit, order_by=["attributes.start_time DESC"]):
        rows.append({"run": r.info.run_name, "experiment": exps.get(r.info.experiment_id, "?"),
                     "started": _ts(r.info.start_time), "status": r.info.status, "run_id": r.info.run_id,
                     **{k: float(v) for k, v in sorted(r.data.metrics.items())}})
    return pl.DataFrame(rows)


def compare(vs: list[Version], model: str) -> pl.DataFrame:
    """Champion and challenger of a model side by side, metric by metric."""
    by = {a: v for v in vs if v.model == model for a in v.aliases}
    champ, chall = by.get(CHAMPION), by.get(CHALLENGER)
    names = sorted(set(champ.metrics if champ else {}) | set(chall.metrics if chall else {}))
    rows = [(n, champ.metrics.get(n) if champ else None, chall.metrics.get(n) if chall else None) for n in names]
    schema = {"metric": pl.String(), f"champion v{champ.version if champ else '-'}": pl.Float64(),
              f"challenger v{chall.version if chall else '-'}": pl.Float64()}
    return pl.DataFrame(rows, schema=schema, orient="row")


# ------------------------------------------------------------------------------------------ drift

def psi(reference: np.ndarray, live: np.ndarray, bins: int = 10) -> float | None:
    """Population stability index of live values against reference deciles (None when either is too small)."""
    reference, live = reference[np.isfinite(reference)], live[np.isfinite(live)]
    if reference.size < 20 or live.size < 5:
        return None
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if edges.size < 3:  # a constant input: drift is any change of the constant
        return 0.0 if np.allclose(live, edges[0]) else float("inf")
    edges[0], edges[-1] = -np.inf, np.inf
    ref = np.histogram(reference, edges)[0] / reference.size
    cur = np.histogram(live, edges)[0] / live.size
    ref, cur = np.clip(ref, 1e-4, None), np.clip(cur, 1e-4, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def drift(plant: Plant, now: datetime, trained_until: datetime | None, live: timedelta = timedelta(hours=24),
          reference: timedelta = timedelta(days=14)) -> pl.DataFrame:
    """PSI of each measured unit input (by unit kind) in the last `live` hours against the `reference` period
    before the model's training data ended (default: the period before the live window)."""
    cut = min(trained_until or now - live, now - live)
    site = plant.site
    tags = [t for t in site.tags.values() if t.owner in site.units and not t.controllable]
    kinds = {u.id: u.kind for u in site.units.values()}
    frame = pl.concat([src.historian.resample([t.name for t in tags], cut - reference, now + timedelta(minutes=1),
                                               every="10m") for src in plant.sources()])
    frame = frame.drop_nulls("value").unique(["tag", "ts"], keep="first").with_columns(
        unit=pl.col("tag").str.split(".").list.first(), short=pl.col("tag").str.split(".").list.last())
    rows = []
    for (kind, short), part in frame.with_columns(kind=pl.col("unit").replace_strict(kinds)).group_by(
            "kind", "short", maintain_order=True):
        ref = part.filter(pl.col("ts") < cut)["value"].to_numpy()
        cur = part.filter(pl.col("ts") >= now - live)["value"].to_numpy()
        score = psi(ref, cur)
        rows.append((kind, short, ref.size, cur.size, float(np.mean(ref)) if ref.size else None,
                     float(np.mean(cur)) if cur.size else None, score,
                     "-" if score is None else "drifted" if score > DRIFT_ALERT else "watch" if score > DRIFT_WATCH
                     else "stable"))
    schema = {"unit kind": pl.String(), "input": pl.String(), "reference n": pl.Int64(), "live n": pl.Int64(),
              "reference mean": pl.Float64(), "live mean": pl.Float64(), "PSI": pl.Float64(), "verdict": pl.String()}
    return pl.DataFrame(rows, schema=schema, orient="row").sort("unit kind", "input")


# ------------------------------------------------------------------------------------------ promotion

def _rules() -> list[tuple[str, str, float]]:
    """The acceptance criteria of models/config.py as (metric name suffix, comparison, limit)."""
    from models.config import load_config

    cfg = load_config()
    y, d = cfg.yield_acceptance, cfg.deviation_acceptance
    return [("rmse_log10_day5", "<=", y.max_rmse_log10_day5), ("coverage", ">=", y.min_coverage),
            ("coverage", "<=", y.max_coverage), ("detection_rate", ">=", d.min_detection_rate),
            ("false_alarms_per_batch_day", "<=", d.max_false_alarms_per_batch_day)]


def gate(plant: Plant, mc: Any, v: Version) -> dict[str, Any]:
    """The promotion gate of a version: its hold-out metrics against the acceptance criteria, and the hash of
    its evaluation report (a run artifact named eval*/report*). `passed` only when every check applies and holds."""
    checks = []
    for suffix, op, limit in _rules():
        for name, value in v.metrics.items():
            if name == suffix or name.endswith("_" + suffix) or name.endswith("." + suffix):
                ok = value <= limit if op == "<=" else value >= limit
                checks.append({"metric": name, "value": value, "rule": f"{op} {limit:g}", "ok": bool(ok)})
    report_hash, report = None, None
    if v.run_id:
        for art in mc.list_artifacts(v.run_id):
            base = art.path.rsplit("/", 1)[-1].lower()
            if not art.is_dir and base.startswith(("eval", "report")):
                local = mc.download_artifacts(v.run_id, art.path)
                from plant.gmp_records import file_hash

                report, report_hash = art.path, file_hash(local)
                break
    why = ("no hold-out metrics the gate knows" if not checks else
           "failed: " + ", ".join(c["metric"] for c in checks if not c["ok"]) if not all(c["ok"] for c in checks)
           else "no evaluation report artifact" if report_hash is None else "all checks hold")
    return {"passed": bool(checks) and all(c["ok"] for c in checks) and report_hash is not None, "why": why,
            "checks": checks, "report": report, "report_hash": report_hash}


def promote(plant: Plant, session: Session, model: str, version: str, reason: str, password: str,
            report_hash: str, gate: dict[str, Any]) -> Signature:
    """Make `version` the champion: needs model.promote, a passed gate and the promoter's e-signature.

    models.registry.promote is used when the models package provides it (its gate, its records)."""
    plant.users.require(session, "model.promote")
    api = registry_api()
    if api is not None and hasattr(api, "promote"):
        return api.promote(plant.data, plant.users, session.username, password, model, version, reason)
    if not gate.get("passed"):
        raise ValueError(f"{model} v{version} did not pass the promotion gate: {gate.get('why', 'no evaluation')}")
    mc = client(plant)
    aliases = mc.get_registered_model(model).aliases or {}
    previous = None if aliases.get(CHAMPION) is None else str(aliases[CHAMPION])
    sig = record_model_promotion(plant.users, session.username, password, model, version, CHAMPION, report_hash,
                                 reason, previous)
    mc.set_registered_model_alias(model, CHAMPION, version)
    if str(aliases.get(CHALLENGER)) == version:  # the challenger it was is now the champion
        mc.delete_registered_model_alias(model, CHALLENGER)
    record_promotion(plant.records, PromotionRecord(sig.ts, model, version, previous, "promoted", session.username,
                                                    reason, str(gate.get("holdout", "-")),
                                                    {"signature_id": sig.id, "gate": gate}))
    return sig


def promotion_history(plant: Plant) -> pl.DataFrame:
    return promotions(plant.records).with_columns(pl.col("details").map_elements(
        lambda d: json.loads(d).get("signature_id"), return_dtype=pl.Int64).alias("signature"))
