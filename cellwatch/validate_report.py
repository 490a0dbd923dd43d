"""The closed-loop validation report: per-pair outcomes, paired uplift with its 95 % interval, safety counts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import stats


@dataclass(frozen=True, slots=True)
class ArmResult:
    """One arm of a pair at harvest: measured yield, release, deviations."""

    yield_cells: float  # total viable cells as measured at release
    released: bool
    failed_attributes: tuple[str, ...]
    fault_labels: int  # the twin's ground-truth faults (the same in both arms: common random numbers)
    excursions: int  # episodes beyond a measured tag's action limits

    @property
    def deviations(self) -> int:
        """Faults + out-of-specification release attributes + action-limit excursions."""
        return self.fault_labels + len(self.failed_attributes) + self.excursions


@dataclass(frozen=True, slots=True)
class PairResult:
    batch_id: str
    unit: str
    unit_kind: str
    recipe: ArmResult
    advised: ArmResult
    changes: int  # setpoint changes applied in the advised arm

    @property
    def uplift(self) -> float:
        """Relative yield gain of the advised arm over the recipe arm."""
        return self.advised.yield_cells / self.recipe.yield_cells - 1.0 if self.recipe.yield_cells > 0 else math.nan


@dataclass(frozen=True)
class ValidationReport:
    """Paired comparison of the advised arm with the recipe arm."""

    n_pairs: int
    seed: int
    cadence_h: float
    model_version: str
    uplift_mean: float  # mean of the per-pair relative gains
    uplift_ci: tuple[float, float]  # 95 %, paired t interval
    uplift_median: float
    uplift_geomean: float  # exp(mean log ratio) - 1
    failed: tuple[int, int]  # (recipe arm, advised arm): batches rejected at release
    deviations: tuple[int, int]
    excursions: tuple[int, int]
    setpoint_changes: int
    outside_limits: int  # recommendations outside the PAR or above the maximum step (must be 0)
    advice: dict[str, int]  # advice given / each no-advice reason, over all asks
    elapsed_s: float
    pairs: tuple[PairResult, ...] = field(repr=False, default=())

    def metrics(self) -> dict[str, float]:
        return {"uplift_mean": self.uplift_mean, "uplift_ci_low": self.uplift_ci[0],
                "uplift_ci_high": self.uplift_ci[1], "uplift_median": self.uplift_median,
                "uplift_geomean": self.uplift_geomean, "failed_recipe": float(self.failed[0]),
                "failed_advised": float(self.failed[1]), "deviations_recipe": float(self.deviations[0]),
                "deviations_advised": float(self.deviations[1]), "excursions_recipe": float(self.excursions[0]),
                "excursions_advised": float(self.excursions[1]), "setpoint_changes": float(self.setpoint_changes),
                "outside_limits": float(self.outside_limits), "elapsed_s": self.elapsed_s}

    def passed(self, min_uplift: float = 0.10) -> bool:
        """The acceptance criteria of the recommender (issue 6)."""
        return (self.uplift_mean >= min_uplift and self.uplift_ci[0] > 0 and self.failed[1] <= self.failed[0]
                and self.deviations[1] <= self.deviations[0] and self.outside_limits == 0)

    def pairs_frame(self) -> pl.DataFrame:
        rows = [{"batch_id": p.batch_id, "unit": p.unit, "unit_kind": p.unit_kind, "changes": p.changes,
                 "yield_recipe": p.recipe.yield_cells, "yield_advised": p.advised.yield_cells, "uplift": p.uplift,
                 "released_recipe": p.recipe.released, "released_advised": p.advised.released,
                 "deviations_recipe": p.recipe.deviations, "deviations_advised": p.advised.deviations}
                for p in self.pairs]
        return pl.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "pairs"}
        d["by_unit_kind"] = _by_kind(self.pairs)
        d["passed"] = self.passed()
        return d

    def summary(self) -> str:
        lo, hi = self.uplift_ci
        kinds = "; ".join(f"{k}: {v['uplift_mean']:+.1%} (n={v['n']})" for k, v in _by_kind(self.pairs).items())
        asks = ", ".join(f"{k} {v}" for k, v in sorted(self.advice.items()))
        return "\n".join([
            f"closed-loop validation of {self.model_version}: {self.n_pairs} paired batches, seed {self.seed}, "
            f"advice every {self.cadence_h:g} h",
            f"  harvest yield uplift  mean {self.uplift_mean:+.1%}  95 % CI [{lo:+.1%}, {hi:+.1%}]  "
            f"median {self.uplift_median:+.1%}  geometric {self.uplift_geomean:+.1%}",
            f"  by unit kind          {kinds}",
            f"  failed batches        recipe {self.failed[0]}  advised {self.failed[1]}",
            f"  deviations            recipe {self.deviations[0]}  advised {self.deviations[1]}  "
            f"(action-limit excursions {self.excursions[0]} / {self.excursions[1]})",
            f"  setpoint changes      {self.setpoint_changes}  (outside PAR or above max step: {self.outside_limits})",
            f"  advice asked          {asks}",
            f"  acceptance            {'PASSED' if self.passed() else 'NOT MET'}   ({self.elapsed_s:.0f} s)",
        ])


def paired_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """t interval of the mean of paired differences."""
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return (math.nan, math.nan)
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return (float(x.mean() - half), float(x.mean() + half))


def _by_kind(pairs: tuple[PairResult, ...]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in sorted({p.unit_kind for p in pairs}):
        u = np.array([p.uplift for p in pairs if p.unit_kind == kind])
        out[kind] = {"n": float(len(u)), "uplift_mean": float(np.nanmean(u))}
    return out


def summarise(pairs: tuple[PairResult, ...], seed: int, cadence_h: float, version: str, advice: dict[str, int],
              outside: int, elapsed_s: float) -> ValidationReport:
    u = np.array([p.uplift for p in pairs])
    ok = np.isfinite(u)
    ratio = np.array([p.advised.yield_cells / p.recipe.yield_cells for p in pairs
                      if p.recipe.yield_cells > 0 and p.advised.yield_cells > 0])
    return ValidationReport(
        n_pairs=len(pairs), seed=seed, cadence_h=cadence_h, model_version=version,
        uplift_mean=float(u[ok].mean()) if ok.any() else math.nan, uplift_ci=paired_ci(u),
        uplift_median=float(np.median(u[ok])) if ok.any() else math.nan,
        uplift_geomean=float(np.exp(np.mean(np.log(ratio))) - 1) if len(ratio) else math.nan,
        failed=(sum(not p.recipe.released for p in pairs), sum(not p.advised.released for p in pairs)),
        deviations=(sum(p.recipe.deviations for p in pairs), sum(p.advised.deviations for p in pairs)),
        excursions=(sum(p.recipe.excursions for p in pairs), sum(p.advised.excursions for p in pairs)),
        setpoint_changes=sum(p.changes for p in pairs), outside_limits=outside, advice=dict(advice),
        elapsed_s=elapsed_s, pairs=pairs)
