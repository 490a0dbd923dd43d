"""Fault-injection plans for model benchmarks and tests: extra unit faults so rare kinds have examples."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from plant.sim.faults import UNIT_FAULTS, Injection
from plant.sim.history import DEFAULT_START, schedule
from plant.site import Site

# faults with an online signature (mycoplasma, poor donor and low transduction have none)
ONLINE_KINDS = ("temperature_excursion", "do_probe_failure", "perfusion_pump_failure", "overfeed_valve_leak",
                "co2_supply_failure", "air_supply_failure", "agitation_stop", "bacterial_contamination", "bag_leak")


def every_nth_batch(site: Site, n_batches: int, seed: int, every: int = 2) -> list[Injection]:
    """One fault in every `every`-th batch, cycling through ONLINE_KINDS, at a random culture time.

    Perfusion pump failures start after perfusion has (feed start + 30 h): before, they have no signature.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4242]))
    out = []
    for i, p in enumerate(schedule(site, n_batches, seed, DEFAULT_START)):
        if i % every:
            continue
        kinds = [k for k in ONLINE_KINDS if k != "bag_leak" or p.unit_kind == "rocking_bag"]
        kind = kinds[(i // every) % len(kinds)]
        spec = UNIT_FAULTS[kind]
        lo = p.feed_start_h + 30.0 if kind == "perfusion_pump_failure" else 12.0
        start_h = float(rng.uniform(lo, p.harvest_h - 12.0))
        out.append(Injection(kind, p.unit, p.start + timedelta(hours=start_h),
                             float(rng.uniform(spec.min_h, spec.max_h))))
    return out
