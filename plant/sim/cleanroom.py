"""Cleanroom part of the twin: 1-minute particle, pressure, T/RH and occupancy telemetry per graded room.

Every value is a pure function of (seed, room id, UTC day): each room-day draws from its own
``SeedSequence([seed, stream, crc32(room id), day])`` streams, and fault effects are closed-form
functions of the time since the event's start/end. A 400-day block, 400 one-day blocks and
minute-by-minute calls therefore give the same numbers (domain.md sections 6-8).

Particle counts are 1-minute samples at 1 cfm (0.02832 m3): P05/P50 are Poisson counts / 0.02832.
Counts a fault adds are drawn from a separate stream and added, so minutes without a fault effect
are identical with and without the fault.

Faults (plant.sim.faults.ROOM_FAULTS) start at their rates per room-day (Poisson, drawn per start
day; personnel_shedding only while operators are in the room, so its rate is per operating day)
with durations uniform in [min_h, max_h], or are forced by an Injection. Injection.params may fix
hvac_trip target_factor (x the next grade's at-rest levels, default U(1, 3)) and rise_min (~90 %
rise time, default U(10, 30)); door_held_open dp_fraction (default U(0.1, 0.55)); hepa_leak factor
(0.5 um multiplier, default U(3, 10)); personnel_shedding level (5.0 um added, in multiples of
the 5.0 um action limit). An injected personnel_shedding also sets OCC to 1 (someone is in the room).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from plant.samples import QUALITY_DTYPE, SAMPLE_SCHEMA, Quality
from plant.site import ANNEX1_PARTICLE_LIMITS, Site
from plant.sim.faults import ROOM_FAULTS, UNIT_FAULTS, Injection

SAMPLE_M3 = 0.02832  # one minute at 1 cfm (28.3 L/min)
ROOM_TAGS = ("P05", "P50", "DP", "PSTAT", "TEMP", "RH", "OCC")
PSTAT_NORMAL, PSTAT_ROOM_LOW, PSTAT_LOW_SUPPLY = 1.0, 2.0, 7.0  # TSI Pressura status codes
DAY = 1440
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
POST_MIN = 180.0  # after-effects (recovery) of a fault are evaluated this long past its end
TRH_DROPOUTS_PER_DAY = 0.1  # T/RH transmitter "unavailable" (NaN) episodes of 1-3 min
_MIN = np.arange(DAY)
_KINDS = tuple(ROOM_FAULTS)
_ORDER = {"hepa_leak": 0, "personnel_shedding": 1, "door_held_open": 2, "hvac_trip": 3}  # apply order
_S_SCHED, _S_NOISE, _S_EXCESS, _S_FAULTS, _S_ROOM, _S_INJ = range(1, 7)  # rng streams
_CACHE_MAX = 50_000


@dataclass(frozen=True, slots=True)
class RoomFaultEvent:
    """Ground-truth label of a cleanroom fault."""

    kind: str
    room: str
    start: datetime
    end: datetime
    severity: str
    detail: str


@dataclass(frozen=True, slots=True)
class GradeProfile:
    """Normal behaviour of a room grade. Concentrations per m3, times in minutes."""

    p05: tuple[float, float]  # >= 0.5 um (at rest, in operation)
    p50: tuple[float, float]  # >= 5.0 um (at rest, in operation)
    tau: float  # clean-up time constant (air changes): 100:1 recovery in ~4.6 tau
    cleanup: int  # OCC stays 1 this long after the operators leave
    window: tuple[int, int]  # working window, minutes of the UTC day
    weekdays_only: bool
    session: tuple[float, float]  # session length range
    pause: tuple[float, float]  # break between sessions
    idle_p: float  # probability that a working day has no operation at all
    spikes_per_h: float  # interventions while people are in the room
    trip: tuple[float, float]  # (0.5, 5.0) level an HVAC trip tends to, times U(1, 3)
    shed: tuple[float, float]  # 5.0 um added by a shedding operator, multiples of the 5.0 um action limit


def _limit(grade: str, state: str, size: int) -> float:
    return float(ANNEX1_PARTICLE_LIMITS[grade][state][size] or math.inf)


_AB, _CD = dict(window=(420, 1140), weekdays_only=True), dict(window=(360, 1320), weekdays_only=False)  # UTC
PROFILES: dict[str, GradeProfile] = {  # in operation ~1-20 % of the Annex 1 limits, at rest lower
    # A (unidirectional airflow): 5.0 um essentially zero, since a single count (35/m3) exceeds 29/m3
    "A": GradeProfile(p05=(10, 60), p50=(0.0035, 0.0106), tau=0.5, cleanup=5, **_AB, session=(60, 180),
                      pause=(20, 60), idle_p=0.1, spikes_per_h=2.0, trip=(_limit("B", "at_rest", 0), 30.0),
                      shed=(3.0, 6.0)),
    "B": GradeProfile(p05=(300, 10_000), p50=(0.0106, 60), tau=3.5, cleanup=20, **_AB, session=(120, 240),
                      pause=(30, 60), idle_p=0.1, spikes_per_h=3.0,
                      trip=(_limit("C", "at_rest", 0), _limit("C", "at_rest", 1)), shed=(1.5, 4.0)),
    "C": GradeProfile(p05=(5_000, 80_000), p50=(25, 500), tau=4.0, cleanup=20, **_CD, session=(150, 300),
                      pause=(20, 45), idle_p=0.05, spikes_per_h=3.0,
                      trip=(_limit("D", "at_rest", 0), _limit("D", "at_rest", 1)), shed=(0.3, 1.2)),
    "D": GradeProfile(p05=(50_000, 300_000), p50=(200, 2_000), tau=5.0, cleanup=20, **_CD, session=(180, 360),
                      pause=(15, 30), idle_p=0.02, spikes_per_h=4.0,
                      trip=(_limit("D", "at_rest", 0), _limit("D", "at_rest", 1)), shed=(0.3, 1.0)),
}
_SPIKE_MEDIAN, _SPIKE_SIGMA, _SPIKE_CAP = 1.5, 0.6, 8.0  # spike amplitude, multiples of the in-op level
_PARAMS = {  # Injection.params keys per kind (else drawn at random)
    "hvac_trip": {"target_factor", "rise_min"},
    "door_held_open": {"dp_fraction"},
    "hepa_leak": {"factor"},
    "personnel_shedding": {"level"},
}


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str
    start_dt: datetime
    end_dt: datetime
    start: float  # minutes since the epoch
    end: float
    p: dict[str, float]
    injected: bool
    detail: str


def _minutes(ts: datetime) -> float:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"timestamps must be timezone-aware UTC, got {ts!r}")
    return (ts - EPOCH) / timedelta(minutes=1)


def _interp(knots: np.ndarray, step: int) -> np.ndarray:
    """Rows of knots every step minutes (DAY // step + 1 per row) -> linear interpolation to every minute."""
    f = (_MIN % step) / step
    return np.repeat(knots[:, :-1], step, axis=1) * (1 - f) + np.repeat(knots[:, 1:], step, axis=1) * f


class CleanroomTwin:
    """Telemetry and ground-truth faults of every room of a site; deterministic per (seed, room, minute)."""

    def __init__(self, site: Site, seed: int, injections: Sequence[Injection] = (),
                 fault_rate_scale: float = 1.0) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if not (fault_rate_scale >= 0 and math.isfinite(fault_rate_scale)):
            raise ValueError(f"fault_rate_scale must be a finite number >= 0, got {fault_rate_scale}")
        self.site = site
        self.seed = int(seed)
        self.fault_rate_scale = float(fault_rate_scale)
        self.rooms = list(site.rooms.values())
        self.tags = [f"{r.id}.{s}" for r in self.rooms for s in ROOM_TAGS]
        self._index = {r.id: i for i, r in enumerate(self.rooms)}
        self._keys = [zlib.crc32(r.id.encode()) for r in self.rooms]
        self._prof = [PROFILES[r.grade] for r in self.rooms]
        self._const = [self._room_constants(i) for i in range(len(self.rooms))]
        max_h = max(f.max_h for f in ROOM_FAULTS.values())
        self._lookback = math.ceil((max_h * 60 + POST_MIN) / DAY)
        self._sched_cache: dict[tuple[int, int], tuple[tuple[int, int, int], ...]] = {}
        self._event_cache: dict[tuple[int, int], tuple[_Event, ...]] = {}
        self._day_cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._injected: list[list[_Event]] = [[] for _ in self.rooms]
        for inj in injections:
            if inj.kind in UNIT_FAULTS:
                continue  # for the bioreactor twin
            if inj.target not in self._index:
                raise ValueError(f"injection {inj.kind!r}: unknown room {inj.target!r}; rooms: "
                                 f"{', '.join(self._index)}")
            unknown = {k for k, _ in inj.params} - _PARAMS[inj.kind]
            if unknown:
                raise ValueError(f"injection {inj.kind!r}: unknown params {sorted(unknown)}; "
                                 f"known: {sorted(_PARAMS[inj.kind])}")
            i = self._index[inj.target]
            start = inj.start.astimezone(timezone.utc)
            rng = self._rng(_S_INJ, i, int(_minutes(start) * 60) & 0xFFFFFFFFFFFF, _KINDS.index(inj.kind))
            self._injected[i].append(self._event(i, inj.kind, start, start + timedelta(hours=inj.duration_h),
                                                 rng, dict(inj.params), True))

    # ------------------------------------------------------------------ public API
    def block(self, start: datetime, minutes: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Timestamps (datetime64[us] UTC minute grid from start, which must be on a whole minute) and
        float64 values per tag for all rooms; NaN = unavailable."""
        m = _minutes(start)
        if m != math.floor(m):
            raise ValueError(f"block start must be on a whole minute, got {start.isoformat()}")
        if minutes < 0:
            raise ValueError(f"minutes must be >= 0, got {minutes}")
        t0 = int(m)
        if t0 < 0:
            raise ValueError(f"block start must not be before 1970, got {start.isoformat()}")
        ts = (np.arange(t0, t0 + minutes, dtype=np.int64) * 60_000_000).astype("datetime64[us]")
        d0, d1 = t0 // DAY, (t0 + max(minutes, 1) - 1) // DAY
        off = t0 - d0 * DAY
        out: dict[str, np.ndarray] = {}
        for i, room in enumerate(self.rooms):
            days = self._room_days(i, d0, d1)
            for s in ROOM_TAGS:
                out[f"{room.id}.{s}"] = days[s].reshape(-1)[off:off + minutes].copy()
        return ts, out

    def faults(self, start: datetime, end: datetime) -> list[RoomFaultEvent]:
        """Ground-truth fault events overlapping [start, end)."""
        lo, hi = _minutes(start), _minutes(end)
        out = []
        for i, room in enumerate(self.rooms):
            for ev in self._events(i, lo, hi, post=0.0):
                out.append(RoomFaultEvent(ev.kind, room.id, ev.start_dt, ev.end_dt,
                                          ROOM_FAULTS[ev.kind].severity, ev.detail))
        return sorted(out, key=lambda e: (e.start, e.room, e.kind))

    def frame(self, start: datetime, minutes: int) -> pl.DataFrame:
        """The block as long-format samples in SAMPLE_SCHEMA (tag-major): NaN -> value null, quality BAD,
        status 'unavailable'; else GOOD."""
        ts, values = self.block(start, minutes)
        tags = list(values)
        df = pl.DataFrame({
            "ts": pl.Series(np.tile(ts, len(tags))).dt.replace_time_zone("UTC"),
            "tag": pl.Series(tags, dtype=pl.String).gather(np.repeat(np.arange(len(tags), dtype=np.uint32), len(ts))),
            "value": pl.Series(np.concatenate([values[t] for t in tags]) if tags else [], dtype=pl.Float64,
                               nan_to_null=True),
        })
        bad = pl.col("value").is_null()
        return df.with_columns(
            quality=pl.when(bad).then(pl.lit(Quality.BAD.value)).otherwise(pl.lit(Quality.GOOD.value))
            .cast(QUALITY_DTYPE),
            status=pl.when(bad).then(pl.lit("unavailable")).otherwise(pl.lit(None, pl.String)),
            server_ts=pl.lit(None, SAMPLE_SCHEMA["server_ts"]),
            received_ts=pl.lit(None, SAMPLE_SCHEMA["received_ts"]),
        ).select(list(SAMPLE_SCHEMA)).cast(SAMPLE_SCHEMA)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ randomness
    def _rng(self, stream: int, i: int, *keys: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, stream, self._keys[i], *keys]))

    def _room_constants(self, i: int) -> dict[str, np.ndarray | float]:
        rng = self._rng(_S_ROOM, i, 0)
        return {
            "dp_off": rng.uniform(-0.4, 0.4), "t_off": rng.uniform(-0.4, 0.4), "rh_off": rng.uniform(-3, 3),
            "t_amp": rng.uniform(0.1, 0.3), "day_phase": rng.uniform(-0.05, 0.05),
            # slow drifts: sums of sines with periods 1-10 days (T) and 4 h-10 days (RH)
            "t_per": np.exp(rng.uniform(math.log(DAY), math.log(10 * DAY), 3)),
            "t_ph": rng.uniform(0, 2 * math.pi, 3),
            "rh_per": np.exp(rng.uniform(math.log(240), math.log(10 * DAY), 4)),
            "rh_ph": rng.uniform(0, 2 * math.pi, 4),
        }

    def _schedule(self, i: int, d: int) -> tuple[tuple[int, int, int], ...]:
        """Sessions (start, operators leave, end of OCC) of a room-day, in minutes of the day."""
        key = (i, d)
        if key in self._sched_cache:
            return self._sched_cache[key]
        p = self._prof[i]
        u = iter(self._rng(_S_SCHED, i, d).random(64))
        out: list[tuple[int, int, int]] = []
        idle = next(u) < p.idle_p or (p.weekdays_only and (d + 3) % 7 >= 5)  # 1970-01-01 was a Thursday
        t, stop = p.window[0] + 45 * next(u), p.window[1] - 30 * next(u)
        while not idle and t + p.cleanup + 20 <= stop and len(out) < 20:
            e = min(t + p.session[0] + (p.session[1] - p.session[0]) * next(u), stop)
            a, b = round(t), round(e)
            out.append((a, b - p.cleanup, b))
            t = e + p.pause[0] + (p.pause[1] - p.pause[0]) * next(u)
        if len(self._sched_cache) > _CACHE_MAX:
            self._sched_cache.clear()
        self._sched_cache[key] = res = tuple(out)
        return res

    # ------------------------------------------------------------------ fault events
    def _event(self, i: int, kind: str, start: datetime, end: datetime, rng: np.random.Generator,
               over: dict[str, float], injected: bool) -> _Event:
        room, prof = self.rooms[i], self._prof[i]
        sp = room.dp_setpoint_pa
        if kind == "hvac_trip":
            f = over.get("target_factor", rng.uniform(1, 3))
            p = {"t05": prof.trip[0] * f, "t50": prof.trip[1] * f,
                 "tau_rise": over.get("rise_min", rng.uniform(10, 30)) / 3,
                 "tau_dn": rng.uniform(0.5, 2), "resid": rng.uniform(-1.5, 1.5), "tau_up": rng.uniform(1, 3),
                 "tau_rec": rng.uniform(15, 20) / 4.6, "dT": rng.uniform(0.5, 2.0), "dRH": rng.uniform(2, 8)}
            detail = f"DP {sp:g} -> ~0 Pa, PSTAT 7; 0.5 um toward {p['t05']:.3g}/m3, 5.0 um toward {p['t50']:.3g}/m3"
        elif kind == "door_held_open":
            p = {"frac": over.get("dp_fraction", rng.uniform(0.1, 0.55))}
            detail = f"DP dips to {p['frac'] * sp:.1f} Pa (setpoint {sp:g}), PSTAT 2"
        elif kind == "hepa_leak":
            p = {"k": over.get("factor", rng.uniform(3, 10))}
            p["k50"] = 1 + (p["k"] - 1) * 0.1
            detail = f"0.5 um x{p['k']:.1f}, 5.0 um x{p['k50']:.2f}"
        else:  # personnel_shedding
            state = "in_operation" if ANNEX1_PARTICLE_LIMITS[room.grade]["in_operation"][1] else "at_rest"
            lvl = over.get("level", rng.uniform(*prof.shed)) * _limit(room.grade, state, 1)
            p = {"l50": lvl, "l05": lvl * rng.uniform(3, 8)}
            detail = f"5.0 um +{lvl:.3g}/m3, 0.5 um +{p['l05']:.3g}/m3 while in operation"
        return _Event(kind, start, end, _minutes(start), _minutes(end), p, injected,
                      ("injected; " if injected else "") + detail)

    def _day_events(self, i: int, d: int) -> tuple[_Event, ...]:
        """Random events that start on UTC day d (their effects may spill into later days)."""
        key = (i, d)
        if key in self._event_cache:
            return self._event_cache[key]
        rng = self._rng(_S_FAULTS, i, d)
        counts = rng.poisson([ROOM_FAULTS[k].rate * self.fault_rate_scale for k in _KINDS])
        events = []
        for kind, n in zip(_KINDS, counts):
            fk = ROOM_FAULTS[kind]
            for _ in range(n):
                dur_s = rng.uniform(fk.min_h, fk.max_h) * 3600
                start_s, end_s = d * 86400 + int(rng.integers(0, 86400)), None
                if kind == "personnel_shedding":  # starts >= min_h before the operators leave
                    windows = [(a, b) for a, b, _ in self._schedule(i, d) if b - a > fk.min_h * 60]
                    lens = np.array([b - a - math.ceil(fk.min_h * 60) for a, b in windows], dtype=np.int64)
                    if not windows:
                        continue
                    u = int(rng.integers(0, lens.sum()))
                    w = int(np.searchsorted(np.cumsum(lens), u, side="right"))
                    a, b = windows[w]
                    start_s = d * 86400 + (a + u - int(lens[:w].sum())) * 60 + int(rng.integers(0, 60))
                    end_s = min(start_s + round(dur_s), d * 86400 + b * 60)
                end_s = end_s if end_s is not None else start_s + round(dur_s)
                events.append(self._event(i, kind, EPOCH + timedelta(seconds=start_s),
                                          EPOCH + timedelta(seconds=end_s), rng, {}, False))
        if len(self._event_cache) > _CACHE_MAX:
            self._event_cache.clear()
        self._event_cache[key] = out = tuple(events)
        return out

    def _events(self, i: int, lo: float, hi: float, post: float = POST_MIN) -> list[_Event]:
        """Random and injected events of room i whose [start, end + post) overlaps [lo, hi)."""
        d0, d1 = math.floor(lo / DAY) - self._lookback, math.floor(hi / DAY)
        cand = [e for d in range(max(d0, 0), d1 + 1) for e in self._day_events(i, d)] + self._injected[i]
        hits = [e for e in cand if e.start < hi and e.end + post > lo]
        return sorted(hits, key=lambda e: (_ORDER[e.kind], e.start, e.end))

    # ------------------------------------------------------------------ telemetry
    def _room_days(self, i: int, d0: int, d1: int) -> dict[str, np.ndarray]:
        """All tags of room i for UTC days d0..d1 as (days, 1440) arrays; row k depends only on day d0 + k."""
        if d0 == d1 and (i, d0) in self._day_cache:
            return self._day_cache[(i, d0)]
        room, p, c = self.rooms[i], self._prof[i], self._const[i]
        days = np.arange(d0, d1 + 1)
        nd, n = len(days), len(days) * DAY
        # schedule -> OCC, operators present, and the first-order response of the air to them
        rise, fall = np.full((nd, DAY), -1), np.full((nd, DAY), -1)
        wfac = np.zeros((nd, DAY))  # at the minute the operators leave: 1 - exp(-window / tau)
        occ_mark = np.zeros(n + 1, np.int64)
        for k, d in enumerate(days):
            for a, bp, bo in self._schedule(i, int(d)):
                rise[k, a], fall[k, bp], wfac[k, bp] = a, bp, 1 - math.exp(-(bp - a) / p.tau)
                occ_mark[k * DAY + a] += 1
                occ_mark[k * DAY + bo] -= 1
        occ = (np.cumsum(occ_mark[:n]) > 0).reshape(nd, DAY).astype(np.float64)
        la, lb = np.maximum.accumulate(rise, axis=1), np.maximum.accumulate(fall, axis=1)
        people = la > lb
        decay = np.exp(-(_MIN + 1 - np.where(people, la, lb)) / p.tau)
        act = np.where(people, 1 - decay, decay * np.take_along_axis(wfac, np.maximum(lb, 0), axis=1))
        # per-day random draws: white noise, slow-noise knots, interventions, T/RH dropouts
        nz = 4 * DAY + 49 + 145
        z = np.empty((nd, nz))
        drop = np.zeros((nd, DAY), bool)
        spikes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        gens = []
        rate = p.spikes_per_h / 60
        for k, d in enumerate(days):
            rng = self._rng(_S_NOISE, i, int(d))
            gens.append(rng)
            z[k] = rng.standard_normal(nz)
            pos = np.flatnonzero((rng.random(DAY) < rate) & people[k])
            spikes.append((pos + k * DAY, rng.integers(1, 4, len(pos)),
                           np.minimum(rng.lognormal(math.log(_SPIKE_MEDIAN), _SPIKE_SIGMA, len(pos)), _SPIKE_CAP)))
            nr = int(rng.poisson(TRH_DROPOUTS_PER_DAY))
            for s, ln in zip(rng.integers(0, DAY, nr), rng.integers(1, 4, nr)):
                drop[k, s:s + ln] = True
        q = math.exp(-1 / p.tau)
        kern = (1 - q) * q ** np.arange(math.ceil(8 * p.tau) + 1)
        pos, plateau, amp = (np.concatenate(x) for x in zip(*spikes))
        idx_l, w_l = [], []
        for lag in range(3):  # a spike is a 1-3 minute source decaying with the clean-up tau
            m = plateau > lag
            loc = (pos[m] % DAY + lag)[:, None] + np.arange(len(kern))[None, :]
            ok = loc < DAY
            idx_l.append((loc + (pos[m] - pos[m] % DAY)[:, None])[ok])
            w_l.append((amp[m, None] * kern[None, :])[ok])
        spk = np.bincount(np.concatenate(idx_l), np.concatenate(w_l), minlength=n).reshape(nd, DAY)
        white = z[:, :4 * DAY].reshape(nd, 4, DAY)
        s_d, s_t = 0.15, 0.2
        dust = np.exp(s_d * _interp(z[:, 4 * DAY:4 * DAY + 49], 30) + s_t * white[:, 0] - 0.5 * (s_d ** 2 + s_t ** 2))
        lam05 = (p.p05[0] + (p.p05[1] - p.p05[0]) * act + p.p05[1] * spk) * dust * SAMPLE_M3
        lam50 = (p.p50[0] + (p.p50[1] - p.p50[0]) * act + p.p50[1] * spk) * dust * SAMPLE_M3
        sp = room.dp_setpoint_pa
        dp_level = np.full((nd, DAY), sp + c["dp_off"])
        dp_noise = 0.3 * _interp(z[:, 4 * DAY + 49:], 10) + 0.2 * white[:, 1]
        daily = np.sin(2 * np.pi * (_MIN / DAY - 0.375 + c["day_phase"]))  # warmest ~15:00 UTC
        tk = (days[:, None] * DAY + np.arange(0, DAY + 1, 10)[None, :]).astype(np.float64)
        slow_t = _interp(sum(np.sin(2 * np.pi * tk / per + ph) for per, ph in zip(c["t_per"], c["t_ph"])), 10)
        slow_rh = _interp(sum(np.sin(2 * np.pi * tk / per + ph) for per, ph in zip(c["rh_per"], c["rh_ph"])), 10)
        temp = 20 + c["t_off"] + c["t_amp"] * daily + 0.15 * math.sqrt(2 / 3) * slow_t + 0.2 * act + 0.03 * white[:, 2]
        rh = 45 + c["rh_off"] + 2.5 * math.sqrt(2 / 4) * slow_rh - 1.0 * daily + 0.25 * white[:, 3]
        # faults, then the particle counts: baseline from the day stream, fault excess from its own
        ex05, ex50 = np.zeros((nd, DAY)), np.zeros((nd, DAY))
        trip = np.zeros((nd, DAY), bool)
        t = (days[:, None] * DAY + _MIN[None, :]).astype(np.float64)
        arrays = [np.ascontiguousarray(x) for x in (t, lam05, lam50, ex05, ex50, dp_level, temp, rh, occ, trip)]
        t, lam05, lam50, ex05, ex50, dp_level, temp, rh, occ, trip = arrays
        self._apply(i, d0 * DAY, *(x.reshape(-1) for x in arrays))  # flat views, modified in place
        c05, c50 = np.empty((nd, DAY)), np.empty((nd, DAY))
        extra = (ex05 > 0).any(axis=1) | (ex50 > 0).any(axis=1)
        for k, d in enumerate(days):
            c50[k] = gens[k].poisson(lam50[k])
            c05[k] = gens[k].poisson(lam05[k])
            if extra[k]:
                rx = self._rng(_S_EXCESS, i, int(d))
                c50[k] += rx.poisson(ex50[k])
                c05[k] += rx.poisson(ex05[k])
        dp = np.round(dp_level + dp_noise, 1)
        low = sp - max(5.0, 0.15 * sp)  # the monitor's low-pressure alarm point
        out = {
            "P05": (c05 + c50) / SAMPLE_M3,  # cumulative channel: >= 0.5 um includes >= 5.0 um
            "P50": c50 / SAMPLE_M3,
            "DP": dp,
            "PSTAT": np.where(trip, PSTAT_LOW_SUPPLY, np.where(dp < low, PSTAT_ROOM_LOW, PSTAT_NORMAL)),
            "TEMP": np.where(drop, np.nan, np.round(temp, 2)),
            "RH": np.where(drop, np.nan, np.round(np.clip(rh, 5, 95), 1)),
            "OCC": occ,
        }
        if d0 == d1:
            if len(self._day_cache) >= 4 * len(self.rooms):
                self._day_cache.pop(next(iter(self._day_cache)))
            self._day_cache[(i, d0)] = out
        return out

    def _apply(self, i: int, base: int, t: np.ndarray, lam05: np.ndarray, lam50: np.ndarray, ex05: np.ndarray,
               ex50: np.ndarray, dp: np.ndarray, temp: np.ndarray, rh: np.ndarray, occ: np.ndarray,
               trip: np.ndarray) -> None:
        """Add the effects of the events overlapping these minutes (flat views, modified in place)."""
        tau = self._prof[i].tau
        for ev in self._events(i, base, base + len(t)):
            s, e, p = ev.start, ev.end, ev.p
            lo = max(math.ceil(s), base) - base
            hi = min(math.ceil(e + (0 if ev.kind == "door_held_open" else POST_MIN)), base + len(t)) - base
            if hi <= lo:
                continue
            sl = slice(lo, hi)
            tt = t[sl]
            on = tt < e
            if ev.kind == "door_held_open":
                dp[sl] *= p["frac"]
            elif ev.kind == "hepa_leak":
                after = np.exp(-np.maximum(tt - e, 0) / tau)  # repaired: cleaned up with the air changes
                r = np.where(on, 1 - np.exp(-(tt - s) / 30), (1 - math.exp(-(e - s) / 30)) * after)
                ex05[sl] += (p["k"] - 1) * lam05[sl] * r
                ex50[sl] += (p["k50"] - 1) * lam50[sl] * r
            elif ev.kind == "personnel_shedding":
                after = np.exp(-np.maximum(tt - e, 0) / tau)
                r = np.where(on, 1 - np.exp(-(tt - s + 1)), (1 - math.exp(-(e - s + 1))) * after)
                ex05[sl] += p["l05"] * SAMPLE_M3 * r
                ex50[sl] += p["l50"] * SAMPLE_M3 * r
                if ev.injected:  # an operator is in the room: it is in operation
                    occ[sl][on] = 1.0
            else:  # hvac_trip
                g_end = math.exp(-(e - s) / p["tau_dn"])
                up = 1 - (1 - g_end) * np.exp(-np.maximum(tt - e, 0) / p["tau_up"])  # fans restart
                g = np.where(on, np.exp(-(tt - s) / p["tau_dn"]), up)
                dp[sl] = dp[sl] * g + p["resid"] * (1 - g)
                w_end = 1 - math.exp(-max(e - s - 1, 0) / p["tau_rise"])
                w = np.where(on, 1 - np.exp(-np.maximum(tt - s - 1, 0) / p["tau_rise"]),
                             w_end * np.exp(-np.maximum(tt - e, 0) / p["tau_rec"]))
                ex05[sl] += np.maximum(p["t05"] * SAMPLE_M3 - lam05[sl] - ex05[sl], 0) * w
                ex50[sl] += np.maximum(p["t50"] * SAMPLE_M3 - lam50[sl] - ex50[sl], 0) * w
                h_end = 1 - math.exp(-(e - s) / 60)
                h = np.where(on, 1 - np.exp(-(tt - s) / 60), h_end * np.exp(-np.maximum(tt - e, 0) / 30))
                temp[sl] += p["dT"] * h
                rh[sl] += p["dRH"] * h
                trip[sl] |= on
