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
from plant.gmp_records import file_hash, record_model_promotion
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

def kind_of(model: str) -> str | None:
    """"yield"/"deviation" for the models package's registered names; None for any other model."""
    api = registry_api()
    names = getattr(api, "MODEL_NAMES", {}) if api is not None else {}
    return next((k for k, n in names.items() if n == model), None)


def _generic_checks(v: Version) -> list[dict[str, Any]]:
    """The acceptance criteria of models/config.py against metric names ending like them (other tools' models)."""
    from models.config import load_config

    cfg = load_config()
    y, d = cfg.yield_acceptance, cfg.deviation_acceptance
    rules = [("rmse_log10_day5", "<=", y.max_rmse_log10_day5), ("coverage", ">=", y.min_coverage),
             ("coverage", "<=", y.max_coverage), ("detection_rate", ">=", d.min_detection_rate),
             ("false_alarms_per_batch_day", "<=", d.max_false_alarms_per_batch_day)]
    checks = []
    for suffix, op, limit in rules:
        for name, value in v.metrics.items():
            if name == suffix or name.endswith(("_" + suffix, "." + suffix)):
                ok = value <= limit if op == "<=" else value >= limit
                checks.append({"metric": name, "value": value, "rule": f"{op} {limit:g}", "ok": bool(ok)})
    return checks


def _report_hash(mc: Any, v: Version) -> tuple[str | None, str | None]:
    """(artifact path, sha256) of the version run's evaluation report (a top-level eval*/report* artifact)."""
    if not v.run_id:
        return None, None
    for art in mc.list_artifacts(v.run_id):
        base = art.path.rsplit("/", 1)[-1].lower()
        if not art.is_dir and base.startswith(("eval", "report")):
            return art.path, file_hash(mc.download_artifacts(v.run_id, art.path))
    return None, None


def gate(plant: Plant, mc: Any, v: Version, versions: list[Version] | None = None) -> dict[str, Any]:
    """The promotion gate as shown before signing: the acceptance criteria on the version's hold-out metrics
    (and, for the models package's models, beating the champion: models.gate.decide), and the hash of its
    evaluation report. `passed` only when every check applies and holds and the report is there."""
    kind, why = kind_of(v.model), ""
    if kind is not None:
        from models.config import load_config
        from models.gate import decide

        champ = next((c for c in versions or () if c.model == v.model and CHAMPION in c.aliases), None)
        ok, reasons, found = decide(kind, v.metrics, champ.metrics if champ else None, load_config())
        checks = [{"metric": c.name, "value": c.value, "rule": c.limit, "ok": bool(c.passed)} for c in found]
        why = "; ".join(reasons)
    else:
        checks = _generic_checks(v)
        ok = bool(checks) and all(c["ok"] for c in checks)
        why = "no hold-out metrics the gate knows" if not checks else "" if ok else \
            "failed: " + ", ".join(c["metric"] for c in checks if not c["ok"])
    report, report_hash = _report_hash(mc, v)
    if ok and report_hash is None:
        ok, why = False, "no evaluation report artifact"
    return {"passed": ok, "why": why or "all checks hold", "checks": checks, "report": report,
            "report_hash": report_hash, "kind": kind}


def promote(plant: Plant, session: Session, model: str, version: str, reason: str, password: str,
            report_hash: str, verdict: dict[str, Any]) -> Signature:
    """Make `version` the champion: needs model.promote, a passed gate and the promoter's e-signature.

    The models package's models are gated again on the locked hold-out (models.gate) before the signature,
    so nothing is signed that the gate then refuses; refusals are recorded as the gate records them."""
    plant.users.require(session, "model.promote")
    if not verdict.get("passed"):
        raise ValueError(f"{model} v{version} did not pass the promotion gate: {verdict.get('why', 'not evaluated')}")
    kind = kind_of(model)
    mc = client(plant)
    aliases = mc.get_registered_model(model).aliases or {}
    previous = None if aliases.get(CHAMPION) is None else str(aliases[CHAMPION])
    details: dict[str, Any] = {"gate": verdict}
    if kind is not None:
        details |= _regate(plant, session, kind, model, version, previous, reason)
    sig = record_model_promotion(plant.users, session.username, password, model, version, CHAMPION, report_hash,
                                 reason, previous)
    tags = {"cellwatch.promoted_by": session.username, "cellwatch.promoted_at": sig.ts.isoformat(),
            "cellwatch.promotion_reason": reason, "cellwatch.signature_id": str(sig.id)}
    if kind is not None:
        from dashboards.predictions import tracking
        from models.registry import set_champion

        set_champion(tracking(plant), kind, version, tags)
    else:
        mc.set_registered_model_alias(model, CHAMPION, version)
        if str(aliases.get(CHALLENGER)) == version:  # the challenger it was is now the champion
            mc.delete_registered_model_alias(model, CHALLENGER)
    record_promotion(plant.records, PromotionRecord(sig.ts, model, version, previous, "promoted", session.username,
                                                    reason, str(details.get("holdout", "-")),
                                                    {"signature_id": sig.id, **details}))
    return sig


def _regate(plant: Plant, session: Session, kind: str, model: str, version: str, previous: str | None,
            reason: str) -> dict[str, Any]:
    """models.gate's decision on the locked hold-out of the training data; a refusal is recorded and raised."""
    from dashboards.predictions import tracking
    from models.config import load_config
    from models.gate import GateRefused, decide, holdout_metrics
    from models.registry import load_version

    cfg, tr = load_config(), tracking(plant)
    wrapper, tags = load_version(tr, kind, version)
    metrics = holdout_metrics(kind, wrapper.model, plant.training_data, plant.site, cfg)
    champion = holdout_metrics(kind, load_version(tr, kind, previous)[0].model, plant.training_data, plant.site,
                               cfg) if previous else None
    ok, reasons, _ = decide(kind, metrics, champion, cfg)
    holdout = tags.get("cellwatch.holdout", "default")
    if not ok:
        record_promotion(plant.records, PromotionRecord(datetime.now(UTC), model, version, previous, "refused",
                                                        session.username, reason, holdout,
                                                        {"refusal_reasons": reasons}))
        raise GateRefused(f"{model} version {version} refused on the locked hold-out: " + "; ".join(reasons))
    return {"holdout": holdout, "holdout_metrics": metrics}


def retrain(plant: Plant) -> str:
    """Train both models on the training data into this panel's MLflow store (new challenger versions)."""
    from dashboards.predictions import tracking
    from models.config import load_config
    from models.pipeline import train

    r = train(plant.training_data, plant.site, load_config(), tracking(plant))
    return ", ".join(f"{k} v{v}" for k, v in r.versions.items()) or "no version registered"


def promotion_history(plant: Plant) -> pl.DataFrame:
    return promotions(plant.records).with_columns(pl.col("details").map_elements(
        lambda d: json.loads(d).get("signature_id"), return_dtype=pl.Int64).alias("signature"))
