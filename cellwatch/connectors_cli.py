"""`cellwatch plant serve` (the twin's OPC UA and Modbus servers) and `cellwatch ingest` (connectors -> historian)."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from plant.site import load_site_or_demo

_site_opt = click.option("--site", "site_path", type=click.Path(dir_okay=False),
                         help="Site file (default: the demo site).")
_pki_opt = click.option("--pki", default=Path("pki"), show_default=True,
                        type=click.Path(path_type=Path, file_okay=False),
                        help="PKI folder: own/ certificates (generated on first run), trusted/, rejected/.")
_secrets_opt = click.option("--secrets", default=Path("secrets.toml"), show_default=True, envvar="CELLWATCH_SECRETS",
                            type=click.Path(path_type=Path, dir_okay=False), help="Secrets file (owner-only).")
_log_opt = click.option("--log-level", default="INFO", show_default=True,
                        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))


def _logging(level: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cellwatch").setLevel(level.upper())


def _run_until_signal(main) -> None:  # noqa: ANN001
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)
    asyncio.run(runner())


@click.command("serve")
@_site_opt
@_pki_opt
@_secrets_opt
@click.option("--seed", "-s", default=1, show_default=True, type=click.IntRange(0), help="Random seed of the twin.")
@click.option("--speed", default=60.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Simulated seconds per real second (60 = one twin minute per second).")
@click.option("--start", help="UTC start of the twin (default: now, on the minute).")
@click.option("--preroll-h", default=11.0, show_default=True, type=click.FloatRange(min=0),
              help="Simulated hours run before serving, so every unit has a batch.")
@click.option("--endpoint", "endpoints", multiple=True, help="Serve only these OPC UA endpoint ids (repeatable).")
@click.option("--no-modbus", is_flag=True, help="Do not start the Modbus devices.")
@click.option("--fault-scale", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Multiplies the twin's fault rates (the demo raises them so there is always something to see).")
@click.option("--records", "records_db", type=click.Path(path_type=Path, dir_okay=False),
              help="Keep this records database current with the twin's batches, as the plant's MES/LIMS would "
                   "(batches, setpoint changes, offline results, harvests).")
@click.option("--backfill", type=click.Path(path_type=Path, file_okay=False),
              help="Write the preroll's telemetry into this historian folder (the plant's past, before the "
                   "connectors came up); only what is newer than the data already there.")
@_log_opt
def plant_serve(site_path: str | None, pki: Path, secrets: Path, seed: int, speed: float, start: str | None,
                preroll_h: float, endpoints: tuple[str, ...], no_modbus: bool, fault_scale: float,
                records_db: Path | None, backfill: Path | None, log_level: str) -> None:
    """Serve the digital twin over OPC UA (bioreactors) and Modbus TCP (cleanroom instruments)."""
    from plant.secrets import ensure_demo_secrets, server_users
    from plant.sim.live import LiveTwin
    from plant.sim.serve import PlantServers

    _logging(log_level)
    site = load_site_or_demo(site_path)
    opc_ids = [e.id for e in site.endpoints.values() if e.protocol == "opcua"]
    if unknown := set(endpoints) - set(opc_ids):
        raise click.UsageError(f"--endpoint: no OPC UA endpoint(s) {sorted(unknown)} in {site.source}; "
                               f"known: {opc_ids}")
    if ensure_demo_secrets(secrets, opc_ids):
        click.echo(f"generated {secrets} with random passwords (users 'ingest' = operator, 'engineer')")
    users = server_users(secrets)
    preroll = int(preroll_h * 60)
    try:
        t0 = datetime.fromisoformat(start).replace(tzinfo=timezone.utc, second=0, microsecond=0) if start else \
            datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=preroll)
    except ValueError:
        raise click.UsageError(f"--start: not an ISO date/time: {start!r} (e.g. 2025-01-06T08:00)") from None
    records = recorder = None
    if records_db is not None:
        from plant.records import Records
        from plant.sim.live_records import LiveRecorder, fresh_index_base

        records_db.parent.mkdir(parents=True, exist_ok=True)
        records = Records.open(records_db)
        twin = LiveTwin(site, seed, t0, fault_rate_scale=fault_scale,
                        index_base=fresh_index_base(records, site, seed))
        recorder = LiveRecorder(records, twin)
    else:
        twin = LiveTwin(site, seed, t0, fault_rate_scale=fault_scale)
    servers = PlantServers(site, twin, pki, users, modbus=not no_modbus, recorder=recorder)
    if endpoints:
        servers.opcua = {k: v for k, v in servers.opcua.items() if k in endpoints}
    after = None
    if backfill is not None:
        from plant.historian import Historian

        historian = Historian(backfill)
        after = bounds[1] if (bounds := historian.time_bounds()) is not None else None
    if recorder is not None:
        when = max(after or t0, t0)
        if closed := recorder.close_stale(when, "the live twin restarted: this batch was lost"):
            click.echo(f"{len(closed)} batch(es) of the twin's last run recorded as terminated")
    if backfill is not None:
        import polars as pl

        writer = historian.writer(max_rows=200_000, max_age_s=3600)
        count = 0

        def sink(frame: pl.DataFrame) -> None:
            nonlocal count
            if after is not None:
                frame = frame.filter(pl.col("ts") > after)
            writer.append(frame)
            count += frame.height

        try:
            servers.preroll(preroll, sink)
        finally:
            writer.close()
        click.echo(f"preroll: {preroll / 60:g} h of the plant's past, {count:,} samples written to {backfill}")
    else:
        servers.preroll(preroll)

    async def main(stop: asyncio.Event) -> None:
        await servers.start()
        click.echo(f"serving {len(servers.opcua)} OPC UA endpoint(s) and "
                   f"{len(servers.modbus.devices) if servers.modbus else 0} Modbus device(s); Ctrl-C stops")
        try:
            await servers.run(speed, stop)
        finally:
            await servers.stop()

    try:
        _run_until_signal(main)
    finally:
        if records is not None:
            records.close()


@click.command("ingest")
@_site_opt
@_pki_opt
@_secrets_opt
@click.option("--data", "-d", default=Path("data") / "plant", show_default=True, envvar="CELLWATCH_DATA",
              type=click.Path(path_type=Path, file_okay=False), help="Folder for historian/, spool/ and records.db.")
@click.option("--metrics-port", default=9108, show_default=True, type=click.IntRange(0, 65535),
              help="Prometheus /metrics and /health on 127.0.0.1 (0 = any free port).")
@click.option("--endpoint", "endpoints", multiple=True, help="Only these endpoint ids (repeatable; default all).")
@click.option("--flush-s", default=0.5, show_default=True, type=click.FloatRange(min=0.05),
              help="How often received samples are made durable in the spool.")
@_log_opt
def ingest(site_path: str | None, pki: Path, secrets: Path, data: Path, metrics_port: int,
           endpoints: tuple[str, ...], flush_s: float, log_level: str) -> None:
    """Run every connector of a site and write to the historian (store-and-forward, Prometheus metrics)."""
    from connectors.ingest import IngestService, IngestSettings
    from plant.historian import Historian
    from plant.records import Records

    _logging(log_level)
    site = load_site_or_demo(site_path)
    records = Records.open(data / "records.db")
    service = IngestService(site, Historian(data / "historian"), data / "spool", records, pki,
                            secrets if secrets.exists() else None,
                            IngestSettings(flush_s=flush_s, metrics_port=metrics_port), list(endpoints) or None)

    async def main(stop: asyncio.Event) -> None:
        await service.serve(stop)

    try:
        _run_until_signal(main)
    finally:
        records.close()
    click.echo(f"ingest stopped: {service.committed_total:,} samples committed, "
               f"{service.spool.depth:,} still buffered in {data / 'spool'}")
