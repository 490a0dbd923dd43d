"""Shared set-up for the recommender tests: a small plant history, a response surface with known effects, and
historians with holes cut into them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from models.setpoint_model import BASIS, SetpointEffectModel
from plant.historian import Historian
from plant.site import Site


def synthetic_effect(site: Site, slope: Callable[[str, str], float], sd: float = 0.002, anchor_h: float = 26.0,
                     n_boot: int = 64, seed: int = 0) -> SetpointEffectModel:
    """A response surface whose linear term per (unit kind, setpoint) is slope(kind, tag) (log10 per half PAR)."""
    kinds = sorted({u.kind for u in site.units.values()})
    tags = sorted({t.short for u in site.units for t in site.controllable(u)})
    par = {f"{u.kind}|{t.short}": list(t.par) for u in site.units.values() for t in site.controllable(u.id)}
    theta = np.array([[slope(k, t), 0.0][b] for k in kinds for t in tags for b in range(len(BASIS))])
    rng = np.random.default_rng(seed)
    draws = theta[None] + sd * rng.standard_normal((n_boot, len(theta))) * (theta[None] != 0)
    return SetpointEffectModel.from_dict({
        "init": {"anchor_h": anchor_h, "n_boot": n_boot}, "kinds": kinds, "tags": tags, "par": par,
        "theta": theta.tolist(), "draws": draws.tolist(), "varied": {k: 100 for k in par}, "residual_sd": 0.05,
        "n_batches": 1000})


def copy_unit_history(src: Historian, dst: Path, unit: str, start: datetime, end: datetime,
                      drop: Callable[[pl.DataFrame], pl.Expr] | None = None) -> Historian:
    """A historian holding one unit's samples in [start, end), minus the rows `drop` selects."""
    frame = src.read([t for t in src.tags() if t.startswith(f"{unit}.")], start, end)
    if drop is not None:
        frame = frame.filter(~drop(frame))
    out = Historian(dst)
    out.append(frame)
    return out
