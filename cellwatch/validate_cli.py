"""`cellwatch validate-recommender`: train (or load) the recommender and prove it in closed loop on the twin."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

DEFAULT_OUT = Path("data") / "validation"


def _models(out: Path, models_dir: Path | None, history: Path | None, train_batches: int, train_seed: int,
            site, telemetry_batches: int):
    from models.recommend_train import TrainConfig, load_models, save_models, train_recommender
    from plant.historian import Historian
    from plant.records import Records

    if models_dir is not None:
        return load_models(models_dir)
    if history is None:  # a plant history of its own, from another seed than the validation batches
        from plant.sim.history import generate_history

        history = out / "history"
        if not (history / "records.db").exists():
            click.echo(f"simulating {train_batches} batches of training history (seed {train_seed}) -> {history}")
            generate_history(site, history, train_batches, train_seed, workers=1)
    if not (history / "records.db").exists():
        raise click.ClickException(f"{history}: no records.db here; run `cellwatch simulate --out {history}` first")
    click.echo(f"training the recommender on {history} ...")
    with Records.open(history / "records.db") as records:
        models, stats = train_recommender(Historian(history / "historian"), records, site,
                                          TrainConfig(telemetry_batches=telemetry_batches))
    click.echo("  " + ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))
    save_models(models, out / "models" / models.version)
    click.echo(f"  models {models.version} -> {out / 'models' / models.version}")
    return models


@click.command("validate-recommender")
@click.option("--batches", "-n", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="Paired batches to run (each: a recipe arm and an advised arm).")
@click.option("--seed", "-s", default=2024, show_default=True, type=click.IntRange(0),
              help="Seed of the paired batches.")
@click.option("--out", "-o", default=DEFAULT_OUT, show_default=True, type=click.Path(path_type=Path),
              help="Folder for the advised arm's historian, records, models and the report.")
@click.option("--models", "models_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Use these saved recommender models (else train).")
@click.option("--history", type=click.Path(path_type=Path, file_okay=False),
              help="Train on this plant history (historian/ + records.db); default: simulate one.")
@click.option("--train-batches", default=3000, show_default=True, type=click.IntRange(20),
              help="Batches of history to simulate when neither --models nor --history is given.")
@click.option("--train-seed", type=click.IntRange(0), help="Seed of the simulated history (default: seed + 1).")
@click.option("--telemetry-batches", default=300, show_default=True, type=click.IntRange(10),
              help="Newest batches whose telemetry trains the domain and risk models.")
@click.option("--cadence-h", default=12.0, show_default=True, type=click.FloatRange(1.0),
              help="Hours between two requests for advice on each running batch.")
@click.option("--mlflow-db", default=Path("data") / "mlflow.db", show_default=True, type=click.Path(path_type=Path),
              help="MLflow tracking database (sqlite); artifacts go to mlruns/ beside it.")
@click.option("--no-mlflow", is_flag=True, help="Do not log the report to MLflow.")
@click.option("--check", is_flag=True, help="Exit with status 1 when the acceptance criteria are not met.")
def validate_recommender(batches: int, seed: int, out: Path, models_dir: Path | None, history: Path | None,
                         train_batches: int, train_seed: int | None, telemetry_batches: int, cadence_h: float,
                         mlflow_db: Path, no_mlflow: bool, check: bool) -> None:
    """Closed-loop validation: paired twin batches, recipe vs the recommender's advice (approved and applied)."""
    from cellwatch.validate import log_to_mlflow, validate
    from plant.site import load_demo_site

    site = load_demo_site()
    models = _models(out, models_dir, history, train_batches, seed + 1 if train_seed is None else train_seed, site,
                     telemetry_batches)
    run_dir = out / f"run-{models.version}-n{batches}-s{seed}"
    t0 = time.perf_counter()
    with click.progressbar(length=1, label=f"{batches} paired batches", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)
        report = validate(site, models, batches, seed, run_dir, cadence_h, progress=progress)
    report.pairs_frame().write_parquet(run_dir / "pairs.parquet")
    (run_dir / "report.txt").write_text(report.summary() + "\n", encoding="utf-8")
    click.echo(report.summary())
    if not no_mlflow:
        mlflow_db.parent.mkdir(parents=True, exist_ok=True)
        run_id = log_to_mlflow(report, mlflow_db, mlflow_db.parent / "mlruns", run_dir)
        click.echo(f"logged to MLflow run {run_id} ({mlflow_db}) beside model version {models.version}")
    click.echo(f"done in {time.perf_counter() - t0:.0f} s -> {run_dir}")
    if check and not report.passed():
        sys.exit(1)
