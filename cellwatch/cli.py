"""The `cellwatch` command: the composition root that wires plant, connectors, models and dashboards."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from cellwatch import summary
from plant.historian import Historian, HistorianError
from plant.records import Records
from plant.site import SiteError, load_site_or_demo

DEFAULT_DATA = Path("data")


class UserError(click.ClickException):
    """An error the user can fix; shown as one line."""


def _parse_start(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--start: not an ISO date/time: {value!r} (e.g. 2025-01-06T08:00)") from None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _parse_injection(spec: str):
    from plant.sim.faults import Injection

    parts = spec.split("@")
    try:
        kind, target = parts[0].split(":")
        start, hours = parts[1].split("+")
        start_dt = _parse_start(start)
        assert start_dt is not None
        return Injection(kind, target, start_dt, float(hours))
    except (ValueError, IndexError, AssertionError) as exc:
        raise UserError(f"--inject {spec!r}: expected KIND:TARGET@START+HOURS, e.g. "
                        f"co2_supply_failure:BR01@2025-01-10T06:00+4 ({exc})") from None


def _fresh_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out}: already holds data; choose another --out or pass --overwrite")
        import shutil

        for name in ("historian", "records.db", "records.db-wal", "records.db-shm"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cellwatch")
def cli() -> None:
    """cellwatch: AI process monitoring for cell-therapy manufacturing."""


@cli.command()
@click.option("--batches", "-n", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Number of batches to simulate.")
@click.option("--seed", "-s", default=1, show_default=True, type=click.IntRange(0), help="Random seed.")
@click.option("--out", "-o", default=DEFAULT_DATA / "history", show_default=True, type=click.Path(path_type=Path),
              help="Folder for historian/ and records.db.")
@click.option("--site", "site_path", type=click.Path(dir_okay=False), help="Site file (default: the demo site).")
@click.option("--start", help="UTC start of the first batch (default 2025-01-06T08:00).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@click.option("--fault-scale", default=1.0, show_default=True, type=click.FloatRange(0), help="Multiplies fault rates.")
@click.option("--inject", multiple=True, metavar="KIND:TARGET@START+HOURS", help="Force a fault (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace data already in --out.")
def simulate(batches: int, seed: int, out: Path, site_path: str | None, start: str | None, workers: int,
             fault_scale: float, inject: tuple[str, ...], overwrite: bool) -> None:
    """Generate plant history with the digital twin (fast mode): telemetry, batch records, fault labels."""
    from plant.sim.history import DEFAULT_START, generate_history

    site = load_site_or_demo(site_path)
    injections = [_parse_injection(s) for s in inject]
    _fresh_out(out, overwrite)
    t0 = time.perf_counter()
    with click.progressbar(length=1, label=f"simulating {batches} batches", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)
        result = generate_history(site, out, batches, seed, _parse_start(start) or DEFAULT_START, injections,
                                  fault_scale, workers, progress)
    click.echo(f"{result.batches} batches, {result.samples:,} samples, {result.failed} rejected, "
               f"{result.fault_labels} fault labels, {result.start:%Y-%m-%d}..{result.end:%Y-%m-%d} "
               f"in {time.perf_counter() - t0:.1f} s -> {out}")


@cli.command("summary")
@click.option("--data", "-d", default=DEFAULT_DATA / "history", show_default=True,
              type=click.Path(path_type=Path, file_okay=False))
def summary_cmd(data: Path) -> None:
    """Summarise a history folder: batches, yields, failures, faults, telemetry."""
    if not (data / "records.db").exists():
        raise UserError(f"{data}: no records.db here; run `cellwatch simulate --out {data}` first")
    click.echo(summary.render(Historian(data / "historian"), Records.open(data / "records.db")))


@cli.group()
def site() -> None:
    """Site files: check and show."""


@site.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
def site_check(path: str | None) -> None:
    """Validate a site file (default: the demo site) and list what it declares."""
    s = load_site_or_demo(path)
    click.echo(f"{s.source}: OK - {len(s.areas)} areas, {len(s.rooms)} rooms, {len(s.units)} units, "
               f"{len(s.tags)} tags, {len(s.endpoints)} endpoints, {len(s.recipes)} recipes")


@cli.group()
def plant() -> None:
    """The digital twin plant."""


@plant.command("live")
@click.option("--speed", default=3600.0, show_default=True, type=click.FloatRange(min=1.0),
              help="Simulated seconds per real second (3600 = one simulated hour per second).")
@click.option("--hours", default=24.0, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
              help="Simulated hours to run.")
@click.option("--seed", "-s", default=1, show_default=True, type=click.IntRange(0))
@click.option("--out", "-o", default=DEFAULT_DATA / "live", show_default=True, type=click.Path(path_type=Path))
@click.option("--site", "site_path", type=click.Path(dir_okay=False))
@click.option("--start", help="UTC start (default: now, on the minute).")
def plant_live(speed: float, hours: float, seed: int, out: Path, site_path: str | None, start: str | None) -> None:
    """Run the twin in live mode at a chosen speed, writing telemetry and records as it goes."""
    from datetime import timedelta

    from plant.sim.live import LiveTwin
    from plant.sim.live_records import LiveRecorder

    site_obj = load_site_or_demo(site_path)
    t0 = _parse_start(start) or datetime.now(timezone.utc).replace(second=0, microsecond=0)
    twin = LiveTwin(site_obj, seed, t0)
    hist = Historian(out / "historian")
    records = Records.open(out / "records.db")
    writer = hist.writer(max_rows=50_000, max_age_s=2.0)
    recorder = LiveRecorder(records, twin)
    count = 0

    def sink(frame) -> None:
        nonlocal count
        writer.append(frame)
        count += frame.height
        if twin.now.minute % 15 == 0:  # records follow at a 15-minute pace; harvests are caught the same way
            recorder.sync()

    try:
        asyncio.run(twin.run(speed, sink, until=t0 + timedelta(hours=hours)))
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        writer.close()
        recorder.sync()
        records.close()
    click.echo(f"live twin: {count:,} samples up to {twin.now:%Y-%m-%d %H:%M} UTC -> {out}")


@cli.command()
@click.option("--data", "-d", default=DEFAULT_DATA / "demo", show_default=True, type=click.Path(path_type=Path),
              help="Demo folder: history, models, users, the live plant's data and the logs.")
@click.option("--batches", "-n", default=200, show_default=True, type=click.IntRange(1),
              help="Batches of history generated on first run (what the models learn from).")
@click.option("--seed", "-s", default=1, show_default=True, type=click.IntRange(0))
@click.option("--trials", default=10, show_default=True, type=click.IntRange(0),
              help="Optuna trials per model on first run (cellwatch train's default is 30).")
@click.option("--panel-port", default=8501, show_default=True, type=click.IntRange(0, 65535),
              help="Panel port (a free one when taken; the same for the ports below).")
@click.option("--mlflow-port", default=5000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--ingest-port", default=9108, show_default=True, type=click.IntRange(0, 65535),
              help="Ingest /metrics and /health.")
@click.option("--fault-scale", default=10.0, show_default=True, type=click.FloatRange(0),
              help="Multiplies the live twin's fault rates, so there is always something to see.")
@click.option("--preroll-h", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Hours of the plant's past run (and stored) before it goes live, so every unit has a batch "
                   "(and most are past day 1, where setpoint advice starts).")
@click.option("--alarms-every", default=60.0, show_default=True, type=click.FloatRange(0),
              help="Seconds between alarm-engine runs over the new telemetry (0 = never).")
@click.option("--recommend-every", default=2.0, show_default=True, type=click.FloatRange(0),
              help="Minutes between the setpoint recommender's passes over the running batches (0 = never).")
def demo(data: Path, batches: int, seed: int, trials: int, panel_port: int, mlflow_port: int, ingest_port: int,
         fault_scale: float, preroll_h: float, alarms_every: float, recommend_every: float) -> None:
    """The demo plant end to end: history, models and users on first run, then the live twin's OPC UA and
    Modbus servers, ingest, the panel and the MLflow UI until Ctrl-C. A second run reuses what exists."""
    from cellwatch.demo import DemoConfig, run

    run(DemoConfig(data, batches, seed, trials, panel_port, mlflow_port, ingest_port, fault_scale, preroll_h,
                   alarms_every, recommend_every))


# -- command groups of other modules: one import + cli.add_command(...) line each, below this marker --
from cellwatch.audit_cli import audit as _audit_group; cli.add_command(_audit_group)  # noqa: E402
from cellwatch.users_cli import users as _users_group; cli.add_command(_users_group)  # noqa: E402
from cellwatch.alarms_cli import alarms_group, deviations_group; cli.add_command(alarms_group)  # noqa: E402
cli.add_command(deviations_group)
from cellwatch.connectors_cli import ingest, plant_serve; cli.add_command(ingest); plant.add_command(plant_serve)  # noqa: E402,E501
from cellwatch.panel_cli import panel as _panel_cmd; cli.add_command(_panel_cmd)  # noqa: E402
from cellwatch.models_cli import train_cmd; cli.add_command(train_cmd)  # noqa: E402
from cellwatch.models_cli import evaluate_cmd; cli.add_command(evaluate_cmd)  # noqa: E402
from cellwatch.models_cli import tune_cmd; cli.add_command(tune_cmd)  # noqa: E402
from cellwatch.models_cli import predict_cmd; cli.add_command(predict_cmd)  # noqa: E402
from cellwatch.models_cli import models_group; cli.add_command(models_group)  # noqa: E402
from cellwatch.models_cli import import_cmd; cli.add_command(import_cmd)  # noqa: E402
from cellwatch.models_cli import export_cmd; cli.add_command(export_cmd)  # noqa: E402
from cellwatch.validate_cli import validate_recommender; cli.add_command(validate_recommender)  # noqa: E402
from cellwatch.recommend_cli import recommend_group; cli.add_command(recommend_group)  # noqa: E402


_EXPECTED = (SiteError, HistorianError, OSError, ValueError, KeyError)


def main() -> None:
    """Entry point: expected errors become one line and exit code 2 (CELLWATCH_DEBUG=1 shows tracebacks)."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except _EXPECTED as exc:
        if os.environ.get("CELLWATCH_DEBUG"):
            raise
        msg = str(exc).strip().replace("\n", "; ") or type(exc).__name__
        click.echo(f"error: {msg}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
