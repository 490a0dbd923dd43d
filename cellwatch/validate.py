"""Closed-loop validation of the setpoint recommender on the twin, with paired batches and common random numbers.

Each pair is one `plan_batch(...)` run twice in one bank (same donor, disturbances and sensor noise; a bank
is elementwise, so the arms only differ by their setpoints). The recipe arm keeps the recipe. The advised arm
writes telemetry and records as a plant would; every `cadence_h` the recommender reads them back and its
advice goes the way an approval goes: RecommendationStore.add -> signed acceptance by a validation user ->
setpoint applied to the running batch and recorded. This module plays the plant, so it may import plant.sim.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
from argon2 import PasswordHasher

from cellwatch.validate_report import ArmResult, PairResult, ValidationReport, summarise
from models.recommend import Advice, Recommender, RecommenderConfig, RecommenderModels, within_limits
from models.recommend_state import load_states
from plant.audit import AuditTrail
from plant.historian import Historian
from plant.identity import LocalPasswords
from plant.recommendations import RecommendationStore
from plant.records import BatchRecord, DonorCovariate, OfflineResult, Records, SetpointChange
from plant.samples import QUALITY_DTYPE, SAMPLE_SCHEMA, TS_DTYPE
from plant.sim.bank import MEAS_TAGS, PHYS_MIN, Bank
from plant.sim.history import schedule
from plant.sim.plan import LOW_CAR, POOR_DONOR, BatchPlan, SetpointEvent
from plant.sim.release import release_results
from plant.site import Site
from plant.users import Users

VALIDATOR = "validator"
EXCURSION_MIN = 5  # minutes beyond an action limit that make one excursion
IPC_MIN = 5 * 1440 + 60  # day-5 CAR % in-process control, as the history generator stamps it
METHOD = {"VCD": "cell counter", "VIAB": "cell counter"}


def recipe_plan(site: Site, plan: BatchPlan) -> BatchPlan:
    """The plan with only its recipe's setpoints (no DoE values, no operator changes): the recipe arm."""
    recipe = site.recipes[plan.recipe]
    events = tuple(SetpointEvent(0.0, tag, float(v), "recipe") for tag, v in sorted(recipe.setpoints.items()))
    return replace(plan, setpoints=events, batch_kind="production")


class _Excursions:
    """Episodes of >= EXCURSION_MIN minutes beyond a measured tag's action limits, per reactor."""

    def __init__(self, site: Site, plans: list[BatchPlan]) -> None:
        shape = (len(plans), len(MEAS_TAGS))
        self.lo, self.hi = np.full(shape, -np.inf), np.full(shape, np.inf)
        for i, p in enumerate(plans):
            for j, tag in enumerate(MEAS_TAGS):
                t = site.tags.get(f"{p.unit}.{tag}")
                if t is not None:
                    self.lo[i, j] = -np.inf if t.action_low is None else t.action_low
                    self.hi[i, j] = np.inf if t.action_high is None else t.action_high
        self.run = np.zeros(shape, dtype=np.int32)
        self.count = np.zeros(len(plans), dtype=np.int64)

    def update(self, meas: np.ndarray, running: np.ndarray) -> None:
        for m in meas:  # one minute: (reactors, tags); NaN (a failed probe) is no excursion
            out = ((m < self.lo) | (m > self.hi)) & running[:, None]
            self.run = np.where(out, self.run + 1, 0)
            self.count += (self.run == EXCURSION_MIN).sum(axis=1)


