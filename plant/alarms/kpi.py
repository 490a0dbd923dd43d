"""Alarm-system KPIs from the journal (ISA-18.2 section 16, EEMUA 191 benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

# ISA-18.2 / EEMUA 191 targets per operator: ~1 alarm per 10 min is acceptable, 2 manageable;
# more than 10 per 10 min is a flood; an alarm active for more than 24 h is stale (standing).
ACCEPTABLE_PER_10MIN = 1.0
MANAGEABLE_PER_10MIN = 2.0
FLOOD_PER_10MIN = 10
STALE_AFTER = timedelta(hours=24)
CHATTER_COUNT, CHATTER_WINDOW = 3, timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Flood:
    start: datetime
    end: datetime
    alarms: int


@dataclass(frozen=True, slots=True)
class AlarmKpis:
    """Alarm-load and alarm-quality figures for one period."""

    start: datetime
    end: datetime
    operators: int
    annunciated: int
    per_operator_per_10min: float  # average
    peak_per_10min: int  # per operator, busiest 10-minute window
    pct_windows_acceptable: float  # 10-min windows with <= 1 alarm per operator
    pct_time_in_flood: float
    floods: tuple[Flood, ...]
    chattering: tuple[str, ...]  # >= 3 annunciations within 60 s
    stale: tuple[str, ...]  # active for more than 24 h (or still active that long at the period end)
    top: tuple[tuple[str, int], ...]  # most frequent alarms
    top10_share: float  # % of annunciations from the 10 most frequent alarms
    by_priority: tuple[tuple[str, int], ...]
    shelved: int
    acked: int
    median_ack_s: float | None

    def rows(self) -> list[tuple[str, str, str]]:
        """(KPI, value, target) rows for a table."""
        return [
            ("period", f"{self.start:%Y-%m-%d %H:%M} .. {self.end:%Y-%m-%d %H:%M} UTC", ""),
            ("operators", str(self.operators), ""),
            ("alarms annunciated", str(self.annunciated), ""),
            ("alarms per operator per 10 min (mean)", f"{self.per_operator_per_10min:.2f}",
             f"<= {ACCEPTABLE_PER_10MIN:g} acceptable, <= {MANAGEABLE_PER_10MIN:g} manageable"),
            ("peak alarms per operator in 10 min", str(self.peak_per_10min), f"< {FLOOD_PER_10MIN}"),
            ("10-min windows with <= 1 alarm", f"{self.pct_windows_acceptable:.1f} %", ">= 90 %"),
            ("time in flood (> 10 per 10 min)", f"{self.pct_time_in_flood:.2f} %", "< 1 %"),
            ("flood periods", str(len(self.floods)), ""),
            ("chattering alarms (>= 3 in 60 s)", str(len(self.chattering)), "0"),
            ("stale alarms (active > 24 h)", str(len(self.stale)), "0"),
            ("share of the 10 most frequent alarms", f"{self.top10_share:.1f} %", "< 20 %"),
            ("priority split (low/medium/high/critical)",
             "/".join(str(dict(self.by_priority).get(p, 0)) for p in ("low", "medium", "high", "critical")),
             "~80/15/5 % low/medium/high"),
            ("shelve actions", str(self.shelved), ""),
            ("median time to acknowledge",
             "-" if self.median_ack_s is None else f"{self.median_ack_s / 60:.1f} min", ""),
        ]


def compute_kpis(journal: pl.DataFrame, operators: int = 1, start: datetime | None = None,
                 end: datetime | None = None) -> AlarmKpis:
    """KPIs of a journal frame (JOURNAL_SCHEMA) over [start, end) (default: the journal's span)."""
    if operators < 1:
        raise ValueError(f"operators must be >= 1, got {operators}")
    if journal.height == 0 and (start is None or end is None):
        raise ValueError("the alarm journal is empty: run `cellwatch alarms run` first")
    start = start or journal["ts"].min()  # type: ignore[assignment]
    end = end or journal["ts"].max() + timedelta(microseconds=1)  # type: ignore[operator]
    j = journal.filter((pl.col("ts") >= start) & (pl.col("ts") < end))
    ann = j.filter(pl.col("annunciated")).sort("ts")
    # 10-minute load per operator on the full grid (empty windows count as 0)
    g0 = start.replace(minute=start.minute - start.minute % 10, second=0, microsecond=0)  # type: ignore[union-attr]
    grid = pl.DataFrame({"ts": pl.datetime_range(g0, end, "10m", closed="left", eager=True,
                                                  time_zone="UTC").dt.cast_time_unit("us")})
    per = ann.with_columns(pl.col("ts").dt.truncate("10m")).group_by("ts").len()
    load = grid.join(per, on="ts", how="left").with_columns(pl.col("len").fill_null(0)).sort("ts")
    rate = load["len"].cast(pl.Float64) / operators
    floods = _floods(load.with_columns(rate=rate))
    chattering = _chatter(ann)
    durations = _active_durations(j, end)
    stale = tuple(sorted(durations.filter(pl.col("dur") > STALE_AFTER)["alarm_id"].unique().to_list()))
    top_df = ann.group_by("alarm_id").len().sort(["len", "alarm_id"], descending=[True, False])
    top = tuple((a, int(n)) for a, n in top_df.head(10).iter_rows())
    acks = _ack_times(j)
    return AlarmKpis(
        start=start, end=end, operators=operators, annunciated=ann.height,  # type: ignore[arg-type]
        per_operator_per_10min=float(rate.mean() or 0.0), peak_per_10min=int(load["len"].max() or 0) // operators,
        pct_windows_acceptable=100.0 * float((rate <= ACCEPTABLE_PER_10MIN).mean() or 0.0),
        pct_time_in_flood=100.0 * float((rate > FLOOD_PER_10MIN).mean() or 0.0),
        floods=floods, chattering=chattering, stale=stale, top=top,
        top10_share=100.0 * sum(n for _, n in top) / ann.height if ann.height else 0.0,
        by_priority=tuple(ann.group_by("priority").len().sort("priority").iter_rows()),
        shelved=j.filter(pl.col("event") == "SHELVE").height, acked=j.filter(pl.col("event") == "ACK").height,
        median_ack_s=acks,
    )


def _floods(load: pl.DataFrame) -> tuple[Flood, ...]:
    """Consecutive 10-minute windows above the flood rate, merged into periods."""
    out: list[Flood] = []
    for ts, n, rate in load.select("ts", "len", "rate").iter_rows():
        if rate <= FLOOD_PER_10MIN:
            continue
        end = ts + timedelta(minutes=10)
        if out and out[-1].end == ts:
            out[-1] = Flood(out[-1].start, end, out[-1].alarms + n)
        else:
            out.append(Flood(ts, end, n))
    return tuple(out)


def _chatter(ann: pl.DataFrame) -> tuple[str, ...]:
    """Alarms annunciated CHATTER_COUNT times within CHATTER_WINDOW."""
    k = CHATTER_COUNT - 1
    hits = ann.select("alarm_id", "ts").sort("alarm_id", "ts").with_columns(
        back=pl.col("ts").shift(k).over("alarm_id")).filter(pl.col("ts") - pl.col("back") <= CHATTER_WINDOW)
    return tuple(sorted(hits["alarm_id"].unique().to_list()))


def _active_durations(j: pl.DataFrame, end: datetime) -> pl.DataFrame:
    """How long each activation lasted (to its CLEAR, or to `end` when still active)."""
    cond = j.filter(pl.col("event").is_in(["ACTIVE", "CLEAR"])).sort("alarm_id", "ts")
    nxt = cond.with_columns(next_ts=pl.col("ts").shift(-1).over("alarm_id"),
                            next_ev=pl.col("event").shift(-1).over("alarm_id"))
    act = nxt.filter(pl.col("event") == "ACTIVE").with_columns(
        stop=pl.when(pl.col("next_ev") == "CLEAR").then(pl.col("next_ts")).otherwise(pl.lit(end)))
    return act.select("alarm_id", dur=pl.col("stop") - pl.col("ts"))


def _ack_times(j: pl.DataFrame) -> float | None:
    """Median seconds from an annunciation to the next ACK of the same alarm."""
    ev = j.filter(pl.col("annunciated") | (pl.col("event") == "ACK")).sort("alarm_id", "ts")
    ev = ev.with_columns(next_ev=pl.col("event").shift(-1).over("alarm_id"),
                         next_ts=pl.col("ts").shift(-1).over("alarm_id"))
    d = ev.filter(pl.col("annunciated") & (pl.col("next_ev") == "ACK"))
    if d.height == 0:
        return None
    return float((d["next_ts"] - d["ts"]).dt.total_seconds().median())  # type: ignore[arg-type]
