"""Reference methods on the same features: PLS yield models per culture day, PCA T2/SPE monitoring.

These are what SIMCA-style multivariate batch monitoring does; cellwatch's LightGBM models must beat
them in the same evaluation. Missing values are imputed with training medians here only, because
PLS and PCA cannot route missing values the way the trees do.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats
from sklearn.cross_decomposition import PLSRegression
from sklearn.decomposition import PCA
from sklearn.model_selection import GroupKFold

from models.encoding import Encoder
from models.yield_model import culture_day


class _Imputer:
    """Median imputation, and clipping to the training range (0.5-99.5 %) so one wild value cannot explode."""

    def fit(self, x: np.ndarray) -> _Imputer:
        x = np.where(np.isfinite(x), x, np.nan)
        empty = np.all(np.isnan(x), axis=0)
        x = np.where(empty, 0.0, x)  # all-missing columns: constant 0, dropped by scaling anyway
        self.median_ = np.nanmedian(x, axis=0)
        self.low_, self.high_ = np.nanquantile(x, 0.005, axis=0), np.nanquantile(x, 0.995, axis=0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.where(np.isfinite(x), x, self.median_), self.low_, self.high_)


class PLSYield:
    """One PLS regression per culture day (components chosen by grouped CV), like a batch-level PLS model."""

    def __init__(self, max_components: int = 12, cv_folds: int = 4, exclude_outliers: bool = False,
                 tolerance_h: float = 0.5) -> None:
        self.max_components = max_components
        self.cv_folds = cv_folds
        self.exclude_outliers = exclude_outliers
        self.tolerance_h = tolerance_h

    def fit(self, X: pl.DataFrame, y: np.ndarray, groups: np.ndarray) -> PLSYield:  # noqa: N803
        y = np.asarray(y, float)
        groups = np.asarray(groups)
        keep = np.ones(len(y), bool)
        if self.exclude_outliers:  # what an analyst does by hand: drop batches > 5 robust SD from the median
            med = np.median(y)
            mad = 1.4826 * np.median(np.abs(y - med))
            keep = np.abs(y - med) <= 5 * max(mad, 1e-9)
        self.encoder_ = Encoder().fit(X)
        x = self.encoder_.transform(X)
        t_h = X["t_h"].to_numpy()
        days = culture_day(t_h)
        near = np.abs(t_h - 24 * days) <= self.tolerance_h
        self.models_: dict[int, tuple[_Imputer, PLSRegression]] = {}
        self.components_: dict[int, int] = {}
        for d in np.unique(days[near & keep]):
            rows = np.flatnonzero(near & keep & (days == d))
            if len(rows) < 10:
                continue
            imp = _Imputer().fit(x[rows])
            xd, yd, gd = imp.transform(x[rows]), y[rows], groups[rows]
            nc = self._choose(xd, yd, gd)
            self.models_[int(d)] = (imp, PLSRegression(nc).fit(xd, yd))
            self.components_[int(d)] = nc
        return self

    def _choose(self, x: np.ndarray, y: np.ndarray, g: np.ndarray) -> int:
        """Components by grouped CV; one fit per fold serves every count (NIPALS components are nested)."""
        folds = list(GroupKFold(min(self.cv_folds, len(np.unique(g)))).split(x, y, g))
        top = min(self.max_components, x.shape[1], min(len(tr) for tr, _ in folds) - 1)
        err = np.zeros(top)
        for tr, va in folds:
            pls = PLSRegression(top).fit(x[tr], y[tr])
            scores = pls.transform(x[va])
            y_sd = float(np.std(y[tr], ddof=1)) or 1.0
            for k in range(1, top + 1):
                pred = scores[:, :k] @ pls.y_loadings_[:, :k].T * y_sd + float(np.mean(y[tr]))
                err[k - 1] += float(np.sum((pred.ravel() - y[va]) ** 2))
        return int(np.argmin(err)) + 1

    def predict(self, X: pl.DataFrame) -> np.ndarray:  # noqa: N803
        """Each row by the model of its culture day (the nearest day with a model)."""
        x = self.encoder_.transform(X)
        days = culture_day(X["t_h"].to_numpy())
        have = np.array(sorted(self.models_))
        out = np.empty(len(days))
        for i, d in enumerate(days):
            near = int(have[np.argmin(np.abs(have - d))])
            imp, pls = self.models_[near]
            out[i] = pls.predict(imp.transform(x[i:i + 1])).ravel()[0]
        return out


class PCAMonitor:
    """PCA on normal-operation rows, each feature centred and scaled per culture-time bin; T2 and SPE limits."""

    def __init__(self, variance: float = 0.9, max_components: int = 20, time_bin_h: float = 6.0,
                 alpha: float = 0.99) -> None:
        self.variance = variance
        self.max_components = max_components
        self.time_bin_h = time_bin_h
        self.alpha = alpha

    def _bins(self, t_h: np.ndarray) -> np.ndarray:
        return np.clip(np.floor(t_h / self.time_bin_h).astype(int), 0, None)

    def _scale(self, x: np.ndarray, t_h: np.ndarray) -> np.ndarray:
        x = self.imputer_.transform(x)
        b = np.minimum(self._bins(t_h), len(self.means_) - 1)
        return (x - self.means_[b]) / self.sds_[b]

    def fit(self, X: pl.DataFrame) -> PCAMonitor:  # noqa: N803
        """X: rows of normal operation only."""
        self.encoder_ = Encoder().fit(X)
        x = self.encoder_.transform(X)
        t_h = X["t_h"].to_numpy()
        self.imputer_ = _Imputer().fit(x)
        xi = self.imputer_.transform(x)
        bins = self._bins(t_h)
        nb = int(bins.max()) + 1
        means, sds = np.zeros((nb, x.shape[1])), np.ones((nb, x.shape[1]))
        for b in range(nb):
            rows = xi[bins == b] if np.any(bins == b) else xi
            means[b] = rows.mean(axis=0)
            sd = rows.std(axis=0)
            sds[b] = np.where(sd > 1e-9, sd, 1.0)
        self.means_, self.sds_ = means, sds
        z = self._scale(x, t_h)
        # covariance eigendecomposition: n >> p here, 20x faster than a full SVD, and deterministic
        full = PCA(n_components=min(self.max_components, *z.shape), svd_solver="covariance_eigh").fit(z)
        a = int(min(np.searchsorted(np.cumsum(full.explained_variance_ratio_), self.variance) + 1, full.n_components_))
        self.mean_z_ = full.mean_
        self.components_ = full.components_[:a]
        self.variances_ = full.explained_variance_[:a]
        t2, spe = self._stats(z)
        n, k = z.shape[0], len(self.variances_)
        self.t2_limit_ = float(k * (n * n - 1) / (n * (n - k)) * stats.f.ppf(self.alpha, k, n - k))
        m, v = float(np.mean(spe)), float(np.var(spe))
        g, h = v / (2 * m), 2 * m * m / v  # Box's approximation: SPE ~ g chi2(h)
        self.spe_limit_ = float(g * stats.chi2.ppf(self.alpha, h))
        return self

    def _stats(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        zc = z - self.mean_z_
        scores = zc @ self.components_.T
        t2 = np.sum(scores**2 / self.variances_, axis=1)
        spe = np.sum((zc - scores @ self.components_) ** 2, axis=1)
        return t2, spe

    def statistics(self, X: pl.DataFrame) -> pl.DataFrame:  # noqa: N803
        """t2, spe and their ratio to the limits; `score` = the larger ratio (> 1 is outside the limits)."""
        t2, spe = self._stats(self._scale(self.encoder_.transform(X), X["t_h"].to_numpy()))
        return pl.DataFrame({"t2": t2, "spe": spe, "t2_ratio": t2 / self.t2_limit_, "spe_ratio": spe / self.spe_limit_}
                            ).with_columns(score=pl.max_horizontal("t2_ratio", "spe_ratio"))
