"""Setpoint recommender: for a running batch at t, the few setpoint changes (inside PAR and max step) that most
raise the lower quantile of predicted harvest yield, penalised by any rise in predicted deviation risk.

Decision code only: `recommend(state)` returns an `Advice` (frozen `plant.recommendations.Recommendation`
records) or a typed `NoAdvice` saying which guard stopped it. Storing, the signed decision and applying a
change are separate, audited steps (plant.recommendations, plant.gmp_records). Learns only from plant data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

import numpy as np
import polars as pl

from models.deviation import DeviationModel
from models.domain import DomainModel
from models.encoding import fingerprint
from models.recommend_state import BatchState
from models.setpoint_model import SetpointYieldModel, plan_column
from plant.recommendations import Recommendation
from plant.site import Site, Tag

_PV_LEVELS = ("mean_1h", "mean_6h", "last", "min_6h", "max_6h")  # follow a new setpoint once the loop settles
_EPS = 1e-9


class NoAdviceReason(StrEnum):
    OUTSIDE_WINDOW = "outside_window"  # too early in the batch, or too close to harvest
    STALE_INPUT = "stale_input"  # an online tag or the cell count is older than allowed
    GAPPED_INPUT = "gapped_input"  # too much of the recent telemetry is missing
    OUT_OF_DOMAIN = "out_of_domain"  # the batch lies outside the data the models learnt from
    TOO_RECENT = "too_recent"  # every setpoint changed or was recommended within its minimum interval
    NO_GAIN = "no_gain"  # no allowed change is expected to help with enough confidence
    NO_SETPOINTS = "no_setpoints"  # the unit has no controllable setpoint with a known value


@dataclass(frozen=True, slots=True)
class RecommenderConfig:
    """Guards and objective; defaults suit the demo site's 10-12 day expansions."""

    first_h: float = 24.0  # no advice during activation: the state says little yet
    stop_before_harvest_h: float = 24.0  # nor in the last day: little effect left
    steps: tuple[float, ...] = (0.5, 1.0)  # candidate changes as fractions of max_step, both directions
    max_recommendations: int = 3
    lower_quantile: float = 0.2  # objective: this quantile of the ensemble's gain (risk-averse)
    interval: float = 0.8  # reported interval of the gain
    min_gain: float = 0.01  # median relative yield gain below this is not worth a change
    min_gain_low: float = 0.0  # the lower quantile must not promise a loss
    risk_weight: float = 1.0  # relative yield lost per unit of added deviation probability
    max_risk_increase: float = 0.02
    stale_min: float = 30.0  # newest usable value of an expected online tag
    offline_stale_h: float = 36.0  # newest cell count
    min_coverage: float = 0.75  # share of the last 6 h of buckets with data, per expected online tag
    interval_slack_min: float = 1.0  # clock jitter tolerated on the minimum interval
    n_drivers: int = 5


@dataclass(frozen=True, slots=True)
class Advice:
    """What the recommender would change now; `held` names setpoints waiting for their minimum interval."""

    batch_id: str
    unit: str
    t: datetime
    recommendations: tuple[Recommendation, ...]
    held: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NoAdvice:
    """No advice, the guard that stopped it and every problem found."""

    batch_id: str
    unit: str
    t: datetime
    reason: NoAdviceReason
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecommenderModels:
    """The fitted models a recommender decides with, and one version string for all of them."""

    setpoint: SetpointYieldModel
    domain: DomainModel
    deviation: DeviationModel | None
    version: str


@dataclass(frozen=True)
class _Candidate:
    tag: Tag
    value: float
    plan: dict[str, float] = field(default_factory=dict)


def step_bounds(tag: Tag, current: float) -> tuple[float, float]:
    """Values one change may reach: inside the PAR and within max_step of the current value."""
    assert tag.par is not None and tag.max_step is not None
    return max(tag.par[0], current - tag.max_step), min(tag.par[1], current + tag.max_step)


def within_limits(tag: Tag, current: float, proposed: float) -> bool:
    """The guard every recommendation passes: inside the PAR and no bigger than max_step."""
    if tag.par is None or tag.max_step is None:
        return False
    return tag.par[0] - _EPS <= proposed <= tag.par[1] + _EPS and abs(proposed - current) <= tag.max_step + _EPS


