"""What happens to one twin batch, drawn up front from its own seed: donor, setpoints, faults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from plant.records import coi_id
from plant.sim.faults import UNIT_FAULTS, Injection
from plant.site import Recipe, Site, Unit

DOE_FRACTION = 0.12  # process-characterisation batches with setpoints varied inside the PAR
ADJUST_FRACTION = 0.25  # production batches in which an operator changes a setpoint
POOR_DONOR = 0.45  # donor multiplier below which the starting material is labelled poor
LOW_CAR = 0.10  # CAR+ fraction below which transduction is labelled low

MEDIA = {  # glucose, glutamine, bicarbonate of the feed medium (mM)
    "rocking_bag": (20.0, 4.0, 23.8),
    "stirred_tank": (20.0, 4.0, 23.8),
    "static_gp": (11.0, 2.0, 23.8),
}


@dataclass(frozen=True, slots=True)
class UnitFault:
    """A fault in a batch: kind, window in culture hours, and its parameters."""

    kind: str
    start_h: float
    end_h: float
    params: tuple[tuple[str, float], ...] = ()

    def param(self, name: str) -> float:
        return dict(self.params)[name]


@dataclass(frozen=True, slots=True)
class SetpointEvent:
    t_h: float
    tag: str  # short name, e.g. TEMP_SP
    value: float
    source: str  # recipe | doe | operator | recommendation


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Everything about one batch that is decided before it runs."""

    index: int
    batch_id: str
    unit: str
    unit_kind: str
    recipe: str
    batch_kind: str
    start: datetime
    harvest_h: float
    transduction_h: float
    feed_start_h: float
    v0: float
    vw: float
    seed_density: float
    donor: float
    mu_max: float
    tau_lag: float
    car_frac: float
    cd3_start: float
    ph_drift_per_day: float
    covariates: tuple[tuple[str, float | None, str | None], ...]
    setpoints: tuple[SetpointEvent, ...]
    faults: tuple[UnitFault, ...]
    entropy: tuple[int, ...]

    @property
    def n_steps(self) -> int:
        return int(round(self.harvest_h * 60))

    def rng(self, stream: int) -> np.random.Generator:
        """An independent random stream of this batch (0 = noise, 1 = offline assays, ...)."""
        return np.random.default_rng(np.random.SeedSequence([*self.entropy, stream]))


def _on_step(t_h: float) -> float:
    """Round a time to the twin's 5-minute physics step so faults and changes start exactly on one."""
    return round(t_h * 12.0) / 12.0


def twin_key(seed: int) -> bytes:
    """Key of the pseudonymous chain-of-identity ids the twin issues for a seed."""
    return f"cellwatch-twin-{seed}".encode()


def _covariates(rng: np.random.Generator, z: float) -> tuple[tuple[str, float | None, str | None], ...]:
    n = rng.standard_normal(4)
    indication = rng.choice(["LBCL", "B-ALL", "MCL"], p=[0.6, 0.25, 0.15])
    cryo = bool(rng.random() < 0.5)
    sex = "F" if rng.random() < 0.45 else "M"
    age = float(np.clip(55 + 12 * (-0.5 * z + 0.87 * n[0]), 18, 80))
    if indication == "B-ALL":
        age = float(np.clip(age - 35, 3, 40))
    return (
        ("age_years", round(age, 0), None),
        ("sex", None, sex),
        ("indication", None, str(indication)),
        ("apheresis_cd3_pct", round(float(np.clip(45 + 12 * (0.6 * z + 0.8 * n[1]), 10, 90)), 1), None),
        ("alc_1e9_per_l", round(float(0.8 * math.exp(0.3 * z + 0.4 * n[2])), 2), None),
        ("prior_lines", float(np.clip(round(2.5 - 0.8 * z + 0.8 * n[3]), 1, 8)), None),
        ("cryopreserved", 1.0 if cryo else 0.0, "yes" if cryo else "no"),
    )


