"""Model outputs for the panel (predicted harvest, yield trajectory, deviation risk, drivers), when a model is there.

The models package is optional to the panel: without a registered champion every function here says so
(`Unavailable`) and the pages show that instead of a number.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import polars as pl

from dashboards.context import Plant

log = logging.getLogger("cellwatch.panel")


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why there is no prediction (shown to the user as is)."""

    why: str


@dataclass(frozen=True, slots=True)
class Harvest:
    """Predicted harvest yield of a batch with its interval."""

    batch_id: str
    due: datetime | None
    low: float
    mid: float
    high: float
    what: str  # e.g. "viable cells at harvest (1e9)"
    model_version: str


class Predictor(Protocol):
    """What the panel asks of a yield/deviation model adapter."""

    version: str

    def harvest(self, batch_id: str, now: datetime) -> Harvest | Unavailable: ...
    def yield_trajectory(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable: ...  # ts, low, mid, high
    def risk(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable: ...  # ts, risk
    def drivers(self, batch_id: str, now: datetime) -> pl.DataFrame | Unavailable: ...  # feature, contribution


NO_MODEL = Unavailable("No model is registered yet: predictions appear here once a data scientist trains and "
                       "promotes one (Models page).")


def _panel_api() -> Any | None:
    """The models package's panel entry point, if that package provides one (it is built separately)."""
    for name in ("models.panel", "models.predict"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def load(plant: Plant) -> Predictor | Unavailable:
    """The champion models as a Predictor, or why there is none."""
    api = _panel_api()
    if api is None or not hasattr(api, "load_predictor"):
        return NO_MODEL
    try:
        got = api.load_predictor(plant.data, plant.site, plant.historian, plant.records)
    except Exception as exc:  # noqa: BLE001 - a broken model must not take the panel down
        log.exception("loading the champion models failed")
        return Unavailable(f"The registered model could not be loaded ({type(exc).__name__}: {exc}).")
    return got if got is not None else NO_MODEL