class Recommender:
    """Constrained, risk-averse setpoint search over a unit's controllable tags (see module docstring)."""

    def __init__(self, site: Site, models: RecommenderModels, config: RecommenderConfig | None = None) -> None:
        self.site = site
        self.models = models
        self.config = config or RecommenderConfig()

    # ---- guards ----------------------------------------------------------------------------

    def _input_problems(self, state: BatchState) -> list[tuple[NoAdviceReason, str]]:
        cfg, row = self.config, state.row.row(0, named=True)
        out: list[tuple[NoAdviceReason, str]] = []
        if state.t_h < cfg.first_h or state.t_h > state.planned_h - cfg.stop_before_harvest_h:
            out.append((NoAdviceReason.OUTSIDE_WINDOW, f"culture hour {state.t_h:.1f} is outside the advisory "
                        f"window [{cfg.first_h:g}, {state.planned_h - cfg.stop_before_harvest_h:g}] h"))
        expected = self.models.domain.expected_tags_.get(state.unit_kind, [])
        for tag in expected:
            age = row.get(f"{tag}_age_min")
            if age is None or age > cfg.stale_min:
                seen = "no usable value yet" if age is None else f"last usable value {age:.0f} min old"
                out.append((NoAdviceReason.STALE_INPUT, f"stale input: {tag} {seen} (limit {cfg.stale_min:g} min)"))
            cov = state.coverage.get(tag, 0.0)
            if cov < cfg.min_coverage:
                out.append((NoAdviceReason.GAPPED_INPUT, f"gapped input: {tag} has data in {cov:.0%} of the last "
                            f"6 h (needs {cfg.min_coverage:.0%})"))
        vcd_age = row.get("off_VCD_age_h")
        if vcd_age is None or vcd_age > cfg.offline_stale_h:
            seen = "no cell count yet" if vcd_age is None else f"last cell count {vcd_age:.0f} h old"
            out.append((NoAdviceReason.STALE_INPUT, f"stale input: {seen} (limit {cfg.offline_stale_h:g} h)"))
        verdict = self.models.domain.check(state.row)[0]
        if not verdict.in_domain:
            out += [(NoAdviceReason.OUT_OF_DOMAIN, r) for r in verdict.reasons if not r.startswith("stale")]
        return out

    def _free_tags(self, state: BatchState) -> tuple[list[Tag], list[str]]:
        """Controllable tags past their minimum interval, and a note for each one held back."""
        free, held = [], []
        for tag in self.site.controllable(state.unit):
            last = state.last_change.get(tag.short)
            wait = timedelta(hours=tag.min_interval_h) - timedelta(minutes=self.config.interval_slack_min)
            if last is not None and state.t - last < wait:
                held.append(f"{tag.short} changed or advised at {last:%Y-%m-%d %H:%M} UTC; minimum interval "
                            f"{tag.min_interval_h:g} h ends {last + timedelta(hours=tag.min_interval_h):%Y-%m-%d %H:%M}")
            else:
                free.append(tag)
        return free, held

    # ---- search ----------------------------------------------------------------------------

    def _candidates(self, state: BatchState, tags: list[Tag], current: dict[str, float]) -> list[_Candidate]:
        ranges = self.models.domain.ranges_
        out = []
        for tag in tags:
            cur = current[tag.short]
            lo, hi = step_bounds(tag, cur)
            seen_lo, seen_hi = ranges.get(f"sp_{tag.short}", (-np.inf, np.inf))
            values = {round(float(np.clip(cur + s * f * tag.max_step, lo, hi)), 6)  # type: ignore[operator]
                      for f in self.config.steps for s in (-1.0, 1.0)}
            for v in sorted(values):
                if abs(v - cur) > _EPS and within_limits(tag, cur, v) and seen_lo - _EPS <= v <= seen_hi + _EPS:
                    out.append(_Candidate(tag, v, {**current, tag.short: v}))
        return out

    def _frame(self, state: BatchState, plans: list[dict[str, float]]) -> pl.DataFrame:
        base = state.row
        frames = [base.with_columns([pl.lit(v, dtype=pl.Float64).alias(plan_column(k)) for k, v in p.items()])
                  for p in plans]
        return pl.concat(frames, how="vertical_relaxed")

    def _risk(self, state: BatchState, plans: list[dict[str, float]], current: dict[str, float]) -> np.ndarray:
        """Calibrated deviation risk per plan; the controlled process values are taken as settled at the new setpoint."""
        dev = self.models.deviation
        if dev is None:
            return np.zeros(len(plans))
        rows = []
        for p in plans:
            exprs = []
            for short, v in p.items():
                delta = v - current[short]
                if abs(delta) < _EPS:
                    continue
                exprs += [pl.lit(v, dtype=pl.Float64).alias(f"sp_{short}"),
                          (pl.col(f"sp_{short}_avg") + delta).alias(f"sp_{short}_avg")]
                pv = self.site.tags[f"{state.unit}.{short}"].controls
                if pv:
                    pv = pv.split(".", 1)[1]
                    exprs += [(pl.col(f"{pv}_{s}") + delta).alias(f"{pv}_{s}") for s in _PV_LEVELS
                              if f"{pv}_{s}" in state.row.columns]
            rows.append(state.row.with_columns(exprs) if exprs else state.row)
        return dev.predict_proba(pl.concat(rows, how="vertical_relaxed"))

    def recommend(self, state: BatchState) -> Advice | NoAdvice:
        """Advice for one batch now, or NoAdvice with the guard that stopped it."""
        cfg = self.config

        def none(reason: NoAdviceReason, details: list[str]) -> NoAdvice:
            return NoAdvice(state.batch_id, state.unit, state.t, reason, tuple(details))

        problems = self._input_problems(state)
        if problems:
            order = list(NoAdviceReason)
            first = min(problems, key=lambda p: order.index(p[0]))[0]
            return none(first, [d for _, d in problems])
        controllable = self.site.controllable(state.unit)
        current = {t.short: state.setpoints.get(t.short) for t in controllable}
        unknown = [k for k, v in current.items() if v is None]
        if not controllable or unknown:
            return none(NoAdviceReason.NO_SETPOINTS, [f"no record of the setpoint {k} in force" for k in unknown]
                        or [f"{state.unit} has no controllable setpoint"])
        cur: dict[str, float] = {k: float(v) for k, v in current.items() if v is not None}
        free, held = self._free_tags(state)
        if not free:
            return none(NoAdviceReason.TOO_RECENT, held)
        cands = self._candidates(state, free, cur)
        if not cands:
            return none(NoAdviceReason.NO_GAIN, ["no allowed change inside the PAR, the step and the training range"])
        plans = [cur] + [c.plan for c in cands]
        members = self.models.setpoint.member_predictions(self._frame(state, plans))
        rel = 10.0 ** (members - members[0]) - 1.0  # relative gain per plan and member
        risk = self._risk(state, plans, cur)
        d_risk = risk - risk[0]
        score = np.quantile(rel, cfg.lower_quantile, axis=1) - cfg.risk_weight * np.maximum(d_risk, 0.0)
        best: dict[str, int] = {}
        for i, c in enumerate(cands, start=1):
            ok = (np.median(rel[i]) >= cfg.min_gain and np.quantile(rel[i], cfg.lower_quantile) >= cfg.min_gain_low
                  and d_risk[i] <= cfg.max_risk_increase)
            if ok and (c.tag.short not in best or score[i] > score[best[c.tag.short]]):
                best[c.tag.short] = i
        if not best:
            top = int(np.argmax(score[1:])) + 1
            c = cands[top - 1]
            return none(NoAdviceReason.NO_GAIN, [f"best change {c.tag.short} {cur[c.tag.short]:g} -> {c.value:g}: "
                                                 f"median gain {np.median(rel[top]):+.1%}, lower quantile "
                                                 f"{np.quantile(rel[top], cfg.lower_quantile):+.1%}"])
        chosen = self._select(state, cands, best, score, cur)
        recs = tuple(self._record(state, cands[i - 1], plans[0], plans[i], rel[i], d_risk[i]) for i in chosen)
        return Advice(state.batch_id, state.unit, state.t, recs, tuple(held))

    def _select(self, state: BatchState, cands: list[_Candidate], best: dict[str, int], score: np.ndarray,
                cur: dict[str, float]) -> list[int]:
        """Greedy forward selection: add the next-best tag only while the joint change scores higher."""
        ranked = sorted(best.values(), key=lambda i: -score[i])
        chosen = [ranked[0]]
        joint_score = score[ranked[0]]
        for i in ranked[1:self.config.max_recommendations + 2]:
            if len(chosen) >= self.config.max_recommendations:
                break
            plan = {**cur, **{cands[j - 1].tag.short: cands[j - 1].value for j in [*chosen, i]}}
            m = self.models.setpoint.member_predictions(self._frame(state, [cur, plan]))
            rel = 10.0 ** (m[1] - m[0]) - 1.0
            r = self._risk(state, [cur, plan], cur)
            s = np.quantile(rel, self.config.lower_quantile) - self.config.risk_weight * max(r[1] - r[0], 0.0)
            if s > joint_score + _EPS:
                chosen.append(i)
                joint_score = s
        return chosen

    def _record(self, state: BatchState, c: _Candidate, cur: dict[str, float], plan: dict[str, float],
                rel: np.ndarray, d_risk: float) -> Recommendation:
        if not within_limits(c.tag, cur[c.tag.short], c.value):  # never, by construction: the last line of defence
            raise AssertionError(f"{c.tag.name} {cur[c.tag.short]} -> {c.value} breaks the PAR or the maximum step")
        a = (1.0 - self.config.interval) / 2
        lo, mid, hi = (float(x) for x in np.quantile(rel, [a, 0.5, 1 - a]))
        contrib = self.models.setpoint.member_contributions(self._frame(state, [cur, plan]))
        delta = contrib[1, :-1] - contrib[0, :-1]
        names = self.models.setpoint.feature_names
        top = np.argsort(-np.abs(delta))[: self.config.n_drivers]
        drivers = tuple((names[j], round(float(delta[j]), 5)) for j in top if abs(delta[j]) > 0)
        digest = hashlib.sha256(f"{fingerprint(state.row)}|{self.models.version}".encode()).hexdigest()
        return Recommendation(
            batch_id=state.batch_id, unit=state.unit, tag=c.tag.short, current=cur[c.tag.short], proposed=c.value,
            gain=round(mid, 6), gain_low=round(min(lo, mid), 6), gain_high=round(max(hi, mid), 6),
            risk_change=round(float(d_risk), 6), drivers=drivers, model_version=self.models.version,
            input_hash=digest, created_ts=state.t)
