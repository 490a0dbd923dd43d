"""Printable reports. The deviation report (PDF): record, timeline, trends, alarms, model drivers,
operator actions, signatures and the audit-trail excerpt, for QA review and the batch record.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402
from fpdf import FPDF  # noqa: E402

from plant.alarms.journal import AlarmJournal  # noqa: E402
from plant.deviations import Deviation, Deviations  # noqa: E402
from plant.historian import Historian  # noqa: E402

UTC = timezone.utc
_SUBST = {"≥": ">=", "≤": "<=", "→": "->", "–": "-", "—": "-", "×": "x", "’": "'", "“": '"', "”": '"', "…": "..."}


def _txt(value: object) -> str:
    """Text the PDF core fonts can show (latin-1); anything else becomes '?'."""
    s = "-" if value is None else (f"{value:%Y-%m-%d %H:%M:%S}" if isinstance(value, datetime) else str(value))
    for a, b in _SUBST.items():
        s = s.replace(a, b)
    return s.encode("latin-1", "replace").decode("latin-1")


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


@dataclass(frozen=True, slots=True)
class ReportWindow:
    """The data shown around the event: from `before` the start to `after` its end (or start)."""

    before: timedelta = timedelta(hours=2)
    after: timedelta = timedelta(hours=2)


class _Pdf(FPDF):
    def __init__(self, title: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self._title = title
        self.set_auto_page_break(auto=True, margin=15)
        self.set_margins(15, 15, 15)

    def header(self) -> None:
        self.set_font("Helvetica", "B", 9)
        self.cell(0, 5, _txt(self._title), new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", "", 8)
        self.cell(0, 5, f"page {self.page_no()}/{{nb}}", align="C")

    def section(self, text: str) -> None:
        self.ln(2)
        self.set_font("Helvetica", "B", 12)
        self.cell(0, 7, _txt(text), new_x="LMARGIN", new_y="NEXT")
        self.set_font("Helvetica", "", 9)

    def para(self, text: str) -> None:
        self.set_font("Helvetica", "", 9)
        self.multi_cell(0, 4.5, _txt(text), new_x="LMARGIN", new_y="NEXT")

    def grid(self, header: list[str], rows: list[list[object]], widths: list[float] | None = None) -> None:
        self.set_font("Helvetica", "", 7.5)
        if not rows:
            self.para("(none)")
            return
        with self.table(col_widths=widths, text_align="LEFT", line_height=3.8, first_row_as_headings=True) as t:
            r = t.row()
            for h in header:
                r.cell(_txt(h))
            for row in rows:
                r = t.row()
                for v in row:
                    r.cell(_txt(v))
        self.set_font("Helvetica", "", 9)


def render_deviation_report(deviation_id: str, out: str | Path, deviations: Deviations, historian: Historian,
                            journal: AlarmJournal, window: ReportWindow = ReportWindow()) -> Path:
    """Write the deviation report PDF to `out` (atomically) and return its path."""
    dev = deviations.get(deviation_id)
    start = dev.event_start_ts - window.before
    end = (dev.event_end_ts or dev.event_start_ts) + window.after
    site = deviations.site
    pdf = _Pdf(f"cellwatch deviation report {dev.deviation_id} - {dev.title}")
    pdf.alias_nb_pages()
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 9, _txt(f"Deviation {dev.deviation_id}"), new_x="LMARGIN", new_y="NEXT")
    pdf.para(f"{dev.title}\nGenerated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; data shown {start:%Y-%m-%d %H:%M} "
             f"to {end:%Y-%m-%d %H:%M} UTC.")
    _record(pdf, dev, deviations, site)
    pdf.section("Timeline")
    ev = deviations.events(dev.deviation_id)
    pdf.grid(["recorded (UTC)", "event time", "actor", "action", "state", "note"],
             [[r["ts"], r["data_ts"], r["actor"], r["action"],
               f"{r['from_state'] or ''} -> {r['to_state']}" if r["to_state"] else "", r["note"]]
              for r in ev.iter_rows(named=True)], [24, 24, 22, 20, 26, 64])
    _trends(pdf, dev, historian, journal, start, end)
    owners = [dev.owner] if dev.owner else []
    if site is not None and dev.owner in site.rooms:
        owners += [u.id for u in site.units_in_room(dev.owner)]
    jr = journal.read(start, end, owners=owners) if owners else journal.read(start, end).head(0)
    pdf.section("Alarms")
    alarms = jr.filter(pl.col("event").is_in(["ACTIVE", "CLEAR", "UNSUPPRESS", "SHELVE_EXPIRED"]))
    pdf.grid(["time (UTC)", "alarm", "priority", "event", "state", "value", "limit"],
             [[r["ts"], r["alarm_id"], r["priority"], r["event"], r["state"], _num(r["value"]), _num(r["limit"])]
              for r in alarms.head(60).iter_rows(named=True)], [28, 44, 18, 24, 24, 20, 22])
    if alarms.height > 60:
        pdf.para(f"... {alarms.height - 60} more alarm events in the window (see the alarm journal).")
    _drivers(pdf, jr)
    _actions(pdf, dev, jr, deviations, start, end)
    _signatures(pdf, dev, deviations)
    _audit(pdf, dev, deviations, jr)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pdf.output(str(tmp))
    tmp.replace(path)
    return path


def _record(pdf: _Pdf, dev: Deviation, deviations: Deviations, site: object) -> None:
    pdf.section("Record")
    where = dev.owner or "-"
    rooms = getattr(site, "rooms", {})
    if dev.owner in rooms:
        where += f" (grade {rooms[dev.owner].grade} room)"
    pdf.grid(["field", "value"], [
        ["state", dev.state], ["classification", dev.classification or "(not yet classified)"],
        ["source", dev.source], ["alarm", dev.alarm_id], ["tag", dev.tag], ["unit / room", where],
        ["event start (UTC)", dev.event_start_ts], ["event end (UTC)", dev.event_end_ts or "(ongoing / not cleared)"],
        ["opened", f"{_txt(dev.opened_ts)} by {dev.opened_by}"],
        ["closed", f"{_txt(dev.closed_ts)} by {dev.closed_by}" if dev.closed_ts else "-"],
    ], [45, 135])
    pdf.section("Batches affected")
    rows = []
    for b in dev.batches:
        try:
            rec = deviations.records.get_batch(b)
            rows.append([b, rec.unit, rec.recipe, rec.start_ts, rec.end_ts, rec.status, rec.disposition])
        except KeyError:
            rows.append([b, "?", "?", None, None, "?", "?"])
    pdf.grid(["batch (chain of identity)", "unit", "recipe", "start", "end", "status", "disposition"], rows,
             [40, 14, 26, 28, 28, 20, 24])
    pdf.section("Description, investigation and CAPA")
    for label, text in (("Description", dev.description), ("Root cause", dev.root_cause),
                        ("Impact assessment", dev.impact), ("CAPA", dev.capa)):
        pdf.set_font("Helvetica", "B", 9)
        pdf.cell(0, 5, label, new_x="LMARGIN", new_y="NEXT")
        pdf.para(text or "(not yet recorded)")


def _trends(pdf: _Pdf, dev: Deviation, historian: Historian, journal: AlarmJournal, start: datetime,
            end: datetime) -> None:
    pdf.section("Trends around the event")
    if not dev.tag:
        pdf.para("(no tag: a deviation opened by hand without a signal)")
        return
    tags = [dev.tag]
    state = f"{dev.owner}.OCC"
    data = historian.read(tags + [state], start, end)
    if data.filter(pl.col("tag") == dev.tag).height == 0:
        pdf.para(f"(no historian data for {dev.tag} in the window)")
        return
    limits = journal.read(start, end, owner=dev.owner).filter(pl.col("tag") == dev.tag)
    limits = limits.unique("alarm_id").select("alarm_id", "limit").sort("limit")
    has_state = data.filter(pl.col("tag") == state).height > 0
    fig, axes = plt.subplots(2 if has_state else 1, 1, figsize=(7.5, 4.2 if has_state else 3.2), sharex=True,
                             height_ratios=[3, 1] if has_state else None, squeeze=False)
    ax = axes[0][0]
    s = data.filter(pl.col("tag") == dev.tag).sort("ts")
    ax.plot(s["ts"].to_list(), s["value"].to_list(), lw=0.9, color="tab:blue", label=dev.tag)
    for alarm_id, lim in limits.iter_rows():
        ax.axhline(lim, ls="--", lw=0.8, color="tab:red" if "HH" in alarm_id or "LL" in alarm_id else "tab:orange",
                   label=f"{alarm_id.split(':')[-1]} {lim:g}")
    ax.axvspan(dev.event_start_ts, dev.event_end_ts or end, color="tab:red", alpha=0.08, label="excursion")
    ax.set_ylabel(dev.tag)
    ax.legend(fontsize=6, loc="upper right")
    if has_state:
        o = data.filter(pl.col("tag") == state).sort("ts")
        axes[1][0].step(o["ts"].to_list(), o["value"].to_list(), where="post", lw=0.9, color="tab:gray")
        axes[1][0].set_ylabel("in operation", fontsize=7)
        axes[1][0].set_yticks([0, 1])
    axes[-1][0].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=UTC))
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    buf.seek(0)
    pdf.image(buf, w=180)
    stats = s.filter((pl.col("ts") >= dev.event_start_ts) & (pl.col("ts") <= (dev.event_end_ts or end)))
    peak = stats["value"].max() if stats.height else None
    pdf.para(f"{dev.tag}: {s.height} samples in the window; peak during the excursion {_num(peak)}.")  # type: ignore[arg-type]


def _drivers(pdf: _Pdf, jr: pl.DataFrame) -> None:
    pdf.section("Model drivers")
    pred = jr.filter((pl.col("condition") == "PRED") & (pl.col("detail") != ""))
    rows = []
    for r in pred.iter_rows(named=True):
        d = json.loads(r["detail"])
        drivers = ", ".join(f"{name} ({w:+.3g})" for name, w in d.get("drivers", [])[:5])
        rows.append([r["ts"], r["owner"], _num(d.get("risk")), drivers or "-"])
    if not rows:
        pdf.para("No predictive (deviation model) alarm in the window.")
        return
    pdf.grid(["time (UTC)", "unit", "risk", "main drivers"], rows, [30, 18, 16, 116])


def _actions(pdf: _Pdf, dev: Deviation, jr: pl.DataFrame, deviations: Deviations, start: datetime,
             end: datetime) -> None:
    pdf.section("Operator actions")
    acts = jr.filter(pl.col("actor") != "system")
    rows = [[r["ts"], r["actor"], f"{r['event']} {r['alarm_id']}", r["reason"]] for r in acts.iter_rows(named=True)]
    for b in dev.batches:
        sp = deviations.records.setpoints(b).filter(
            (pl.col("ts") >= start) & (pl.col("ts") < end) & (pl.col("source") != "recipe"))
        rows += [[r["ts"], r["source"], f"setpoint {r['tag']} = {r['value']:g} ({b})", r["reason"]]
                 for r in sp.iter_rows(named=True)]
    rows.sort(key=lambda r: r[0])
    pdf.grid(["time (UTC)", "who", "action", "reason"], rows, [30, 26, 70, 54])


def _signatures(pdf: _Pdf, dev: Deviation, deviations: Deviations) -> None:
    pdf.section("Electronic signatures")
    users = deviations.users
    sigs = users.signatures("deviation", dev.deviation_id) if users is not None else []
    if not sigs:
        pdf.para("None yet: the deviation is closed by a QA e-signature (meaning 'closed').")
        return
    valid = deviations.signature_valid(dev.deviation_id)
    pdf.grid(["signature", "meaning", "record hash", "reason"],
             [[s.manifest(), s.meaning, s.record_hash[:16] + "...", s.reason] for s in sigs], [70, 18, 36, 56])
    pdf.para("Signed content unchanged since signing: " + ("yes" if valid else "NO - the record changed after "
                                                            "signing"))


def _audit(pdf: _Pdf, dev: Deviation, deviations: Deviations, jr: pl.DataFrame) -> None:
    pdf.section("Audit trail excerpt")
    trail = deviations.audit
    entries = trail.entries(entity="deviation", entity_id=dev.deviation_id)
    alarm_ids = set(jr.filter(pl.col("actor") != "system")["alarm_id"].to_list())
    if alarm_ids:
        entries = pl.concat([entries, trail.entries(entity="alarm").filter(pl.col("entity_id").is_in(list(alarm_ids)))])
    entries = entries.sort("seq")
    pdf.grid(["seq", "time (UTC)", "actor", "action", "entity", "reason", "hash"],
             [[r["seq"], r["ts"], r["actor"], r["action"], r["entity_id"], (r["reason"] or "")[:80],
               r["hash"][:12]] for r in entries.iter_rows(named=True)], [10, 28, 24, 26, 30, 44, 18])
    check = trail.verify()
    pdf.para(f"Audit trail chain verified: {'OK' if check.ok else 'FAILED'} ({check.entries} entries"
             + ("" if check.ok else "; " + "; ".join(check.problems[:3])) + ").")