class _AdvisedPlant:
    """The advised arm as a plant: historian, records, recommendation store and a validation user."""

    def __init__(self, site: Site, plans: list[BatchPlan], out: Path) -> None:
        self.site, self.plans = site, plans
        self.hist = Historian(out / "historian")
        self.records = Records.open(out / "records.db")
        self.store = RecommendationStore(self.records)
        # A throw-away validation database: light password hashing keeps hundreds of signatures cheap.
        fast = LocalPasswords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
        self.users = Users(self.records, AuditTrail(self.records), identity=fast)
        self.password = secrets.token_urlsafe(18)
        self.users.init_admin("admin", "Validation Admin", secrets.token_urlsafe(18))
        self.users.create("admin", VALIDATOR, "Closed-loop Validation", "engineer", self.password)
        self.unit_tags = {u: {t.short for t in site.unit_tags(u)} for u in site.units}
        self.records.add_batches([BatchRecord(p.batch_id, p.unit, site.info.code, p.recipe, p.batch_kind, p.start,
                                              p.start + timedelta(hours=p.harvest_h)) for p in plans])
        self.records.add_covariates([DonorCovariate(p.batch_id, n, v, t) for p in plans for n, v, t in p.covariates])
        self.records.add_setpoints([SetpointChange(p.batch_id, e.tag, p.start + timedelta(hours=e.t_h), e.value,
                                                   e.source) for p in plans for e in p.setpoints])
        self.blocks: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.n_steps = np.array([p.n_steps for p in plans])
        self.start_us = np.array([int(p.start.timestamp() * 1_000_000) for p in plans], dtype=np.int64)
        self.has_tag = np.array([[t in self.unit_tags[p.unit] for t in MEAS_TAGS] for p in plans])
        self.tag_names = np.array([[f"{p.unit}.{t}" for t in MEAS_TAGS] for p in plans], dtype=object)
        self.sp_seen = 0
        self.offline_seen = 0
        self.ipc_done = False

    def _telemetry(self, m0: int, meas: np.ndarray, bad: np.ndarray) -> pl.DataFrame:
        """Long samples of one block (minutes, batches, tags) of the advised arm, as the historian stores them."""
        minute = m0 + 1 + np.arange(meas.shape[0])  # a reading of minute m is stamped at the end of it
        live = (minute[:, None] <= self.n_steps[None, :])[:, :, None] & self.has_tag[None, :, :]
        k, b, j = np.nonzero(live)
        ts = self.start_us[b] + minute[k] * 60_000_000
        return pl.DataFrame({"ts": pl.Series(ts).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
                             "tag": pl.Series(self.tag_names[b, j], dtype=pl.String),
                             "value": pl.Series(meas[k, b, j].astype(float)).fill_nan(None),
                             "bad": pl.Series(bad[k, b, j])})

    def flush(self, bank: Bank, offset: int) -> None:
        """Write the advised arm's telemetry, setpoint samples and offline results since the last flush."""
        frames = []
        if self.blocks:  # consecutive blocks since the last flush: one array, one frame
            frames.append(self._telemetry(self.blocks[0][0], np.concatenate([b[1] for b in self.blocks]),
                                          np.concatenate([b[2] for b in self.blocks])))
        self.blocks = []
        sp = [(m, b - offset, tag, v) for m, b, tag, v in bank.sp_log[self.sp_seen:]
              if b >= offset and m <= self.plans[b - offset].n_steps]
        self.sp_seen = len(bank.sp_log)
        if sp:
            frames.append(pl.DataFrame({
                "ts": [self.plans[i].start + timedelta(minutes=m) for m, i, _, _ in sp],
                "tag": [f"{self.plans[i].unit}.{tag}" for _, i, tag, _ in sp],
                "value": [float(v) for *_, v in sp], "bad": [False] * len(sp)},
                schema={"ts": TS_DTYPE, "tag": pl.String, "value": pl.Float64, "bad": pl.Boolean}))
        frames = [f for f in frames if f.height]
        if frames:
            f = pl.concat(frames)
            self.hist.append(f.select(
                "ts", "tag", "value", quality=pl.when("bad").then(pl.lit("BAD")).otherwise(pl.lit("GOOD"))
                .cast(QUALITY_DTYPE), status=pl.when("bad").then(pl.lit("BadSensorFailure")),
                server_ts=pl.lit(None, TS_DTYPE), received_ts=pl.lit(None, TS_DTYPE)).select(list(SAMPLE_SCHEMA)))
        new = [s for s in bank.offline[self.offline_seen:] if s.batch_index >= offset]
        self.offline_seen = len(bank.offline)
        results = [OfflineResult(self.plans[s.batch_index - offset].batch_id,
                                 self.plans[s.batch_index - offset].start + timedelta(minutes=s.minute), s.analyte,
                                 s.value, s.unit, METHOD.get(s.analyte, "offline analyser")) for s in new]
        if not self.ipc_done and bank.minute > IPC_MIN:  # day-5 CAR %, drawn as the history generator draws it
            self.ipc_done = True
            for p in self.plans:
                car = float(np.clip(p.car_frac * (1 + 0.08 * p.rng(3).standard_normal()), 0.0, 1.0)) * 100
                results.append(OfflineResult(p.batch_id, p.start + timedelta(minutes=IPC_MIN), "CAR_PCT",
                                             round(car, 2), "%", "flow cytometry"))
        self.records.add_offline_results(results)


@dataclass
class _Counts:
    advice: Counter
    changes: Counter
    outside: int = 0


def _advise(plant: _AdvisedPlant, rec: Recommender, bank: Bank, offset: int, minute: int, counts: _Counts) -> None:
    """Ask for advice on every running advised batch and apply what a validation user accepts."""
    cfg = rec.config
    at = {p.batch_id: p.start + timedelta(minutes=minute) for p in plant.plans
          if cfg.first_h * 60 <= minute <= p.n_steps - cfg.stop_before_harvest_h * 60}
    if not at:
        return
    states = load_states(plant.hist, plant.records, plant.site, at, plant.store)
    index = {p.batch_id: i for i, p in enumerate(plant.plans)}
    for bid, state in states.items():
        result = rec.recommend(state)
        if not isinstance(result, Advice):
            counts.advice[result.reason.value] += 1
            continue
        counts.advice["advice"] += 1
        ids = plant.store.add(list(result.recommendations))
        for r, rid in zip(result.recommendations, ids):
            i = offset + index[bid]
            tag = plant.site.tags[f"{r.unit}.{r.tag}"]
            if not within_limits(tag, float(bank.sp[r.tag][i]), r.proposed):
                counts.outside += 1  # counted, never applied: the acceptance check fails loudly in the report
                continue
            plant.store.decide(plant.users, VALIDATOR, plant.password, rid, "accepted")
            bank.set_setpoint(i, r.tag, r.proposed)
            plant.records.add_setpoints([SetpointChange(bid, r.tag, at[bid], r.proposed, "recommendation",
                                                        f"{rid} accepted by {VALIDATOR}")])
            counts.changes[bid] += 1


