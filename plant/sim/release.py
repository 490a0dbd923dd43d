"""Release testing of a harvested twin batch against the product specification (domain.md section 9)."""

from __future__ import annotations

from datetime import datetime

import numpy as np

from plant.records import ReleaseResult
from plant.sim.plan import BatchPlan

# attribute: (unit, low, high). CAR+ viable cells cover one dose range (0.6-6.0e8) plus QC retains.
SPEC: dict[str, tuple[str, float | None, float | None]] = {
    "TOTAL_VIABLE_CELLS": ("cells", 1.0e9, None),
    "CAR_POS_VIABLE_CELLS": ("cells", 1.0e8, None),
    "VIABILITY": ("%", 80.0, None),
    "CD3_PCT": ("%", 80.0, None),
    "CAR_PCT": ("%", 10.0, None),
    "ENDOTOXIN": ("EU/mL", None, 5.0),
}


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def release_results(plan: BatchPlan, harvest: dict[str, float], ts: datetime) -> list[ReleaseResult]:
    """Measure the harvest with assay noise and judge every attribute against SPEC."""
    rng = plan.rng(2)
    z = rng.standard_normal(6)
    xv, xd, vol = harvest["xv"], harvest["xd"], harvest["vol"]
    tvc = xv * vol * 1e3 * (1 + 0.05 * z[0])
    viab = float(np.clip(100 * xv / max(xv + xd, 1.0) + 1.5 * z[1], 0, 100))
    fold = max(xv * vol * 1e3 / (plan.seed_density * plan.v0 * 1e3), 0.01)
    non_t = (1 - plan.cd3_start) * 0.5  # non-T cells do not expand and half of them are lost
    cd3 = float(np.clip(100 * plan.cd3_start * fold / (plan.cd3_start * fold + non_t) + 1.0 * z[2], 0, 100))
    car = float(np.clip(100 * plan.car_frac * (1 + 0.05 * z[3]), 0, 100))
    kinds = {f.kind for f in plan.faults}
    contaminated = bool(kinds & {"bacterial_contamination", "fungal_contamination"}) and harvest["bact"] > 10
    endotoxin = float(abs(0.2 + 0.1 * z[4]) + (50.0 if "bacterial_contamination" in kinds and contaminated else 0.0))
    values = {"TOTAL_VIABLE_CELLS": tvc, "CAR_POS_VIABLE_CELLS": tvc * car / 100, "VIABILITY": viab, "CD3_PCT": cd3,
              "CAR_PCT": car, "ENDOTOXIN": endotoxin}
    out = [ReleaseResult(plan.batch_id, name, round(values[name], 4), unit, low, high,
                         _within(values[name], low, high), ts) for name, (unit, low, high) in SPEC.items()]
    out.append(ReleaseResult(plan.batch_id, "STERILITY", None, "", None, None, not contaminated, ts,
                             text="growth" if contaminated else "no growth"))
    myco = "mycoplasma" in kinds
    out.append(ReleaseResult(plan.batch_id, "MYCOPLASMA", None, "", None, None, not myco, ts,
                             text="positive" if myco else "negative"))
    return out
