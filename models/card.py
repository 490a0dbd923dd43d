"""Acceptance criteria checks and the model card every registered version carries."""

from __future__ import annotations

import math
from dataclasses import dataclass

from models.config import ModelConfig

INTENDED_USE = {
    "yield": "Predict the harvest viable cell count (log10) of a running T-cell expansion batch at any time, "
             "with an 80 % interval, so process engineers can act while there is time; input to setpoint "
             "recommendations that a person approves. Not for release decisions or dosing.",
    "deviation": "Warn that a deviation is likely to start on a bioreactor within the horizon, with the drivers of "
                 "the risk, ahead of the simple limit alarm. An aid to the operator: it does not replace the "
                 "validated alarm system or any GMP deviation procedure.",
}
LIMITATIONS = {
    "yield": ["Learned from the batches of one site's history; other recipes, units or media are out of domain.",
              "Predictions whose inputs are out of the training domain or stale are flagged not trustworthy.",
              "A contamination after the prediction time is not foreseeable; the interval does not cover it.",
              "The setpoints in force are assumed to stay until harvest."],
    "deviation": ["Only faults with an online signature can be detected; mycoplasma, poor donor material and low "
                  "transduction cannot.",
                  "Rare fault kinds have few training examples; the per-kind detection table shows the evidence.",
                  "The threshold is set for a stated false-alarm rate on the training batches; the held-out rate is "
                  "reported and may differ."],
}


@dataclass(frozen=True, slots=True)
class Check:
    """One acceptance criterion: what, the limit, the value reached, passed or not."""

    name: str
    limit: str
    value: float
    passed: bool


def acceptance(kind: str, metrics: dict[str, float], cfg: ModelConfig) -> list[Check]:
    """The acceptance criteria of a model kind, evaluated on held-out metrics."""
    def get(k: str) -> float:
        return float(metrics.get(k, float("nan")))

    if kind == "yield":
        a = cfg.yield_acceptance
        rmse, cov = get("yield_rmse_day5"), get("yield_coverage_day3plus")
        return [Check("RMSE log10 at culture day 5", f"<= {a.max_rmse_log10_day5}", rmse,
                      rmse <= a.max_rmse_log10_day5),
                Check("interval coverage from day 3", f"{a.min_coverage}..{a.max_coverage}", cov,
                      a.min_coverage <= cov <= a.max_coverage)]
    a2 = cfg.deviation_acceptance
    det, fa = get("dev_detection_rate"), get("dev_false_alarms_per_batch_day")
    return [Check("detection rate (online-signature faults)", f">= {a2.min_detection_rate}", det,
                  det >= a2.min_detection_rate),
            Check("false alarms per batch-day", f"<= {a2.max_false_alarms_per_batch_day}", fa,
                  fa <= a2.max_false_alarms_per_batch_day)]


def primary(kind: str, metrics: dict[str, float]) -> tuple[float, ...]:
    """Comparison key on the locked hold-out: larger is better (compared as a tuple)."""
    if kind == "yield":
        return (-float(metrics.get("yield_rmse_mean_day3plus", math.inf)),)
    return (float(metrics.get("dev_detection_rate", 0.0)), -float(metrics.get("dev_false_alarms_per_batch_day", 9e9)))


def model_card(kind: str, version_info: dict[str, str], metrics: dict[str, float], checks: list[Check]) -> str:
    """Markdown model card: intended use, training data, metrics against acceptance criteria, limitations."""
    lines = [f"# Model card: cellwatch {kind} model", "", "## Intended use", INTENDED_USE[kind], "",
             "## Training data"]
    lines += [f"- {k}: {v}" for k, v in version_info.items()]
    lines += ["", "## Metrics on the locked hold-out against acceptance criteria", "",
              "| criterion | limit | value | result |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.limit} | {c.value:.4g} | {'pass' if c.passed else 'FAIL'} |" for c in checks]
    shown = {k: v for k, v in metrics.items() if k.startswith("yield_rmse_day") or "rate" in k or "lead" in k
             or k in ("yield_coverage_day3plus", "dev_false_alarms_per_batch_day")} if metrics else {}
    lines += ["", "Other held-out metrics: " + ", ".join(f"{k} = {v:.4g}" for k, v in sorted(shown.items())), "",
              "## Limitations"]
    lines += [f"- {x}" for x in LIMITATIONS[kind]]
    return "\n".join(lines) + "\n"
