"""Model commands: train, evaluate, tune, predict, models (list/promote/history), import and export."""

from __future__ import annotations

import getpass
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from plant.site import load_site_or_demo

DATA = Path("data") / "history"
_data = click.option("--data", "-d", default=DATA, show_default=True, type=click.Path(path_type=Path, file_okay=False),
                     help="Data folder: historian/ and records.db (cellwatch simulate or cellwatch import).")
_site = click.option("--site", "site_path", type=click.Path(dir_okay=False), help="Site file (default: demo site).")
_config = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                       help="Model config TOML (acceptance criteria, horizons; default: built-in).")
_mlflow = click.option("--mlflow-db", type=click.Path(path_type=Path, dir_okay=False),
                       help="MLflow sqlite store (default: DATA/mlflow.db, artifacts in DATA/mlruns/).")


def _tracking(data: Path, mlflow_db: Path | None):  # noqa: ANN202
    from models.registry import Tracking

    return Tracking(mlflow_db, mlflow_db.parent / "mlruns") if mlflow_db else Tracking.for_data(data)


def _cfg(path: str | None):  # noqa: ANN202
    from models.config import load_config

    return load_config(path)


def _print_run(r, show_timings: bool = True) -> None:  # noqa: ANN001
    from models.pipeline import HEADLINE

    for k in HEADLINE:
        v = r.metrics.get(k)
        if v is not None:
            click.echo(f"  {k:40s} {v:.4g}")
    for kind, checks in r.checks.items():
        for c in checks:
            click.echo(f"  acceptance {kind}: {c.name} {c.limit}: {c.value:.4g} {'pass' if c.passed else 'FAIL'}")
    if show_timings:
        click.echo("  timings: " + ", ".join(f"{k} {v:.1f}" for k, v in r.timings.items()))
    click.echo(f"  report: {r.report_dir / 'report.html'}")


@click.command("train")
@_data
@_site
@_config
@_mlflow
@click.option("--trials", type=click.IntRange(0), help="Optuna trials per model (default: config, 30).")
@click.option("--storage", help="Optuna storage URL shared by workers, e.g. sqlite:///optuna.db (default: in-memory).")
@click.option("--study", help="Optuna study name prefix (with --storage: continue a shared study).")
@click.option("--no-track", is_flag=True, help="Do not log to MLflow or register the models.")
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False), help="Also keep the report here.")
def train_cmd(data: Path, site_path: str | None, config_path: str | None, mlflow_db: Path | None, trials: int | None,
              storage: str | None, study: str | None, no_track: bool, report_dir: Path | None) -> None:
    """Tune, train and evaluate the yield and deviation models; register both as new `challenger` versions."""
    from models.pipeline import train

    t0 = time.perf_counter()
    r = train(data, load_site_or_demo(site_path), _cfg(config_path), None if no_track else _tracking(data, mlflow_db),
              trials, storage, study, report_dir)
    click.echo(f"trained on {data} in {time.perf_counter() - t0:.1f} s; data fingerprint {r.fingerprint[:16]}")
    if r.versions:
        click.echo("  registered: " + ", ".join(f"{k} v{v} (challenger)" for k, v in r.versions.items()))
    _print_run(r)


@click.command("evaluate")
@_data
@_site
@_config
@_mlflow
@click.option("--alias", default="champion", show_default=True, help="Alias (champion, challenger) or version.")
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False), help="Also keep the report here.")
def evaluate_cmd(data: Path, site_path: str | None, config_path: str | None, mlflow_db: Path | None, alias: str,
                 report_dir: Path | None) -> None:
    """Evaluate registered models and the PLS/PCA/limit-alarm baselines on the locked hold-out; log the report."""
    from models.pipeline import evaluate

    r = evaluate(data, load_site_or_demo(site_path), _cfg(config_path), _tracking(data, mlflow_db), alias, report_dir)
    click.echo(f"evaluated {alias}: " + ", ".join(f"{k} v{v}" for k, v in r.versions.items()))
    _print_run(r)