def _fault_params(rng: np.random.Generator) -> dict[str, tuple[tuple[str, float], ...]]:
    """Parameters for every fault kind, always drawn so the random stream does not depend on which occur."""
    u = rng.random(12)
    return {
        "bacterial_contamination": (("doubling_min", 20 + 40 * u[0]),),
        "fungal_contamination": (("doubling_min", 90 + 90 * u[1]),),
        "mycoplasma": (("penalty", 0.2 + 0.2 * u[2]),),
        "temperature_excursion": (("target_c", 22.0 if u[3] < 0.7 else 40.5 + u[4]),),
        "ph_probe_drift": (("per_day", (0.03 + 0.05 * u[5]) * (1 if u[6] < 0.5 else -1)),),
        "do_probe_failure": (("mode", float(int(u[7] * 4))),),  # 0 flatline, 1 dropout, 2 noisy, 3 step
        "perfusion_pump_failure": (),
        "overfeed_valve_leak": (("l_per_h", 0.02 + 0.06 * u[8]),),
        "co2_supply_failure": (),
        "air_supply_failure": (),
        "agitation_stop": (),
        "bag_leak": (("l_per_h", 0.005 + 0.025 * u[9]), ("contaminates", float(u[10] < 0.3))),
    }


def _faults(rng: np.random.Generator, unit: Unit, harvest_h: float, scale: float,
            forced: list[tuple[str, float, float]]) -> tuple[UnitFault, ...]:
    params = _fault_params(rng)
    out: list[UnitFault] = []
    for kind, spec in UNIT_FAULTS.items():
        occurs, s01, d01 = rng.random(3)
        if kind == "bag_leak" and unit.kind != "rocking_bag":
            continue
        if occurs >= spec.rate * scale:
            continue
        start = 12.0 + s01 * max(harvest_h - 18.0, 1.0)
        end = min(start + spec.min_h + d01 * (spec.max_h - spec.min_h), harvest_h)
        if kind in ("bacterial_contamination", "fungal_contamination", "mycoplasma"):
            end = harvest_h  # an infection does not go away
        out.append(UnitFault(kind, _on_step(start), _on_step(end), params[kind]))
    for kind, start, duration in forced:
        start = _on_step(start)
        end = harvest_h if kind.endswith("contamination") or kind == "mycoplasma" else min(start + duration, harvest_h)
        out = [f for f in out if f.kind != kind] + [UnitFault(kind, start, _on_step(end), params[kind])]
    leak = next((f for f in out if f.kind == "bag_leak" and f.param("contaminates") > 0.5), None)
    if leak and not any(f.kind == "bacterial_contamination" for f in out):
        out.append(UnitFault("bacterial_contamination", _on_step(min(leak.start_h + 12.0, harvest_h - 1.0)), harvest_h,
                             params["bacterial_contamination"]))
    return tuple(sorted(out, key=lambda f: (f.start_h, f.kind)))


def _setpoints(rng: np.random.Generator, site: Site, unit: Unit, recipe: Recipe, harvest_h: float,
               doe: bool) -> tuple[SetpointEvent, ...]:
    tags = {t.short: t for t in site.controllable(unit.id)}
    u = rng.random(len(tags))
    events = []
    for (short, tag), x in zip(sorted(tags.items()), u, strict=True):
        value = recipe.setpoints.get(short)
        if doe and tag.par is not None:
            value = tag.par[0] + x * (tag.par[1] - tag.par[0])
        if value is not None:
            events.append(SetpointEvent(0.0, short, round(float(value), 3), "doe" if doe else "recipe"))
    n_adjust = int(rng.integers(1, 3)) if rng.random() < ADJUST_FRACTION and not doe else 0
    current = {e.tag: e.value for e in events}
    for _ in range(n_adjust):
        short = sorted(current)[int(rng.integers(len(current)))]
        tag = tags[short]
        assert tag.par is not None and tag.max_step is not None
        t_h = _on_step(24.0 + rng.random() * max(harvest_h - 48.0, 1.0))
        step = tag.max_step * (0.3 + 0.7 * rng.random()) * (1 if rng.random() < 0.5 else -1)
        value = round(float(np.clip(current[short] + step, *tag.par)), 3)
        if value != current[short]:
            current[short] = value
            events.append(SetpointEvent(t_h, short, value, "operator"))
    return tuple(sorted(events, key=lambda e: (e.t_h, e.tag)))


