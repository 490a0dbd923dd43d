"""Setpoint effects on harvest yield: a response surface learnt from the batches whose setpoints varied.

Why not the yield model: its inputs hold the culture's state (cell counts, growth rate, process values), which
the setpoints already shaped. In DoE batches a setpoint is constant, so given the state the yield model learns
that growth to come follows growth so far, whatever the setpoint: a setpoint changed in its input moves little,
and trees add steps at the recipe value. A process-characterisation study asks instead: yield against the
setpoints held over the batch, adjusted for what was known before they acted (donor covariates, unit kind).
Fitted as double machine learning does it (Robinson's partialling-out, cross-fitted LightGBM for the donor
part, a robust ridge for the setpoint part), quadratic in each setpoint on its PAR, per unit kind, with
bootstrap draws over batches for the uncertainty of a gain.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from models.boost import group_folds, train
from models.dataset import YIELD_ATTRIBUTE
from models.encoding import Encoder
from plant.records import Records
from plant.site import Site

_NUISANCE = {"objective": "huber", "alpha": 0.2, "learning_rate": 0.05, "num_leaves": 7, "min_data_in_leaf": 20,
             "feature_fraction": 0.8, "bagging_fraction": 0.8, "lambda_l2": 1.0}
_PROPENSITY = {**_NUISANCE, "objective": "l2"}
BASIS = ("lin", "quad")


def time_weighted(setpoints: pl.DataFrame, windows: pl.DataFrame, tags: tuple[str, ...]) -> pl.DataFrame:
    """windows (batch_id, lo, hi) + sp_mean_<TAG>: the time-weighted setpoint over [lo, hi) (last value if empty)."""
    out = windows
    for tag in tags:
        seg = (setpoints.filter(pl.col("tag") == tag).sort("batch_id", "ts")
               .with_columns(nxt=pl.col("ts").shift(-1).over("batch_id")).select("batch_id", "ts", "nxt", "value"))
        m = windows.select("batch_id", "lo", "hi").join(seg, on="batch_id").filter(pl.col("ts") <= pl.col("hi"))
        a, b = pl.max_horizontal("ts", "lo"), pl.min_horizontal(pl.coalesce("nxt", "hi"), "hi")
        w = pl.max_horizontal((b - a).dt.total_seconds(), pl.lit(0.0))
        agg = m.with_columns(w=w).group_by("batch_id", "lo", "hi").agg(
            pl.when(pl.col("w").sum() > 0).then((pl.col("w") * pl.col("value")).sum() / pl.col("w").sum())
            .otherwise(pl.col("value").sort_by("ts").last()).alias(f"sp_mean_{tag}"))
        out = out.join(agg, on=["batch_id", "lo", "hi"], how="left", maintain_order="left")
    return out


ANCHOR_ANALYTES = ("VCD", "VIAB", "GLC", "LAC", "GLN", "NH4")


def anchor_state(offline: pl.DataFrame, starts: pl.DataFrame, anchor_h: float) -> pl.DataFrame:
    """Per batch, what the offline assays showed by anchor_h: last and previous value of each analyte and the
    growth rate between the last two cell counts (records only, no telemetry)."""
    o = (offline.join(starts, on="batch_id").filter(pl.col("analyte").is_in(ANCHOR_ANALYTES),
                                                   (pl.col("ts") - pl.col("start_ts")).dt.total_seconds()
                                                   < anchor_h * 3600.0).sort("batch_id", "analyte", "ts"))
    last = o.group_by("batch_id", "analyte").agg(pl.col("value").last().alias("last"),
                                                pl.col("value").get(-2, null_on_oob=True).alias("prev"),
                                                ((pl.col("ts").last() - pl.col("ts").get(-2, null_on_oob=True))
                                                 .dt.total_seconds() / 3600.0).alias("dt_h"))
    wide = last.pivot("analyte", index="batch_id", values=["last", "prev"])
    vcd = last.filter(pl.col("analyte") == "VCD").select(
        "batch_id", a_vcd_mu_h=pl.when((pl.col("last") > 0) & (pl.col("prev") > 0))
        .then((pl.col("last") / pl.col("prev")).log() / pl.col("dt_h")))
    wide = wide.rename({c: f"a_{c}" for c in wide.columns if c != "batch_id"})
    return starts.select("batch_id").join(wide, on="batch_id", how="left").join(vcd, on="batch_id", how="left")


def batch_table(records: Records, site: Site, anchor_h: float) -> pl.DataFrame:
    """One row per harvested batch with a yield: unit kind, covariates, assays by anchor_h, log10_tvc, and
    sp_mean_<TAG> = each setpoint's time-weighted mean from the anchor to the planned harvest. Records only."""
    kinds = {u.id: u.kind for u in site.units.values()}
    b = records.batches(status="harvested").filter(pl.col("unit").is_in(list(kinds)))
    tvc = records.release_results().filter(pl.col("attribute") == YIELD_ATTRIBUTE, pl.col("value") > 0)
    b = b.join(tvc.select("batch_id", log10_tvc=pl.col("value").log10()), on="batch_id")
    b = b.select("batch_id", "start_ts", "log10_tvc", unit_kind=pl.col("unit").replace_strict(kinds),
                 planned_h=(pl.col("planned_end_ts") - pl.col("start_ts")).dt.total_seconds() / 3600.0)
    win = b.select("batch_id", lo=pl.col("start_ts") + pl.duration(microseconds=int(anchor_h * 3.6e9)),
                   hi=pl.col("start_ts") + pl.duration(microseconds=(pl.col("planned_h") * 3.6e9).cast(pl.Int64)))
    tags = tuple(sorted({t.short for u in kinds for t in site.controllable(u)}))
    sp = time_weighted(records.setpoints().select("batch_id", "tag", "ts", "value"), win, tags).drop("lo", "hi")
    cov = records.covariates(wide=True)
    cov = cov.rename({c: f"cov_{c}" for c in cov.columns if c != "batch_id"})
    state = anchor_state(records.offline_results(), b.select("batch_id", "start_ts"), anchor_h)
    return (b.join(cov, on="batch_id", how="left").join(state, on="batch_id", how="left")
            .join(sp, on="batch_id", how="left").sort("start_ts", "batch_id"))