@click.command("tune")
@_data
@_site
@_config
@click.option("--model", type=click.Choice(["yield", "deviation"]), required=True)
@click.option("--trials", default=10, show_default=True, type=click.IntRange(1))
@click.option("--storage", required=True, help="Optuna storage URL shared by the workers (sqlite:///..., postgresql://...)")
@click.option("--study", required=True, help="Study name prefix; `cellwatch train --storage S --study N --trials 0` "
                                            "then trains with the best trial.")
def tune_cmd(data: Path, site_path: str | None, config_path: str | None, model: str, trials: int, storage: str,
             study: str) -> None:
    """Run Optuna trials of one model into a shared study (start several of these as workers)."""
    from models import training
    from models.dataset import load_plant_data
    from plant.historian import Historian
    from plant.records import Records

    cfg = _cfg(config_path)
    with Records.open(data / "records.db") as rec:
        d = load_plant_data(Historian(data / "historian"), rec, load_site_or_demo(site_path), bucket_min=cfg.bucket_min)
        p = training.prepare(d, training.split_batches(d, rec, cfg), cfg)
    fn = training._tune_yield if model == "yield" else training._tune_deviation  # noqa: SLF001
    r = fn(p, cfg, trials, storage, study)
    click.echo(f"{r.study_name}: {r.n_complete} complete, {r.n_pruned} pruned; best {r.best_value:.5g} "
               f"with {json.dumps(r.params)} ({r.n_rounds} rounds)")


