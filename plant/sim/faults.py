"""Fault catalogue of the twin: kinds, targets, realistic rates and durations (domain.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Target = Literal["unit", "room"]


@dataclass(frozen=True, slots=True)
class FaultKind:
    """A failure mode. rate: probability per batch (unit faults) or expected events per room-day."""

    kind: str
    target: Target
    rate: float
    min_h: float
    max_h: float
    severity: Literal["minor", "major", "critical"]
    description: str


UNIT_FAULTS: dict[str, FaultKind] = {f.kind: f for f in (
    FaultKind("bacterial_contamination", "unit", 0.004, 24, 96, "critical",
              "bacteria double every 20-60 min: DO crashes, pH falls, glucose drops faster than VCD explains"),
    FaultKind("fungal_contamination", "unit", 0.001, 48, 120, "critical",
              "yeast/fungi double every 1.5-3 h: the same signature as bacteria, 2-4 days to show"),
    FaultKind("mycoplasma", "unit", 0.001, 96, 300, "major",
              "no online signature; slower growth, found by PCR at release"),
    FaultKind("temperature_excursion", "unit", 0.02, 2, 10, "minor",
              "heater/incubator fault or door open: temperature ramps away from 37 C"),
    FaultKind("ph_probe_drift", "unit", 0.15, 48, 200, "minor",
              "online pH drifts from the offline gas analyser; the controller corrects a phantom error"),
    FaultKind("do_probe_failure", "unit", 0.01, 4, 48, "minor",
              "DO probe flatlines, steps, turns noisy or reports a sensor failure"),
    FaultKind("perfusion_pump_failure", "unit", 0.01, 4, 24, "major",
              "perfusion flow 0, weight constant, glucose falls, lactate rises, pH falls"),
    FaultKind("overfeed_valve_leak", "unit", 0.005, 2, 12, "minor",
              "weight rises above setpoint; dilution lowers VCD without changing viability"),
    FaultKind("co2_supply_failure", "unit", 0.005, 1, 8, "major",
              "CO2 in the gas goes to 0, pH rises toward 7.8-8.4"),
    FaultKind("air_supply_failure", "unit", 0.004, 1, 6, "major",
              "no air/O2 to the headspace: DO falls toward 0 at high density"),
    FaultKind("agitation_stop", "unit", 0.004, 0.5, 6, "major",
              "rocker/agitator stops (rpm 0): kLa collapses, DO falls"),
    FaultKind("bag_leak", "unit", 0.003, 4, 48, "major",
              "unexplained weight loss of a rocking bag; contamination risk"),
)}

# Derived labels: not injected events but properties of the starting material or transduction.
DERIVED_UNIT_LABELS: dict[str, str] = {
    "poor_donor_material": "donor cells expand poorly: long lag, low growth rate, low fold expansion",
    "low_transduction": "CAR+ fraction below 10 % at the day-5 in-process control",
}

ROOM_FAULTS: dict[str, FaultKind] = {f.kind: f for f in (
    FaultKind("hvac_trip", "room", 1 / 180, 0.5, 4, "critical",
              "air handler trips: pressure cascade collapses within minutes, particles rise over 10-30 min"),
    FaultKind("door_held_open", "room", 0.3, 1 / 60, 0.1, "minor",
              "door held open: transient dip of the differential pressure"),
    FaultKind("hepa_leak", "room", 1 / 365, 24, 240, "major",
              "HEPA filter leak: persistent local rise of 0.5 um counts"),
    FaultKind("personnel_shedding", "room", 0.05, 0.1, 1.0, "major",
              "an operator sheds particles: consecutive elevated 5.0 um counts during operation"),
)}

ALL_FAULTS: dict[str, FaultKind] = {**UNIT_FAULTS, **ROOM_FAULTS}


@dataclass(frozen=True, slots=True)
class Injection:
    """A fault forced by configuration: kind, target unit/room id, start and duration."""

    kind: str
    target: str
    start: datetime
    duration_h: float
    params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ALL_FAULTS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(sorted(ALL_FAULTS))}")
        if self.start.tzinfo is None:
            raise ValueError(f"injection start must be timezone-aware UTC, got {self.start!r}")
        if self.duration_h <= 0:
            raise ValueError(f"injection duration_h must be > 0, got {self.duration_h}")
