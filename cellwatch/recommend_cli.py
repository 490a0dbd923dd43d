"""`cellwatch recommend ...`: train the setpoint recommender on a plant history, and run it over the running
batches of a plant, storing its advice as pending recommendations for an operator to decide on.

    cellwatch recommend train --history DIR --out MODELS
    cellwatch recommend run --data DIR --models MODELS [--every-min 5 | --once] [--at T]

`run` asks the recommender (models/recommend.py) about every batch running at the plant's data time; its guards
(advisory window, stale or gapped input, applicability domain, minimum interval per tag, expected gain) decide,
and when they stop it the reason is printed. New advice is stored as pending (plant.recommendations). A batch
whose advice still awaits a decision is not asked again: the recommender chose those changes together, against
the setpoints in force, so adding more on top of undecided ones would be advice on a plan nobody has agreed to
(and a tag never gets a second pending recommendation).
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from cellwatch.auth_cli import parse_ts
from plant.site import load_site_or_demo

UTC = timezone.utc
_site_opt = click.option("--site", "site_path", type=click.Path(dir_okay=False),
                         help="Site file (default: the demo site).")


@click.group("recommend")
def recommend_group() -> None:
    """Setpoint recommendations: train the recommender, run it over the running batches."""


# ------------------------------------------------------------------------------------------- train

@recommend_group.command("train")
@click.option("--history", "history", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Plant history to learn from (historian/ + records.db).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the models (effect.json, domain.json, deviation/, version.json).")
@_site_opt
@click.option("--telemetry-batches", default=300, show_default=True, type=click.IntRange(10),
              help="Newest batches whose telemetry trains the applicability domain and the risk model.")
@click.option("--boot", default=200, show_default=True, type=click.IntRange(10),
              help="Bootstrap refits of the response surface (the uncertainty of a gain).")
@click.option("--overwrite", is_flag=True, help="Replace models already in --out.")
def recommend_train(history: Path, out: Path, site_path: str | None, telemetry_batches: int, boot: int,
                    overwrite: bool) -> None:
    """Train the recommender's models (response surface, applicability domain, risk) on a plant history."""
    from models.recommend_train import TrainConfig, save_models, train_recommender
    from plant.historian import Historian
    from plant.records import Records

    if not (history / "records.db").exists():
        raise click.ClickException(f"{history}: no records.db here; run `cellwatch simulate --out {history}` first")
    if (out / "version.json").exists() and not overwrite:
        raise click.ClickException(f"{out}: holds recommender models already; pass --overwrite to replace them")
    site = load_site_or_demo(site_path)
    t0 = time.perf_counter()
    with Records.open(history / "records.db") as records:
        models, stats = train_recommender(Historian(history / "historian"), records, site,
                                          TrainConfig(telemetry_batches=telemetry_batches, n_boot=boot))
    save_models(models, out)
    learnt = sorted(k for k, n in models.effect.varied_.items() if n >= models.effect.min_varied)
    click.echo("  " + ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))
    click.echo(f"  setpoints with a learnt effect (unit kind|tag): {', '.join(learnt) or 'none'}")
    click.echo(f"recommender {models.version} trained in {time.perf_counter() - t0:.0f} s -> {out}")


# ------------------------------------------------------------------------------------------- run

@dataclass
class RunResult:
    """One pass over the running batches: what was stored, what was held back, and why there was no advice."""

    at: datetime | None
    stored: list[str] = field(default_factory=list)  # recommendation ids
    duplicates: int = 0
    held_batches: int = 0  # batches not asked because their earlier advice is still pending
    no_advice: dict[str, str] = field(default_factory=dict)  # batch id -> reason
    lines: list[str] = field(default_factory=list)


def plant_time(hist, wall: datetime | None = None) -> datetime | None:
    """The newest stored sample's time (at most wall-clock now); None without telemetry. The historian keeps one
    folder per UTC day, so only the newest days are read."""
    import polars as pl

    wall = wall or datetime.now(UTC)
    days = sorted(p.name for p in hist.root.glob("date=*") if p.is_dir())
    for name in reversed(days[-3:]):
        day = datetime.fromisoformat(name.removeprefix("date=")).replace(tzinfo=UTC)
        got = hist.scan(start=day, end=day + timedelta(days=1)).select(pl.max("ts")).collect()
        if got.height and got.item() is not None:
            return min(got.item(), wall)
    return None


def _states(hist, records, site, at: dict[str, datetime], store) -> tuple[dict, dict[str, str]]:
    """BatchStates of the batches (one pass), or batch by batch when one of them cannot be read."""
    from models.recommend_state import load_state, load_states

    try:
        return load_states(hist, records, site, at, store), {}
    except Exception:  # noqa: BLE001 - find the batch at fault; the others still get their advice
        states, errors = {}, {}
        for bid, t in at.items():
            try:
                states[bid] = load_state(hist, records, site, bid, t, store)
            except Exception as exc:  # noqa: BLE001
                errors[bid] = f"{type(exc).__name__}: {exc}"
        return states, errors


