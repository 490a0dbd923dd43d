"""`cellwatch alarms ...` and `cellwatch deviations ...`: replay history through the alarm engine,
alarm KPIs, and the deviation register (list, show, lifecycle transitions, PDF report).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import click

from cellwatch.auth_cli import Secrets, data_option, refusals, stdin_option
from plant.alarms import AlarmEngine, AlarmJournal, windows_from_batches
from plant.alarms.kpi import compute_kpis
from plant.alarms.replay import replay
from plant.audit import AuditTrail
from plant.deviations import CLASSIFICATIONS, STATES, Deviations
from plant.historian import Historian
from plant.records import Records
from plant.site import load_site_or_demo
from plant.users import Users

UTC = timezone.utc
_data = data_option  # the folder of records.db and historian/ (as `cellwatch users`/`audit`)
_site = click.option("--site", "site_path", type=click.Path(dir_okay=False), help="Site file (default: the demo site).")


@dataclass
class _Store:
    records: Records
    audit: AuditTrail
    users: Users
    journal: AlarmJournal
    deviations: Deviations
    historian: Historian


@contextmanager
def _store(data: Path, site_path: str | None) -> Iterator[_Store]:
    if not (data / "records.db").exists():
        raise click.ClickException(f"{data}: no records.db here; run `cellwatch simulate --out {data}` first")
    site = load_site_or_demo(site_path)
    records = Records.open(data / "records.db")
    try:
        audit = AuditTrail(records)
        users = Users(records, audit)
        yield _Store(records, audit, users, AlarmJournal(records), Deviations(records, audit, users, site),
                     Historian(data / "historian"))
    finally:
        records.close()


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)])


# ------------------------------------------------------------------------------------------- alarms


@click.group("alarms")
def alarms_group() -> None:
    """Alarm management (ISA-18.2): replay history through the engine, KPIs."""


@alarms_group.command("run")
@_data
@_site
@click.option("--chunk-hours", default=6.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Data evaluated per step.")
def alarms_run(data: Path, site_path: str | None, chunk_hours: float) -> None:
    """Replay the stored telemetry through the alarm engine; action-level excursions open deviations.

    A second run resumes where the last one stopped (alarm states restored from the journal).
    """
    from datetime import timedelta

    with _store(data, site_path) as s:
        engine = AlarmEngine(s.deviations.site, journal=s.journal, audit=s.audit, users=s.users,  # type: ignore[arg-type]
                             unit_windows=windows_from_batches(s.records.batches()),
                             listeners=[s.deviations.on_alarm])
        since = s.journal.replayed_until()
        if since is not None:
            engine.restore(s.journal.read())
        bounds = s.historian.time_bounds()
        if bounds is None:
            raise click.ClickException(f"{data}: the historian holds no telemetry")
        end = bounds[1] + timedelta(microseconds=1)
        if since is not None and since >= end:
            click.echo(f"nothing new: the alarm journal already covers the data up to {bounds[1]:%Y-%m-%d %H:%M} UTC")
            return
        before = len(s.deviations.list())
        stats = replay(s.historian, engine, since, end, chunk=timedelta(hours=chunk_hours))
        if stats.start is not None and stats.end is not None:
            s.journal.record_replay(datetime.now(UTC), stats.start, stats.end, stats.samples, stats.events)
        opened = len(s.deviations.list()) - before
        click.echo(f"{stats.samples:,} samples in {stats.seconds:.1f} s ({stats.rate:,.0f} samples/s): "
                   f"{stats.events} alarm events, {stats.annunciated} alarms annunciated, {opened} deviations opened")


@alarms_group.command("kpi")
@_data
@click.option("--operators", default=1, show_default=True, type=click.IntRange(1), help="Operator consoles.")
def alarms_kpi(data: Path, operators: int) -> None:
    """Alarm KPIs from the journal: load per operator per 10 min, floods, chattering, stale, bad actors."""
    with _store(data, None) as s:
        k = compute_kpis(s.journal.read(), operators)
    click.echo(_table(k.rows(), ("KPI", "value", "target (ISA-18.2 / EEMUA 191)")))
    if k.top:
        click.echo("\nmost frequent alarms:\n" + _table([(a, str(n)) for a, n in k.top], ("alarm", "count")))
    for label, items in (("chattering", k.chattering), ("stale", k.stale)):
        if items:
            click.echo(f"\n{label}: " + ", ".join(items))
    if k.floods:
        click.echo("\nfloods:\n" + _table([(f"{f.start:%Y-%m-%d %H:%M}", f"{f.end:%H:%M}", str(f.alarms))
                                           for f in k.floods], ("start (UTC)", "end", "alarms")))


# --------------------------------------------------------------------------------------- deviations


@click.group("deviations")
def deviations_group() -> None:
    """GMP deviations: list, show, move through open -> investigation -> capa -> closed, report."""


@deviations_group.command("list")
@_data
@click.option("--state", type=click.Choice(STATES), help="Only deviations in this state.")
def dev_list(data: Path, state: str | None) -> None:
    """The deviation register."""
    with _store(data, None) as s:
        df = s.deviations.list(state)
    if df.height == 0:
        click.echo("no deviations")
        return
    rows = [(r["deviation_id"], r["state"], r["classification"] or "-", f"{r['event_start_ts']:%Y-%m-%d %H:%M}",
             r["title"][:60], r["batches"] or "-") for r in df.iter_rows(named=True)]
    click.echo(_table(rows, ("id", "state", "class", "event (UTC)", "title", "batches")))


@deviations_group.command("show")
@click.argument("deviation_id")
@_data
def dev_show(deviation_id: str, data: Path) -> None:
    """One deviation: record, linked batches and timeline."""
    with _store(data, None) as s:
        dev = s.deviations.get(deviation_id)
        events = s.deviations.events(deviation_id)
    for name in ("deviation_id", "state", "classification", "title", "description", "source", "alarm_id", "owner",
                 "event_start_ts", "event_end_ts", "root_cause", "impact", "capa", "opened_by", "closed_by",
                 "signature_id"):
        click.echo(f"{name:>15}: {getattr(dev, name) if getattr(dev, name) not in (None, '') else '-'}")
    click.echo(f"{'batches':>15}: {', '.join(dev.batches) or '-'}\n")
    click.echo(_table([(f"{r['ts']:%Y-%m-%d %H:%M:%S}", r["actor"], r["action"],
                        f"{r['from_state'] or ''}->{r['to_state'] or ''}", r["note"]) for r in events.iter_rows(named=True)],
                      ("recorded (UTC)", "actor", "action", "state", "note")))


@deviations_group.command("transition")
@click.argument("deviation_id")
@click.option("--to", "to", required=True, type=click.Choice(STATES[1:]), help="The next state.")
@click.option("--as", "actor", required=True, metavar="USER", help="Who does it (authenticates with their password).")
@click.option("--reason", "-r", required=True, help="Why (goes on the audit trail).")
@click.option("--classification", type=click.Choice(CLASSIFICATIONS))
@click.option("--root-cause")
@click.option("--impact", help="Impact assessment (product, batches, other rooms).")
@click.option("--capa", help="Corrective and preventive actions.")
@_data
@stdin_option
@refusals
def dev_transition(deviation_id: str, to: str, actor: str, reason: str, classification: str | None,
                   root_cause: str | None, impact: str | None, capa: str | None, data: Path,
                   password_stdin: bool) -> None:
    """Move a deviation along its lifecycle; closing (QA) is an e-signature with the same password."""
    fields = {k: v for k, v in (("classification", classification), ("root_cause", root_cause),
                                ("impact", impact), ("capa", capa)) if v is not None}
    with _store(data, None) as s:
        s.deviations.get(deviation_id)  # an unknown id fails before the password prompt
        password = Secrets(password_stdin).get(f"password of {actor}")
        session = s.users.authenticate(actor, password)
        dev = s.deviations.transition(deviation_id, to, session, reason, password=password, **fields)
    signed = f", signed (signature {dev.signature_id})" if dev.signature_id else ""
    click.echo(f"{dev.deviation_id}: {dev.state}{signed}")


@deviations_group.command("report")
@click.argument("deviation_id")
@click.option("--out", "-o", type=click.Path(path_type=Path, dir_okay=False),
              help="PDF file (default: <data>/reports/<id>.pdf).")
@_data
@_site
def dev_report(deviation_id: str, out: Path | None, data: Path, site_path: str | None) -> None:
    """Write the deviation report (PDF): timeline, trends, alarms, drivers, actions, signatures, audit trail."""
    from dashboards.reports import render_deviation_report

    t0 = time.perf_counter()
    with _store(data, site_path) as s:
        path = render_deviation_report(deviation_id, out or data / "reports" / f"{deviation_id}.pdf",
                                       s.deviations, s.historian, s.journal)
    click.echo(f"{path} ({path.stat().st_size / 1024:.0f} KiB, {time.perf_counter() - t0:.1f} s)", file=sys.stdout)