def arm_result(plan: BatchPlan, harvest: dict[str, float], excursions: int) -> ArmResult:
    """One arm at harvest: the release panel measured as the twin measures it, faults, excursions."""
    end = plan.start + timedelta(hours=plan.harvest_h)
    results = release_results(plan, harvest, end)
    tvc = next(r.value for r in results if r.attribute == "TOTAL_VIABLE_CELLS")
    failed = tuple(r.attribute for r in results if not r.passed)
    labels = len(plan.faults) + (plan.donor < POOR_DONOR) + (plan.car_frac < LOW_CAR)  # as the twin labels them
    return ArmResult(float(tvc or 0.0), not failed, failed, int(labels), int(excursions))


def validate(site: Site, models: RecommenderModels, n_pairs: int, seed: int, out: Path, cadence_h: float = 12.0,
             config: RecommenderConfig | None = None,
             progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Run n_pairs paired batches and compare the advised arm with the recipe arm."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if (out / "records.db").exists():
        raise ValueError(f"{out}: holds an earlier validation run; choose an empty folder")
    plans = [recipe_plan(site, p) for p in schedule(site, n_pairs, seed)]
    n = len(plans)
    bank = Bank(plans + plans)  # arms: [0, n) recipe, [n, 2n) advised; same plans, same random streams
    plant = _AdvisedPlant(site, plans, out)
    rec = Recommender(site, models, config)
    excursions = _Excursions(site, plans + plans)
    counts = _Counts(Counter(), Counter())
    harvest: dict[int, dict[str, float]] = {}
    cadence = round(cadence_h * 60)
    steps = int(bank.n_steps.max())
    noise = bank.draw_noise(1440)
    while bank.minute < steps:
        if bank.minute % 1440 == 0 and bank.minute:
            noise = bank.draw_noise(min(1440, steps - bank.minute))
        m0 = bank.minute
        meas, bad = bank.advance(noise[m0 % 1440:m0 % 1440 + PHYS_MIN])
        running = m0 < bank.n_steps
        excursions.update(meas, running)
        plant.blocks.append((m0, meas[:, n:].copy(), bad[:, n:].copy()))
        for b in np.flatnonzero(bank.n_steps == bank.minute):
            s = bank.s
            harvest[int(b)] = {"xv": float(s.xv[b]), "xd": float(s.xd[b]), "vol": float(s.vol[b]),
                               "bact": float(s.bact[b])}
        if bank.minute % cadence == 0:
            plant.flush(bank, n)
            _advise(plant, rec, bank, n, bank.minute, counts)
            if progress:
                progress(bank.minute, steps)
    plant.flush(bank, n)
    pairs = []
    for i, p in enumerate(plans):
        a = arm_result(p, harvest[i], excursions.count[i])
        b = arm_result(p, harvest[n + i], excursions.count[n + i])
        end = p.start + timedelta(hours=p.harvest_h)
        plant.records.update_batch(p.batch_id, end_ts=end, status="harvested",
                                   disposition="released" if b.released else "rejected")
        plant.records.add_release_results(release_results(p, harvest[n + i], end))  # the same draws as arm_result
        pairs.append(PairResult(p.batch_id, p.unit, p.unit_kind, a, b, counts.changes[p.batch_id]))
    plant.records.close()
    return summarise(tuple(pairs), seed, cadence_h, models.version, dict(counts.advice), counts.outside,
                     time.perf_counter() - t0)


def log_to_mlflow(report: ValidationReport, tracking_db: Path, artifacts: Path, run_dir: Path | None = None) -> str:
    """Log the report as an MLflow run tagged with the model version it validated; returns the run id."""
    import mlflow  # lazy: 3 s to import

    from models.registry import mlflow_env_kept

    name = "cellwatch-recommender-validation"
    with mlflow_env_kept():
        mlflow.set_tracking_uri(f"sqlite:///{tracking_db.resolve()}")
        if mlflow.get_experiment_by_name(name) is None:
            mlflow.create_experiment(name, artifact_location=artifacts.resolve().as_uri())
        mlflow.set_experiment(name)
    with mlflow.start_run(run_name=f"{report.model_version} n={report.n_pairs} seed={report.seed}") as run:
        mlflow.set_tags({"model_version": report.model_version, "kind": "closed-loop validation"})
        mlflow.log_params({"n_pairs": report.n_pairs, "seed": report.seed, "cadence_h": report.cadence_h,
                           "model_version": report.model_version})
        mlflow.log_metrics({k: v for k, v in report.metrics().items() if math.isfinite(v)})
        mlflow.log_dict(report.to_dict(), "validation_report.json")
        mlflow.log_text(report.summary(), "validation_report.txt")
        if run_dir is not None and (run_dir / "pairs.parquet").exists():
            mlflow.log_artifact(str(run_dir / "pairs.parquet"))
        return run.info.run_id
