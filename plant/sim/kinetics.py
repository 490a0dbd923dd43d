"""T-cell expansion kinetics (domain.md section 5), vectorised over a bank of bioreactors.

Every array in `State`, `Params` and `Controls` has one element per reactor, so the same step
serves the fast history generator (one element per batch, all batches in lockstep of culture
time) and the live plant (one element per unit). Only elementwise numpy operations are used, so
a reactor's trajectory does not depend on which other reactors share its bank.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# Cardinal temperature model (Rosso CTMI), normalised to 1 at 37 C.
T_MIN, T_OPT, T_MAX = 28.0, 38.5, 42.5
C_STAR_AIR = 0.20  # mM O2 at air saturation, 37 C
PCO2_PER_PCT = 7.13  # mmHg per % CO2 (713 mmHg dry gas at 37 C)
CO2_RESP_FLOOR = 0.6  # % CO2 the headspace keeps from respiration when the supply fails
KIND_ROCKING, KIND_STR, KIND_STATIC = 0, 1, 2
KINDS = {"rocking_bag": KIND_ROCKING, "stirred_tank": KIND_STR, "static_gp": KIND_STATIC}


def _ctmi(t: np.ndarray) -> np.ndarray:
    num = (t - T_MAX) * (t - T_MIN) ** 2
    den = (T_OPT - T_MIN) * ((T_OPT - T_MIN) * (t - T_OPT) - (T_OPT - T_MAX) * (T_OPT + T_MIN - 2 * t))
    inside = (t > T_MIN) & (t < T_MAX)
    return np.where(inside, num / np.where(den == 0, 1.0, den), 0.0)


_CTMI_37 = float(_ctmi(np.array([37.0]))[0])


def f_temp(t: np.ndarray) -> np.ndarray:
    """Growth factor of temperature: 1 at 37 C, 0.30 at 32 C, 1.07 at 38 C, 0 outside 28-42.5 C."""
    return np.maximum(_ctmi(t) / _CTMI_37, 0.0)


def f_ph(ph: np.ndarray) -> np.ndarray:
    """Growth factor of pH: Gaussian around 7.1, narrower on the acid side."""
    w = np.where(ph < 7.1, 0.35, 0.6)
    return np.exp(-(((ph - 7.1) / w) ** 2))


def kla(kind: np.ndarray, agit: np.ndarray) -> np.ndarray:
    """Oxygen transfer coefficient (1/h) from the unit kind and agitation (rpm)."""
    rocking = 0.3 + 3.2 * (np.maximum(agit, 0.0) / 10.0) ** 2  # 3.5 at 10 rpm, ~7.5 at 15 rpm
    stirred = 0.5 + 11.5 * (np.maximum(agit, 0.0) / 120.0) ** 1.4  # 12 at 120 rpm with sparge
    return np.where(kind == KIND_ROCKING, np.minimum(rocking, 65.0),
                    np.where(kind == KIND_STR, stirred, 50.0))  # gas-permeable base: not limiting


def ph_from(hco3: np.ndarray, co2_pct: np.ndarray) -> np.ndarray:
    """Henderson-Hasselbalch pH from bicarbonate (mM) and dissolved CO2 as % of gas."""
    return 6.1 + np.log10(np.maximum(hco3, 1e-3) / (0.0307 * PCO2_PER_PCT * np.maximum(co2_pct, 1e-3)))


def co2_for_ph(hco3: np.ndarray, ph: np.ndarray) -> np.ndarray:
    """Gas CO2 (%) that brings bicarbonate to a target pH."""
    return np.maximum(hco3, 1e-3) / (0.0307 * PCO2_PER_PCT * 10.0 ** (ph - 6.1))


@dataclass(slots=True)
class Params:
    """Per-reactor kinetic parameters (defaults: domain.md section 5)."""

    kind: np.ndarray
    mu_max: np.ndarray
    donor: np.ndarray
    tau_lag: np.ndarray
    xmax: np.ndarray
    g_in: np.ndarray
    q_in: np.ndarray
    hco3_in: np.ndarray
    ph_control: np.ndarray  # bool: CO2/base control of pH
    do_control: np.ndarray  # bool: O2 enrichment to hold DO
    perfusion: np.ndarray  # bool: unit perfuses (else fed only once)
    hco3_share: np.ndarray  # share of secreted acid taken by bicarbonate (rest: HEPES/phosphate), E
    t_rest: float = 96.0
    k_rest: float = 0.004  # E, calibrated to the domain.md section 5 regression targets
    mu_floor: float = 0.35
    ks_g: float = 0.5
    ks_q: float = 0.2
    ki_l: float = 40.0
    ki_a: float = 5.0
    k_do: float = 2.0
    kd0: float | np.ndarray = 0.0015
    kd_g: float = 0.02
    kd_l: float = 0.01
    kd_a: float = 0.01
    kd_heat: float = 0.02
    kd_ph: float = 0.02
    kd_do: float = 0.01
    k_lys: float = 0.02
    y_xg: float = 1.6e8
    m_g: float = 0.5e-11  # mmol/cell/h (maintenance)
    y_lg: float = 1.7
    y_xq: float = 1.5e9
    y_aq: float = 0.8
    k_qdeg: float = 0.002
    q_o2: float = 5.0e-11  # mmol/cell/h (0.05 pmol/cell/h)


@dataclass(slots=True)
class State:
    """Per-reactor state; concentrations in mM, cells per mL, volume in L, time in h."""

    t: np.ndarray
    xv: np.ndarray
    xd: np.ndarray
    glc: np.ndarray
    lac: np.ndarray
    gln: np.ndarray
    amm: np.ndarray
    hco3: np.ndarray
    o2: np.ndarray
    vol: np.ndarray
    temp: np.ndarray
    co2_gas: np.ndarray  # % CO2 delivered in the gas
    co2_liq: np.ndarray  # % CO2 the liquid is equilibrated with (lags the gas)
    o2_frac: np.ndarray  # O2 fraction of the gas (0.21 air .. 1.0)
    base_ml: np.ndarray
    bact: np.ndarray  # contaminating organisms per mL
    perf_vvd: np.ndarray  # perfusion rate actually delivered, vessel volumes/day

    @property
    def ph(self) -> np.ndarray:
        return ph_from(self.hco3, self.co2_liq)

    @property
    def do_pct(self) -> np.ndarray:
        return 100.0 * self.o2 / C_STAR_AIR

    @property
    def viability(self) -> np.ndarray:
        return self.xv / np.maximum(self.xv + self.xd, 1.0)

    def copy(self) -> State:
        return State(**{f.name: getattr(self, f.name).copy() for f in fields(self)})


@dataclass(slots=True)
class Controls:
    """Per-reactor setpoints and actuator limits in force during a step."""

    temp_sp: np.ndarray
    ph_sp: np.ndarray
    do_sp: np.ndarray
    agit: np.ndarray  # actual agitation (rpm); 0 when stopped
    perf_vvd: np.ndarray  # perfusion rate requested (vessel volumes/day), 0 before feeding
    feed_l_per_h: np.ndarray  # fed-batch medium addition (L/h)
    ph_offset: np.ndarray  # measured - true pH (probe drift) the controller cannot see
    do_meas: np.ndarray  # DO the controller sees (NaN = sensor failure: hold output)
    temp_target_fault: np.ndarray  # NaN = heater fine, else the temperature a failed heater drifts to
    co2_ok: np.ndarray  # bool
    air_ok: np.ndarray  # bool
    perf_ok: np.ndarray  # bool
    leak_in_l_per_h: np.ndarray  # uncommanded medium inflow (valve leak)
    leak_out_l_per_h: np.ndarray  # uncommanded loss (bag leak)
    bact_mu: np.ndarray  # growth rate of contaminants (1/h), 0 = none
    myco: np.ndarray  # growth penalty of a mycoplasma infection, 0..1 (0 = none)


def growth_rate(s: State, p: Params, c: Controls) -> np.ndarray:
    """Specific growth rate mu (1/h) of the T cells."""
    t = s.t
    f_act = (1 - np.exp(-t / p.tau_lag)) * (p.mu_floor + (1 - p.mu_floor) * np.exp(-p.k_rest * np.maximum(0.0, t - p.t_rest)))
    glc, gln = np.maximum(s.glc, 0.0), np.maximum(s.gln, 0.0)
    do = np.maximum(s.do_pct, 0.0)
    mu = (p.mu_max * p.donor * f_act * glc / (p.ks_g + glc) * gln / (p.ks_q + gln)
          / (1 + (np.maximum(s.lac, 0.0) / p.ki_l) ** 2) * p.ki_a / (p.ki_a + np.maximum(s.amm, 0.0))
          * f_temp(s.temp) * f_ph(s.ph) * do / (p.k_do + do) * np.maximum(0.0, 1 - s.xv / p.xmax))
    settle = np.where((p.kind == KIND_ROCKING) & (c.agit < 1.0), 0.8, 1.0)  # cells settle without rocking
    return mu * (1 - c.myco) * settle


def death_rate(s: State, p: Params) -> np.ndarray:
    """Specific death rate kd (1/h), including stress and contamination."""
    ph, do = s.ph, s.do_pct
    kd = (p.kd0 + p.kd_g * np.maximum(0.0, 1 - s.glc / 0.5) + p.kd_l * np.maximum(0.0, (s.lac - 35) / 35)
          + p.kd_a * np.maximum(0.0, (s.amm - 8) / 8) + p.kd_heat * np.maximum(0.0, s.temp - 40)
          + p.kd_ph * np.maximum(0.0, 6.7 - ph) / 0.3 + p.kd_ph * np.maximum(0.0, ph - 7.8) / 0.3
          + p.kd_do * np.maximum(0.0, 1 - do / 2))
    return kd + 0.05 * s.bact / (1e7 + s.bact)


def step(s: State, p: Params, c: Controls, dt: float) -> None:
    """Advance every reactor by dt hours in place (explicit Euler; exact relaxation for O2, T, CO2)."""
    mu = growth_rate(s, p, c)
    kd = death_rate(s, p)
    xv1e3 = s.xv * 1e3  # cells per L
    q_g = mu / p.y_xg + p.m_g
    q_q = mu / p.y_xq
    bact1e3 = s.bact * 1e3
    glc_lim = s.glc / (0.5 + s.glc)
    bact_glc = 2.0e-13 * bact1e3 * glc_lim  # contaminants: fast glucose use, acid, oxygen
    our = p.q_o2 * xv1e3 + 5.0e-12 * bact1e3

    # Liquid flows: perfusion exchanges medium (cells retained); feed and leaks change volume.
    perf = np.where(c.perf_ok, c.perf_vvd, 0.0)
    d_perf = perf / 24.0
    inflow = c.feed_l_per_h + c.leak_in_l_per_h
    d_in = inflow / s.vol
    dil = d_perf + d_in  # fresh medium per culture volume per hour

    s.glc += dt * (-q_g * xv1e3 - bact_glc + dil * (p.g_in - s.glc))
    s.lac += dt * (p.y_lg * q_g * xv1e3 - dil * s.lac)
    s.gln += dt * (-q_q * xv1e3 - p.k_qdeg * s.gln + dil * (p.q_in - s.gln))
    s.amm += dt * (p.y_aq * q_q * xv1e3 + p.k_qdeg * s.gln - dil * s.amm)
    # Media carry phosphate/HEPES besides bicarbonate: only part of the lactic acid consumes HCO3.
    s.hco3 += dt * (-p.hco3_share * (p.y_lg * q_g * xv1e3 + 2.0 * bact_glc) + dil * (p.hco3_in - s.hco3))
    np.maximum(s.glc, 0.0, out=s.glc)
    np.maximum(s.gln, 0.0, out=s.gln)
    np.maximum(s.hco3, 0.1, out=s.hco3)
    s.xv += dt * ((mu - kd) * s.xv - d_in * s.xv)
    s.xd += dt * (kd * s.xv - p.k_lys * s.xd - d_in * s.xd)
    s.bact += dt * (c.bact_mu * glc_lim * s.bact * np.maximum(0.0, 1 - s.bact / 2e9) - d_in * s.bact)
    s.vol = np.clip(s.vol + dt * (inflow - c.leak_out_l_per_h), 0.05, None)
    s.perf_vvd = perf

    # Temperature: the controller holds the setpoint; a failed heater drifts (bag time constant ~1.5 h).
    faulted = ~np.isnan(c.temp_target_fault)
    target = np.where(faulted, c.temp_target_fault, c.temp_sp)
    tau_t = np.where(faulted, 1.5, 0.25)
    s.temp = target + (s.temp - target) * np.exp(-dt / tau_t)

    # pH: CO2 in the gas is the acid actuator (base pump on stirred tanks); the controller acts on the
    # measured pH, so a drifting probe shifts the true pH by the drift.
    true_target = c.ph_sp - c.ph_offset
    co2_need = np.clip(co2_for_ph(s.hco3, true_target), 0.5, 15.0)
    co2_target = np.where(p.ph_control, co2_need, 5.0)
    s.co2_gas = np.where(c.co2_ok, co2_target + (s.co2_gas - co2_target) * np.exp(-dt / 0.1), 0.0)
    base_need = p.ph_control & (p.kind == KIND_STR) & c.co2_ok & (ph_from(s.hco3, s.co2_gas) < true_target - 0.03)
    base_mmol = np.where(base_need, 2.0 * s.vol * dt, 0.0)  # pump delivers 2 mM/h of 1 M NaHCO3
    s.hco3 += base_mmol / s.vol
    s.base_ml += base_mmol  # 1 M: 1 mmol per mL
    co2_eff = np.maximum(s.co2_gas, CO2_RESP_FLOOR)
    s.co2_liq = co2_eff + (s.co2_liq - co2_eff) * np.exp(-dt / 0.5)

    # Dissolved O2: exact relaxation toward the O2 equilibrium of the step (stiff at high kLa).
    k = kla(p.kind, c.agit) * np.where(c.air_ok, 1.0, 0.08)
    hold = np.isnan(c.do_meas)
    err_frac = np.where(hold, 0.0, (c.do_sp - c.do_meas) / 100.0)
    o2_step = np.where(p.do_control & c.air_ok, s.o2_frac + 0.5 * dt * err_frac, 0.21)
    s.o2_frac = np.clip(o2_step, 0.21, 1.0)
    c_star = C_STAR_AIR * s.o2_frac / 0.21
    c_eq = np.maximum(c_star - our / np.maximum(k, 1e-6), 0.0)
    s.o2 = c_eq + (s.o2 - c_eq) * np.exp(-k * dt)
    np.maximum(s.o2, 0.0, out=s.o2)
    s.t += dt


def janas_vvd(vcd: np.ndarray) -> np.ndarray:
    """Perfusion schedule (vessel volumes/day) by viable cell density (Janas 2015, 1 L culture)."""
    return np.select([vcd < 2e6, vcd < 10e6, vcd < 15e6], [0.0, 0.5, 0.75], 1.0)