def run_once(data: Path, recommender, site, at: datetime | None = None) -> RunResult:
    """Ask the recommender about every batch running at `at` (default: the plant's data time) and store new
    advice as pending, leaving out a tag that already has pending advice for the same batch."""
    from models.recommend import Advice
    from plant.historian import Historian
    from plant.recommendations import RecommendationStore
    from plant.records import Records

    hist = Historian(data / "historian")
    at = at or plant_time(hist)
    out = RunResult(at)
    if at is None:
        out.lines.append("no telemetry stored yet: nothing to advise on")
        return out
    with Records.open(data / "records.db") as records:
        store = RecommendationStore(records)
        running = [b for b in records.batches_active_at(at) if b.start_ts < at]
        if not running:
            out.lines.append(f"{at:%Y-%m-%d %H:%M} UTC: no batch running")
            return out
        pending_all = store.table(status="pending")
        waiting = {bid: part["id"].to_list() for (bid,), part in pending_all.group_by("batch_id")}
        ask = {b.batch_id: at for b in running if b.batch_id not in waiting}
        states, errors = _states(hist, records, site, ask, store) if ask else ({}, {})
        for b in running:
            head = f"{b.unit} {b.batch_id} day {(at - b.start_ts).total_seconds() / 86400:.1f}"
            if b.batch_id in waiting:  # its advice was chosen as a whole: no more until a person has decided
                ids = waiting[b.batch_id]
                out.held_batches += 1
                out.lines.append(f"{head}: not asked: {len(ids)} recommendation(s) await a decision ("
                                 + ", ".join(ids) + ")")
                continue
            if b.batch_id in errors:
                out.no_advice[b.batch_id] = "unreadable"
                out.lines.append(f"{head}: no advice because its data could not be read ({errors[b.batch_id]})")
                continue
            result = recommender.recommend(states[b.batch_id])
            if not isinstance(result, Advice):
                out.no_advice[b.batch_id] = result.reason.value
                out.lines.append(f"{head}: no advice because {result.reason.value}: " + "; ".join(result.details))
                continue
            pending = dict(store.table(status="pending", batch_id=b.batch_id).select("tag", "id").iter_rows())
            new = [r for r in result.recommendations if r.tag not in pending]
            for r in result.recommendations:
                if r.tag in pending:
                    out.duplicates += 1
                    out.lines.append(f"{head}: {r.tag} {r.current:g} -> {r.proposed:g} not stored: "
                                     f"{pending[r.tag]} for {r.tag} still awaits a decision")
            ids = store.add(new)
            out.stored += ids
            for r, rid in zip(new, ids):
                out.lines.append(f"{head}: {rid} pending: {r.tag} {r.current:g} -> {r.proposed:g}, expected gain "
                                 f"{r.gain:+.1%} [{r.gain_low:+.1%}, {r.gain_high:+.1%}], risk {r.risk_change:+.3f}, "
                                 f"{r.model_version}")
            if result.held:
                out.lines.append(f"{head}: held: " + "; ".join(result.held))
    return out


@recommend_group.command("run")
@click.option("--data", "-d", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The plant's folder: records.db (batches, recommendations) and historian/.")
@click.option("--models", "models_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Recommender models saved by `cellwatch recommend train`.")
@_site_opt
@click.option("--every-min", default=5.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Minutes between two passes over the running batches.")
@click.option("--once", is_flag=True, help="One pass, then exit.")
@click.option("--at", "at_opt", help="Data time to advise at (ISO, UTC; default: the newest stored sample).")
def recommend_run(data: Path, models_dir: Path, site_path: str | None, every_min: float, once: bool,
                  at_opt: str | None) -> None:
    """Advise on every running batch: new recommendations are stored as pending for an operator's decision;
    when a guard stops the recommender, the reason is printed."""
    from models.recommend import Recommender
    from models.recommend_train import load_models

    if not (data / "records.db").exists():
        raise click.ClickException(f"{data}: no records.db here")
    at = parse_ts(at_opt, "--at")
    models = load_models(models_dir)
    recommender = Recommender(load_site_or_demo(site_path), models)
    click.echo(f"recommender {models.version} over the running batches of {data}"
               + ("" if once else f", every {every_min:g} min"))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    if not once:
        signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            t0 = time.monotonic()
            try:
                result = run_once(data, recommender, recommender.site, at)
            except Exception as exc:  # noqa: BLE001 - a service keeps going; the next pass reads afresh
                if once:
                    raise
                click.echo(f"{datetime.now(UTC):%H:%M:%S} pass failed: {type(exc).__name__}: {exc}", err=True)
            else:
                for line in result.lines:
                    click.echo(line)
                click.echo(f"{len(result.stored)} new recommendation(s) stored, {result.held_batches} batch(es) "
                           f"awaiting a decision, {len(result.no_advice)} without advice "
                           f"({time.monotonic() - t0:.1f} s)")
            if once:
                return
            sys.stdout.flush()
            deadline = t0 + every_min * 60
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.5)
            if stopping:
                return
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
