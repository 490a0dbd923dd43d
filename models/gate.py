"""Promotion gate: a challenger becomes champion only if it passes the acceptance criteria and beats the
champion on the locked hold-out. Every decision, promoted or refused, is recorded (who, what, when, why).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from models.card import Check, acceptance, primary
from models.config import ModelConfig
from models.dataset import load_plant_data
from models.evaluate import evaluate_deviation, evaluate_yield
from models.registry import MODEL_NAMES, Tracking, load_version, resolve, set_champion
from models.training import holdout_yield_rows, split_batches, warning_timeline
from plant.historian import Historian
from plant.model_records import PromotionRecord, record_promotion
from plant.records import Records
from plant.site import Site


class GateRefused(ValueError):
    """The challenger did not pass the gate; the message says why."""


@dataclass(frozen=True, slots=True)
class Decision:
    kind: str
    challenger: str
    champion: str | None
    promoted: bool
    reasons: tuple[str, ...]
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None


def holdout_metrics(kind: str, model: object, data_dir: Path, site: Site, cfg: ModelConfig) -> dict[str, float]:
    """Metrics of one model on the locked hold-out of a data folder (no baselines)."""
    records = Records.open(data_dir / "records.db")
    try:
        data = load_plant_data(Historian(data_dir / "historian"), records, site, bucket_min=cfg.bucket_min)
        split = split_batches(data, records, cfg)
    finally:
        records.close()
    if kind == "yield":
        return evaluate_yield(model, holdout_yield_rows(data, split), {}, cfg.interval).metrics  # type: ignore[arg-type]
    tl, feats, devs = warning_timeline(data, split, cfg)
    return evaluate_deviation(model, None, tl, feats, devs, cfg.warning_horizon_h,  # type: ignore[arg-type]
                              cfg.warning_grace_h).metrics


def decide(kind: str, challenger: dict[str, float], champion: dict[str, float] | None,
           cfg: ModelConfig) -> tuple[bool, list[str], list[Check]]:
    """(promote?, reasons, acceptance checks) for challenger metrics against the champion's."""
    checks = acceptance(kind, challenger, cfg)
    reasons = [f"fails acceptance: {c.name} = {c.value:.4g} (limit {c.limit})" for c in checks if not c.passed]
    if champion is not None and not primary(kind, challenger) > primary(kind, champion):
        reasons.append(f"does not beat the champion on the locked hold-out: {primary(kind, challenger)} vs "
                       f"{primary(kind, champion)} (larger is better)")
    return not reasons, reasons, checks


def promote(data_dir: Path, site: Site, cfg: ModelConfig, tracking: Tracking, kind: str, by: str, reason: str,
            version: str | None = None) -> Decision:
    """Run the gate for one model kind; records the decision; raises GateRefused when refused."""
    if not by.strip() or not reason.strip():
        raise ValueError("a promotion needs the name of who promotes (--by) and why (--reason)")
    challenger = version or resolve(tracking, kind, "challenger")
    if challenger is None:
        raise ValueError(f"{MODEL_NAMES[kind]} has no challenger; train a model first (cellwatch train)")
    champion = resolve(tracking, kind, "champion")
    if champion == challenger:
        raise ValueError(f"{MODEL_NAMES[kind]} version {challenger} is already the champion")
    cw, ctags = load_version(tracking, kind, challenger)
    c_metrics = holdout_metrics(kind, cw.model, data_dir, site, cfg)
    k_metrics = None
    if champion is not None:
        kw, _ = load_version(tracking, kind, champion)
        k_metrics = holdout_metrics(kind, kw.model, data_dir, site, cfg)
    ok, reasons, checks = decide(kind, c_metrics, k_metrics, cfg)
    now = datetime.now(timezone.utc)
    details = {"challenger_metrics": _headline(c_metrics), "champion_metrics": _headline(k_metrics or {}),
               "checks": [{"name": c.name, "limit": c.limit, "value": c.value, "passed": c.passed} for c in checks],
               "refusal_reasons": reasons, "data_fingerprint": ctags.get("cellwatch.data_fingerprint", "")}
    records = Records.open(data_dir / "records.db")
    try:
        record_promotion(records, PromotionRecord(now, MODEL_NAMES[kind], challenger, champion,
                                                  "promoted" if ok else "refused", by, reason,
                                                  ctags.get("cellwatch.holdout", "default"), details))
    finally:
        records.close()
    decision = Decision(kind, challenger, champion, ok, tuple(reasons), c_metrics, k_metrics)
    if not ok:
        raise GateRefused(f"{MODEL_NAMES[kind]} version {challenger} refused: " + "; ".join(reasons))
    set_champion(tracking, kind, challenger, {"cellwatch.promoted_by": by, "cellwatch.promoted_at": now.isoformat(),
                                              "cellwatch.promotion_reason": reason,
                                              "cellwatch.previous_champion": champion or ""})
    return decision


def _headline(m: dict[str, float]) -> dict[str, float]:
    keep = ("yield_rmse_day5", "yield_rmse_mean_day3plus", "yield_coverage_day3plus", "dev_detection_rate",
            "dev_false_alarms_per_batch_day", "dev_median_lead_h_both_alarmed")
    return json.loads(json.dumps({k: m[k] for k in keep if k in m}))