def _huber_ridge(a: np.ndarray, y: np.ndarray, lam: np.ndarray, k: float, iters: int = 30) -> np.ndarray:
    """Ridge regression (penalty per coefficient) with a Huber loss by IRLS: a lost batch does not drag the surface."""
    w = np.ones(len(y))
    theta = np.zeros(a.shape[1])
    for _ in range(iters):
        aw = a * w[:, None]
        theta = np.linalg.solve(a.T @ aw + np.diag(lam), aw.T @ y)
        r = y - a @ theta
        s = max(1.4826 * float(np.median(np.abs(r))), 1e-6)
        w = np.minimum(1.0, k * s / np.maximum(np.abs(r), 1e-12))
    return theta


class SetpointEffectModel:
    """log10 yield = donor part(covariates, kind) + sum over setpoints of a quadratic in the held setpoint."""

    def __init__(self, anchor_h: float = 26.0, n_boot: int = 200, ridge: float = 1.0, quad_ridge: float = 20.0,
                 huber_k: float = 1.345, cv_folds: int = 5, n_rounds: int = 200, min_varied: int = 8,
                 seed: int = 7) -> None:
        self.anchor_h = anchor_h
        self.n_boot = n_boot
        self.ridge = ridge
        self.quad_ridge = quad_ridge  # curvature is shrunk harder: noise in it turns a good step into a bad one
        self.huber_k = huber_k
        self.cv_folds = cv_folds
        self.n_rounds = n_rounds
        self.min_varied = min_varied
        self.seed = seed

    def fit(self, table: pl.DataFrame, par: dict[tuple[str, str], tuple[float, float]]) -> SetpointEffectModel:
        """table: batch_table rows (oldest first); par: (unit_kind, tag) -> the PAR that scales the surface."""
        self.kinds_ = sorted(set(table["unit_kind"]) & {k for k, _ in par})
        self.tags_ = sorted({t for _, t in par if f"sp_mean_{t}" in table.columns})
        self.par_ = {f"{k}|{t}": list(par[(k, t)]) for k in self.kinds_ for t in self.tags_ if (k, t) in par}
        table = table.filter(pl.col("unit_kind").is_in(self.kinds_))
        y = table["log10_tvc"].to_numpy().astype(float)
        kinds = table["unit_kind"].to_numpy()
        phi = self._basis(kinds, {t: table[f"sp_mean_{t}"].to_numpy().astype(float) for t in self.tags_})
        x_frame = table.select("unit_kind", *[c for c in table.columns if c.startswith(("cov_", "a_"))])
        x = Encoder().fit(x_frame).transform(x_frame)
        groups = table["batch_id"].to_numpy()
        m, e = np.zeros(len(y)), np.zeros_like(phi)
        for idx in group_folds(groups, self.cv_folds):  # cross-fitting: no batch predicts itself
            rest = np.setdiff1d(np.arange(len(y)), idx)
            m[idx] = train({**_NUISANCE, "seed": self.seed}, x[rest], y[rest], self.n_rounds).predict(x[idx])
            for j in range(phi.shape[1]):
                e[idx, j] = train({**_PROPENSITY, "seed": self.seed}, x[rest], phi[rest, j], 60).predict(x[idx])
        design = self._design(kinds, phi - e)
        varied = self._varied(kinds, table)
        keep = np.array([varied[(k, t)] >= self.min_varied for k in self.kinds_ for t in self.tags_ for _ in BASIS])
        ry = y - m
        lam = np.array([self.ridge, self.quad_ridge] * (design.shape[1] // len(BASIS)))[keep]
        theta = np.zeros(design.shape[1])
        theta[keep] = _huber_ridge(design[:, keep], ry, lam, self.huber_k)
        rng = np.random.default_rng(self.seed)
        draws = np.zeros((self.n_boot, design.shape[1]))
        for i in range(self.n_boot):
            pick = rng.integers(0, len(y), len(y))
            draws[i, keep] = _huber_ridge(design[pick][:, keep], ry[pick], lam, self.huber_k, iters=10)
        self.theta_, self.draws_ = theta, draws
        self.varied_ = {f"{k}|{t}": int(v) for (k, t), v in varied.items()}
        self.residual_sd_ = float(1.4826 * np.median(np.abs(ry - design @ theta)))
        self.n_batches_ = len(y)
        return self

    # ---- the surface ----------------------------------------------------------------------

    def _u(self, kind: str, tag: str, v: np.ndarray) -> np.ndarray:
        lo, hi = self.par_[f"{kind}|{tag}"]
        return (np.asarray(v, dtype=float) - (lo + hi) / 2) / ((hi - lo) / 2)

    def _basis(self, kinds: np.ndarray, values: dict[str, np.ndarray]) -> np.ndarray:
        cols = []
        for t in self.tags_:
            u = np.zeros(len(kinds))
            for k in self.kinds_:
                sel = kinds == k
                u[sel] = self._u(k, t, values[t][sel])
            cols += [u, u * u]
        return np.stack(cols, axis=1)

    def _design(self, kinds: np.ndarray, phi: np.ndarray) -> np.ndarray:
        return np.concatenate([phi * (kinds == k)[:, None] for k in self.kinds_], axis=1)

    def _varied(self, kinds: np.ndarray, table: pl.DataFrame) -> dict[tuple[str, str], int]:
        """Batches per kind whose held setpoint differs from the kind's most common value by > 5 % of the PAR."""
        out = {}
        for k in self.kinds_:
            for t in self.tags_:
                v = table[f"sp_mean_{t}"].to_numpy()[kinds == k].astype(float)
                v = v[np.isfinite(v)]
                lo, hi = self.par_[f"{k}|{t}"]
                mode = float(np.median(v)) if len(v) else 0.0
                out[(k, t)] = int(np.sum(np.abs(v - mode) > 0.05 * (hi - lo)))
        return out

    def learnt(self, kind: str, tag: str) -> bool:
        """Whether enough batches varied this setpoint for its effect to be estimated."""
        return self.varied_.get(f"{kind}|{tag}", 0) >= self.min_varied

    def _index(self, kind: str, tag: str) -> int:
        return (self.kinds_.index(kind) * len(self.tags_) + self.tags_.index(tag)) * len(BASIS)

    def gain_terms(self, kind: str, tag: str, t_frac: float, past: float, current: float, proposed: float,
                   theta: np.ndarray | None = None) -> np.ndarray:
        """log10 yield gain of holding `proposed` instead of `current` from t to harvest, per basis term.

        The batch's mean setpoint is past x t_frac + held x (1 - t_frac): a change matters in proportion to
        the share of the batch still to come. theta: (n_draws, n_params) or None for the point estimate.
        """
        if kind not in self.kinds_ or tag not in self.tags_:
            return np.zeros((1 if theta is None else len(theta), len(BASIS)))
        f = min(max(t_frac, 0.0), 1.0)
        u0 = self._u(kind, tag, np.array(f * past + (1 - f) * current))
        u1 = self._u(kind, tag, np.array(f * past + (1 - f) * proposed))
        dphi = np.array([u1 - u0, u1 * u1 - u0 * u0])
        i = self._index(kind, tag)
        th = (self.theta_[None] if theta is None else theta)[:, i:i + len(BASIS)]
        return th * dphi[None]

    def gain_draws(self, kind: str, t_frac: float, past: dict[str, float], current: dict[str, float],
                   proposed: dict[str, float]) -> np.ndarray:
        """Bootstrap draws of the log10 gain of a plan (several setpoints may change)."""
        total = np.zeros(self.n_boot)
        for tag, v in proposed.items():
            if v != current[tag]:
                total += self.gain_terms(kind, tag, t_frac, past[tag], current[tag], v, self.draws_).sum(axis=1)
        return total

    # ---- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"init": {"anchor_h": self.anchor_h, "n_boot": self.n_boot, "ridge": self.ridge,
                         "quad_ridge": self.quad_ridge, "huber_k": self.huber_k,
                         "cv_folds": self.cv_folds, "n_rounds": self.n_rounds, "min_varied": self.min_varied,
                         "seed": self.seed},
                "kinds": self.kinds_, "tags": self.tags_, "par": self.par_, "theta": self.theta_.tolist(),
                "draws": self.draws_.tolist(), "varied": self.varied_, "residual_sd": self.residual_sd_,
                "n_batches": self.n_batches_}

    @classmethod
    def from_dict(cls, d: dict) -> SetpointEffectModel:
        m = cls(**d["init"])
        m.kinds_, m.tags_, m.par_ = list(d["kinds"]), list(d["tags"]), {k: list(v) for k, v in d["par"].items()}
        m.theta_, m.draws_ = np.asarray(d["theta"], dtype=float), np.asarray(d["draws"], dtype=float)
        m.varied_, m.residual_sd_, m.n_batches_ = dict(d["varied"]), float(d["residual_sd"]), int(d["n_batches"])
        return m

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> SetpointEffectModel:
        return cls.from_dict(json.loads(Path(path).read_text()))
