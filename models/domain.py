"""Applicability domain: does a prediction's input lie where the model was trained, and is it fresh?

Three checks: Hotelling T2 and SPE of the standardised feature vector against 99 % limits of the
training rows, the range of the inputs a recommender varies (setpoints, donor covariates), and
staleness of the online tags. Any failure makes a prediction "not trustworthy", with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats
from sklearn.decomposition import PCA

from models.encoding import Encoder


@dataclass(frozen=True, slots=True)
class Applicability:
    """Whether one prediction can be trusted, and why not."""

    trustworthy: bool
    in_domain: bool
    fresh: bool
    t2_ratio: float  # > 1: outside the 99 % T2 limit
    spe_ratio: float
    reasons: tuple[str, ...]


class DomainModel:
    """Fitted on the training feature rows of a model; `check` answers per row."""

    def __init__(self, alpha: float = 0.99, variance: float = 0.95, max_components: int = 30,
                 stale_min: float = 30.0, range_quantile: float = 0.001) -> None:
        self.alpha = alpha
        self.variance = variance
        self.max_components = max_components
        self.stale_min = stale_min
        self.range_quantile = range_quantile

    def fit(self, X: pl.DataFrame) -> DomainModel:  # noqa: N803
        self.encoder_ = Encoder().fit(X)
        x = self.encoder_.transform(X)
        with np.errstate(all="ignore"):
            med = np.nanmedian(x, axis=0)
        self.median_ = np.where(np.isfinite(med), med, 0.0)
        xi = np.where(np.isfinite(x), x, self.median_)
        self.mean_ = xi.mean(axis=0)
        sd = xi.std(axis=0)
        self.sd_ = np.where(sd > 1e-9, sd, 1.0)
        z = (xi - self.mean_) / self.sd_
        full = PCA(n_components=min(self.max_components, *z.shape), svd_solver="covariance_eigh").fit(z)
        k = int(min(np.searchsorted(np.cumsum(full.explained_variance_ratio_), self.variance) + 1, full.n_components_))
        self.components_ = full.components_[:k]
        self.variances_ = full.explained_variance_[:k]
        t2, spe = self._stats(z)
        n = z.shape[0]
        self.t2_limit_ = float(k * (n * n - 1) / (n * (n - k)) * stats.f.ppf(self.alpha, k, n - k))
        self.spe_limit_ = float(np.quantile(spe, self.alpha))  # empirical: SPE of mixed batches is far from chi2
        ranged = [c for c in self.encoder_.numeric_ if c.startswith(("sp_", "cov_")) and not c.endswith("_avg")]
        q = self.range_quantile
        self.ranges_ = {c: (float(X[c].quantile(q)), float(X[c].quantile(1 - q))) for c in ranged
                        if X[c].drop_nulls().len() > 0}
        ages = [c for c in X.columns if c.endswith("_age_min")]
        self.expected_tags_ = {}  # per unit kind, the online tags nearly every training row had
        for (kind,), g in X.group_by("unit_kind"):
            self.expected_tags_[str(kind)] = [c.removesuffix("_age_min") for c in ages
                                              if g[c].null_count() <= 0.05 * g.height]
        return self

    def _stats(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = z @ self.components_.T
        t2 = np.sum(scores**2 / self.variances_, axis=1)
        spe = np.sum((z - scores @ self.components_) ** 2, axis=1)
        return t2, spe

    def check(self, X: pl.DataFrame) -> list[Applicability]:  # noqa: N803
        """One verdict per row."""
        x = self.encoder_.transform(X)
        z = (np.where(np.isfinite(x), x, self.median_) - self.mean_) / self.sd_
        t2, spe = self._stats(z)
        out = []
        for i in range(X.height):
            row = X.row(i, named=True)
            reasons: list[str] = []
            r_t2, r_spe = float(t2[i] / self.t2_limit_), float(spe[i] / self.spe_limit_)
            if r_t2 > 1:
                reasons.append(f"T2 {t2[i]:.1f} above the 99 % limit {self.t2_limit_:.1f} of the training data")
            if r_spe > 1:
                reasons.append(f"SPE {spe[i]:.1f} above the 99 % limit {self.spe_limit_:.1f} of the training data")
            for c, (lo, hi) in self.ranges_.items():
                v = row.get(c)
                if v is not None and not lo <= v <= hi:
                    reasons.append(f"{c} = {v:g} outside the training range [{lo:g}, {hi:g}]")
            in_domain = not reasons
            for tag in self.expected_tags_.get(str(row.get("unit_kind")), []):
                age = row.get(f"{tag}_age_min")
                if age is None:
                    reasons.append(f"stale input: {tag} has no good value in this batch yet")
                elif age > self.stale_min:
                    reasons.append(f"stale input: {tag} last good value {age:.0f} min ago")
            fresh = not any(r.startswith("stale") for r in reasons)
            out.append(Applicability(not reasons, in_domain, fresh, r_t2, r_spe, tuple(reasons)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"init": {"alpha": self.alpha, "variance": self.variance, "max_components": self.max_components,
                         "stale_min": self.stale_min, "range_quantile": self.range_quantile},
                "encoder": self.encoder_.to_dict(), "median": self.median_.tolist(), "mean": self.mean_.tolist(),
                "sd": self.sd_.tolist(), "components": self.components_.tolist(), "variances": self.variances_.tolist(),
                "t2_limit": self.t2_limit_, "spe_limit": self.spe_limit_, "ranges": self.ranges_,
                "expected_tags": self.expected_tags_}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> DomainModel:
        d = json.loads(Path(path).read_text())
        m = cls(**d["init"])
        m.encoder_ = Encoder.from_dict(d["encoder"])
        for name in ("median", "mean", "sd", "components", "variances"):
            setattr(m, f"{name}_", np.asarray(d[name], dtype=float))
        m.t2_limit_, m.spe_limit_ = float(d["t2_limit"]), float(d["spe_limit"])
        m.ranges_ = {k: tuple(v) for k, v in d["ranges"].items()}
        m.expected_tags_ = d["expected_tags"]
        return m