@click.command("predict")
@_data
@_site
@_mlflow
@click.option("--batch", "batch_id", required=True, help="Batch id (chain of identity).")
@click.option("--at", "at_text", help="UTC time as of which to predict (default: now).")
@click.option("--alias", default="champion", show_default=True)
@click.option("--setpoint", "setpoints", multiple=True, metavar="TAG=VALUE", help="What if this setpoint were in force.")
def predict_cmd(data: Path, site_path: str | None, mlflow_db: Path | None, batch_id: str, at_text: str | None,
                alias: str, setpoints: tuple[str, ...]) -> None:
    """Yield (with interval), deviation risk, drivers and applicability of one batch as of a time."""
    from models.predict import BatchPredictor
    from plant.historian import Historian
    from plant.records import Records

    at = datetime.fromisoformat(at_text) if at_text else datetime.now(timezone.utc)
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at
    sp = {}
    for s in setpoints:
        tag, _, value = s.partition("=")
        try:
            sp[tag.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{s!r}: expected TAG=VALUE, e.g. TEMP_SP=36.5", param_hint="--setpoint") from None
    pred = BatchPredictor.from_registry(_tracking(data, mlflow_db), load_site_or_demo(site_path), alias)
    with Records.open(data / "records.db") as rec:
        p = pred.predict(Historian(data / "historian"), rec, batch_id, at, sp or None)
    y, d = p.yield_forecast, p.deviation
    med, lo, hi = y.cells
    click.echo(f"{batch_id} at culture hour {y.culture_h:.1f} ({y.as_of:%Y-%m-%d %H:%M} UTC), models "
               f"yield v{y.model_version} / deviation v{d.model_version}")
    click.echo(f"  harvest viable cells {med:.3g} ({y.interval:.0%} interval {lo:.3g} .. {hi:.3g})"
               f"  trustworthy: {y.applicability.trustworthy}")
    for reason in y.applicability.reasons:
        click.echo(f"    not trustworthy: {reason}")
    click.echo("  yield drivers: " + ", ".join(f"{x.feature} {x.contribution:+.3f}" for x in y.drivers))
    click.echo(f"  deviation risk within {d.horizon_h:g} h: {d.risk:.1%} (threshold {d.threshold:.1%})"
               + ("  ABOVE THRESHOLD" if d.above_threshold else ""))
    click.echo("  risk drivers: " + ", ".join(f"{x.feature} {x.contribution:+.2f}" for x in d.drivers))


@click.group("models")
def models_group() -> None:
    """Registered models: list versions, promote through the gate, promotion history."""


@models_group.command("list")
@_data
@_mlflow
def models_list(data: Path, mlflow_db: Path | None) -> None:
    """Registered versions with aliases and headline hold-out metrics."""
    from models.registry import versions_table

    t = versions_table(_tracking(data, mlflow_db))
    if t.height == 0:
        click.echo("no registered models yet (cellwatch train)")
    for r in t.iter_rows(named=True):
        click.echo(f"{r['model']:22s} v{r['version']:<3d} {r['aliases']:20s} data {r['data']} code {r['code']} "
                   f"{r['headline']}")


@models_group.command("promote")
@_data
@_site
@_config
@_mlflow
@click.option("--model", "kinds", type=click.Choice(["yield", "deviation", "both"]), default="both", show_default=True)
@click.option("--version", help="Version to promote (default: the challenger).")
@click.option("--by", default=lambda: os.environ.get("USER") or getpass.getuser(), show_default="$USER",
              help="Who promotes (recorded).")
@click.option("--reason", required=True, help="Why (recorded with the decision).")
def models_promote(data: Path, site_path: str | None, config_path: str | None, mlflow_db: Path | None, kinds: str,
                   version: str | None, by: str, reason: str) -> None:
    """Promote the challenger to champion if it passes acceptance and beats the champion on the locked hold-out."""
    from models.gate import GateRefused, promote

    refused = []
    for kind in (["yield", "deviation"] if kinds == "both" else [kinds]):
        try:
            d = promote(data, load_site_or_demo(site_path), _cfg(config_path), _tracking(data, mlflow_db), kind, by, reason,
                        version)
            click.echo(f"{kind}: version {d.challenger} is now champion (was {d.champion or 'none'})")
        except GateRefused as exc:
            refused.append(str(exc))
            click.echo(f"{kind}: REFUSED: {exc}", err=True)
    if refused:
        raise click.exceptions.Exit(1)


@models_group.command("history")
@_data
def models_history(data: Path) -> None:
    """Promotion decisions recorded in the batch records (who, what, when, why)."""
    from plant.model_records import promotions
    from plant.records import Records

    with Records.open(data / "records.db") as rec:
        for r in promotions(rec).iter_rows(named=True):
            click.echo(f"{r['ts']:%Y-%m-%d %H:%M} {r['model_name']} v{r['version']} {r['outcome']} by {r['decided_by']}"
                       f" (was v{r['previous_version'] or '-'}): {r['reason']}")


@click.command("import")
@click.option("--telemetry", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Long-format telemetry: timestamp, unit, tag, value[, quality] (.csv or .parquet).")
@click.option("--batches", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Batch table with outcomes: batch_id, unit, recipe, start, end, harvest_viable_cells, ...")
@click.option("--offline", type=click.Path(path_type=Path, dir_okay=False), help="Offline results.")
@click.option("--covariates", type=click.Path(path_type=Path, dir_okay=False), help="Donor covariates.")
@click.option("--setpoints", type=click.Path(path_type=Path, dir_okay=False), help="Setpoint changes.")
@click.option("--deviations", type=click.Path(path_type=Path, dir_okay=False), help="Recorded deviations.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Empty folder for historian/ and records.db.")
@_site
def import_cmd(telemetry: Path, batches: Path, offline: Path | None, covariates: Path | None, setpoints: Path | None,
               deviations: Path | None, out: Path, site_path: str | None) -> None:
    """Import a site's exported history (docs/import.md) into a fresh store that train/evaluate can use."""
    from models.importer import import_history

    t0 = time.perf_counter()
    r = import_history(out, load_site_or_demo(site_path), telemetry, batches, offline, covariates, setpoints, deviations)
    click.echo(f"imported {r.batches} batches, {r.samples:,} samples, {r.offline} offline results, {r.covariates} "
               f"covariates, {r.setpoints} setpoint changes, {r.deviations} deviations in "
               f"{time.perf_counter() - t0:.1f} s -> {out}" + (f" ({r.renamed_ids} batch ids mapped to chain-of-identity"
                                                              " ids; site ids kept in notes)" if r.renamed_ids else ""))


@click.command("export")
@_data
@_site
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True)
def export_cmd(data: Path, site_path: str | None, out: Path, fmt: str) -> None:
    """Write a history in the import format (unit telemetry + batch records): the round trip of `import`."""
    from models.exporter import export_history

    paths = export_history(data, out, load_site_or_demo(site_path), fmt)
    click.echo("exported " + ", ".join(f"{k} -> {v}" for k, v in paths.items()))