def plan_batch(site: Site, unit: Unit, recipe: Recipe, index: int, start: datetime, seed: int,
               fault_rate_scale: float = 1.0, forced: list[tuple[str, float, float]] | None = None) -> BatchPlan:
    """Draw one batch from SeedSequence([seed, index]); forced = [(kind, start_h, duration_h)]."""
    entropy = (seed, index)
    rng = np.random.default_rng(np.random.SeedSequence([*entropy, 99]))
    z = float(rng.standard_normal())
    sigma = math.sqrt(math.log(1 + 0.3**2))
    donor = 0.8 * math.exp(sigma * z - sigma**2 / 2)
    covariates = _covariates(rng, z)
    cov = {k: (v, t) for k, v, t in covariates}
    donor *= 0.93 if cov["cryopreserved"][1] == "yes" else 1.0
    donor *= 0.85 if cov["indication"][1] == "MCL" else 1.0
    donor = float(np.clip(donor, 0.3, 1.3))
    mu_max = float(np.clip(rng.normal(0.035, 0.002), 0.028, 0.042))
    tau_lag = float(np.clip(rng.normal(24.0, 4.0) / math.sqrt(donor), 12.0, 48.0))  # poor cells start late
    car = float(rng.beta(4.2, 7.8))
    cd3 = float(np.clip(0.89 + 0.04 * z + 0.07 * rng.standard_normal(), 0.4, 0.995))
    drift = float(rng.normal(0.0, 0.005))
    doe = bool(rng.random() < DOE_FRACTION)
    harvest_h = recipe.harvest_day * 24.0
    setpoints = _setpoints(rng, site, unit, recipe, harvest_h, doe)
    faults = _faults(rng, unit, harvest_h, fault_rate_scale, forced or [])
    return BatchPlan(
        index=index, batch_id=coi_id(site.info.code, index, twin_key(seed)), unit=unit.id, unit_kind=unit.kind,
        recipe=recipe.id, batch_kind="process_characterisation" if doe else "production", start=start,
        harvest_h=harvest_h, transduction_h=recipe.transduction_day * 24.0, feed_start_h=recipe.feed_start_day * 24.0,
        v0=unit.initial_volume_l, vw=unit.working_volume_l, seed_density=recipe.seed_density, donor=donor,
        mu_max=mu_max, tau_lag=tau_lag, car_frac=car, cd3_start=cd3, ph_drift_per_day=drift,
        covariates=covariates, setpoints=setpoints, faults=faults, entropy=entropy,
    )


def recipe_for(site: Site, unit: Unit) -> Recipe:
    """The first recipe of the site that runs on this unit's kind."""
    for r in site.recipes.values():
        if unit.kind in r.unit_kinds:
            return r
    raise ValueError(f"{site.source}: no recipe runs on unit {unit.id} (kind {unit.kind})")


def injections_for(plan_unit: str, start: datetime, harvest_h: float,
                   injections: list[Injection]) -> list[tuple[str, float, float]]:
    """Forced faults that start inside a batch window on its unit, in batch hours."""
    out = []
    for inj in injections:
        if inj.target != plan_unit:
            continue
        t_h = (inj.start - start).total_seconds() / 3600.0
        if 0.0 <= t_h < harvest_h:
            out.append((inj.kind, t_h, inj.duration_h))
    return out
