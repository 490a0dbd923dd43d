"""What the process pages show, as small typed functions over the plant's stores (no Streamlit here)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import polars as pl
from sqlalchemy import func, select

from dashboards.context import Plant, Source
from plant.alarms.journal import JOURNAL_SCHEMA, journal_table
from plant.records import BatchRecord
from plant.site import ANNEX1_PARTICLE_LIMITS, Recipe, Site, Tag

UTC = timezone.utc
ACTIVE_STATES = ("UNACK", "ACKED", "RTN_UNACK", "SHELVED")  # on the operator's list (ISA-18.2 B, C, D, E)
PRIORITIES = ("critical", "high", "medium", "low")
STALE_AFTER = timedelta(minutes=5)  # five missed one-minute samples, as the alarm engine's default
LATEST_WINDOW = timedelta(hours=1)  # how far back "the current value" may come from
OK, ALERT, ACTION, BAD, STALE, NO_DATA = "ok", "alert", "action", "bad", "stale", "no data"
_SEVERITY = {OK: 0, NO_DATA: 1, STALE: 2, BAD: 2, ALERT: 3, ACTION: 4}


@dataclass(frozen=True, slots=True)
class Reading:
    """A tag's newest value with its quality, judged against the tag's limits."""

    tag: str
    short: str
    uom: str
    value: float | None
    ts: datetime | None
    quality: str
    status: str  # ok | alert | action | bad | stale | no data


@dataclass(frozen=True, slots=True)
class UnitView:
    """One bioreactor now: batch, phase, culture day, key readings and alarm counts."""

    unit: str
    room: str
    kind: str
    batch_id: str | None
    recipe: str | None
    phase: str  # idle | activation | transduction | expansion | harvest | running (no batch record)
    culture_day: float | None
    harvest_due: datetime | None
    readings: tuple[Reading, ...]
    alarms: dict[str, int] = field(default_factory=dict)  # priority -> active alarms

    @property
    def status(self) -> str:
        return worst(r.status for r in self.readings) if self.batch_id or self.phase != "idle" else OK


@dataclass(frozen=True, slots=True)
class RoomView:
    """One graded room now: state, readings against limits (particles against Annex 1) and alarms."""

    room: str
    name: str
    grade: str
    dp_setpoint_pa: float
    in_operation: bool | None
    readings: tuple[Reading, ...]
    alarms: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return worst(r.status for r in self.readings)


def worst(statuses: Iterable[str]) -> str:
    """The most severe of several statuses (ok when there are none)."""
    return max(statuses, key=lambda s: _SEVERITY[s], default=OK)


def limit_status(tag: Tag, value: float | None) -> str:
    """ok, alert or action for a value against the tag's alert/action limits (no data: None)."""
    if value is None:
        return NO_DATA
    if (tag.action_high is not None and value > tag.action_high) or \
            (tag.action_low is not None and value < tag.action_low):
        return ACTION
    if (tag.alert_high is not None and value > tag.alert_high) or \
            (tag.alert_low is not None and value < tag.alert_low):
        return ALERT
    return OK


def has_limits(tag: Tag) -> bool:
    return any(v is not None for v in (tag.alert_low, tag.alert_high, tag.action_low, tag.action_high))


def phase_of(recipe: Recipe | None, culture_day: float | None) -> str:
    """Process phase on a culture day by the master recipe's schedule (as the twin's live status)."""
    if culture_day is None:
        return "idle"
    if recipe is None:
        return "running"
    if culture_day < recipe.transduction_day:
        return "activation"
    if culture_day < recipe.feed_start_day:
        return "transduction"
    return "harvest" if culture_day >= recipe.harvest_day - 2 / 24 else "expansion"


# ------------------------------------------------------------------------------------------ the plant clock

def plant_now(plant: Plant, wall: datetime | None = None) -> datetime | None:
    """Data time of the newest stored sample (at most wall-clock now); None when there is no telemetry.

    The historian's layout is one folder per UTC day (`date=YYYY-MM-DD`), so only the newest day is read.
    """
    days = sorted(p.name for p in plant.historian.root.glob("date=*") if p.is_dir())
    for name in reversed(days[-3:]):  # an empty newest folder (a writer just created it) falls back a day
        day = datetime.fromisoformat(name.removeprefix("date=")).replace(tzinfo=UTC)
        newest = _newest_in_day(plant, day)
        if newest is not None:
            return min(newest, wall) if wall is not None else newest
    return None


def _newest_in_day(plant: Plant, day: datetime) -> datetime | None:
    """The newest sample time of one day folder, from the Parquet footers' statistics (a file's is read once:
    files are written whole and never changed), else by a scan of the folder."""
    try:
        files = plant.historian._live_files(day, day + timedelta(days=1))  # noqa: SLF001 - the day's live files
        got = [_file_max_ts(str(f), f.stat().st_size) for f in files]
    except (OSError, AttributeError):  # a compaction removed a file meanwhile: fall back to a scan
        got = [None]
    if got and all(g is not None for g in got):
        return max(got)  # type: ignore[type-var]
    out = plant.historian.scan(start=day, end=day + timedelta(days=1)).select(pl.max("ts")).collect()
    return out.item() if out.height else None


@functools.lru_cache(maxsize=4096)
def _file_max_ts(path: str, size: int) -> datetime | None:
    """Largest `ts` of a Parquet file by its row-group statistics (None when a statistic is missing)."""
    import pyarrow.parquet as pq

    md = pq.read_metadata(path)
    col = md.schema.names.index("ts")
    best = None
    for i in range(md.num_row_groups):
        stats = md.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max:
            return None
        hi = stats.max
        hi = hi.replace(tzinfo=UTC) if hi.tzinfo is None else hi.astimezone(UTC)
        best = hi if best is None or hi > best else best
    return best


# ------------------------------------------------------------------------------------------ readings

def latest(plant: Plant, tags: Sequence[str], now: datetime, window: timedelta = LATEST_WINDOW) -> pl.DataFrame:
    """Newest sample per tag in (now - window, now]: columns tag, ts, value, quality."""
    if not tags:
        return pl.DataFrame(schema={"tag": pl.String(), "ts": pl.Datetime("us", "UTC"), "value": pl.Float64(),
                                    "quality": pl.String()})
    # The time window is pushed into the scan; the tag filter is not: polars 2.1 evaluates a pushed-down
    # `is_in` over a long tag list about 10x slower (180 ms vs 15 ms on a live day) than the same filter in memory.
    frame = plant.historian.scan(None, now - window, now + timedelta(microseconds=1)).select(
        "tag", "ts", "value", "quality").collect()
    return (frame.filter(pl.col("tag").is_in(list(tags))).sort("tag", "ts")
            .group_by("tag", maintain_order=True).last().with_columns(pl.col("quality").cast(pl.String)))


def readings(plant: Plant, tags: Sequence[Tag], now: datetime, frame: pl.DataFrame | None = None) -> list[Reading]:
    """Readings of tags at `now` (frame: a `latest` result to reuse), each judged against its limits."""
    frame = latest(plant, [t.name for t in tags], now) if frame is None else frame
    rows = {r[0]: r for r in frame.iter_rows()}
    out = []
    for t in tags:
        row = rows.get(t.name)
        if row is None:
            out.append(Reading(t.name, t.short, t.uom, None, None, "MISSING", NO_DATA))
            continue
        _, ts, value, quality = row
        if quality not in ("GOOD", "UNCERTAIN") or value is None:
            status = BAD
        elif now - ts > (timedelta(seconds=t.stale_s) if t.stale_s else STALE_AFTER):
            status = STALE
        else:
            status = limit_status(t, value)
        out.append(Reading(t.name, t.short, t.uom, value, ts, quality, status))
    return out


# ------------------------------------------------------------------------------------------ overview

def key_tags(site: Site, owner: str) -> list[Tag]:
    """The tags of a unit or room with alarm limits: what the overview puts against its bands."""
    return [t for t in site.unit_tags(owner) if has_limits(t) or t.annex1]


def running_batches(plant: Plant, now: datetime) -> dict[str, BatchRecord]:
    """Per unit, the batch running at `now` (started, not ended); the newest if several."""
    out: dict[str, BatchRecord] = {}
    for b in plant.records.batches_active_at(now):
        out[b.unit] = b
    return out


def alarm_counts(states: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Per owner, the number of alarms on the list by priority (from `alarm_states`)."""
    active = states.filter(pl.col("state").is_in(ACTIVE_STATES) & (pl.col("state") != "SHELVED"))
    out: dict[str, dict[str, int]] = {}
    for owner, prio, n in active.group_by("owner", "priority").len().iter_rows():
        out.setdefault(owner, {})[prio] = n
    return out


def _unit_tags(site: Site) -> dict[str, list[Tag]]:
    return {u: key_tags(site, u) for u in site.units}


def _room_tags(site: Site) -> dict[str, list[Tag]]:
    return {r: [t for t in site.unit_tags(r) if t.short != "OCC"] for r in site.rooms}


def _occ_tags(site: Site) -> dict[str, str]:
    return {r: f"{r}.OCC" for r in site.rooms if f"{r}.OCC" in site.tags}


def snapshot(plant: Plant, now: datetime, states: pl.DataFrame | None = None) -> tuple[list[UnitView], list[RoomView]]:
    """Every unit and every room at `now`, from one read of the newest values."""
    site = plant.site
    names = [t.name for tags in (*_unit_tags(site).values(), *_room_tags(site).values()) for t in tags]
    frame = latest(plant, names + list(_occ_tags(site).values()), now)
    states = alarm_states(plant) if states is None else states
    return unit_views(plant, now, states, frame), room_views(plant, now, states, frame)


def unit_views(plant: Plant, now: datetime, states: pl.DataFrame | None = None,
               frame: pl.DataFrame | None = None) -> list[UnitView]:
    """Every unit of the site at `now` (frame: a `latest` result holding their key tags)."""
    site = plant.site
    tags = _unit_tags(site)
    if frame is None:
        frame = latest(plant, [t.name for ts in tags.values() for t in ts], now)
    batches = running_batches(plant, now)
    counts = alarm_counts(alarm_states(plant) if states is None else states)
    out = []
    for unit in site.units.values():
        b = batches.get(unit.id)
        reads = readings(plant, tags[unit.id], now, frame)
        recipe = site.recipes.get(b.recipe) if b else None
        day = (now - b.start_ts).total_seconds() / 86400 if b else None
        fresh = any(r.ts is not None and now - r.ts <= STALE_AFTER for r in reads)
        phase = phase_of(recipe, day) if b else ("running" if fresh else "idle")
        due = b.start_ts + timedelta(days=recipe.harvest_day) if b and recipe else (b.planned_end_ts if b else None)
        out.append(UnitView(unit.id, unit.room, unit.kind, b.batch_id if b else None, b.recipe if b else None,
                            phase, day, due, tuple(reads), counts.get(unit.id, {})))
    return out


def room_views(plant: Plant, now: datetime, states: pl.DataFrame | None = None,
               frame: pl.DataFrame | None = None) -> list[RoomView]:
    """Every room of the site at `now`, by grade (A first) (frame: a `latest` result holding their tags)."""
    site = plant.site
    tags, occ = _room_tags(site), _occ_tags(site)
    if frame is None:
        frame = latest(plant, [t.name for ts in tags.values() for t in ts] + list(occ.values()), now)
    occ_value = {tag: value for tag, _, value, _ in frame.filter(pl.col("tag").is_in(list(occ.values()))).iter_rows()}
    counts = alarm_counts(alarm_states(plant) if states is None else states)
    out = []
    for room in sorted(site.rooms.values(), key=lambda r: (r.grade, r.id)):
        v = occ_value.get(occ.get(room.id, ""))
        out.append(RoomView(room.id, room.name, room.grade, room.dp_setpoint_pa, None if v is None else v >= 0.5,
                            tuple(readings(plant, tags[room.id], now, frame)), counts.get(room.id, {})))
    return out


# ------------------------------------------------------------------------------------------ trends

def batch_window(batch: BatchRecord, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of a batch's data: its end, or `now` while it runs."""
    end = batch.end_ts or max(now, batch.start_ts + timedelta(minutes=1))
    return batch.start_ts, end + timedelta(minutes=1)


def trend(src: Source, tags: Sequence[str], start: datetime, end: datetime, points: int = 360,
          agg: str = "mean") -> pl.DataFrame:
    """`agg` per bucket (about `points` buckets) of tags in [start, end): ts, tag, value."""
    minutes = max(1, int((end - start).total_seconds() / 60 / points))
    out = src.historian.resample(list(tags), start, end, every=f"{minutes}m", agg=agg)
    return out.select("ts", "tag", "value")


def bands(tag: Tag) -> dict[str, float | None]:
    """A tag's alert/action limits and PAR, as named values for a chart."""
    return {"action_low": tag.action_low, "alert_low": tag.alert_low, "alert_high": tag.alert_high,
            "action_high": tag.action_high, "par_low": tag.par[0] if tag.par else None,
            "par_high": tag.par[1] if tag.par else None}


def offline(src: Source, batch_id: str) -> pl.DataFrame:
    """Offline samples of a batch: ts, analyte, value, unit, method."""
    return src.records.offline_results(batch_id).drop("batch_id")


def batch_choices(plant: Plant, now: datetime, limit: int = 60) -> list[tuple[BatchRecord, str]]:
    """(batch, source name): running batches first, then the most recent others, live plant before history."""
    running = sorted(running_batches(plant, now).values(), key=lambda b: b.unit)
    out, seen = [(b, "live") for b in running], {b.batch_id for b in running}
    for src in plant.sources():
        recent = src.records.batches().sort("start_ts", descending=True).head(limit)
        for row in recent.iter_rows(named=True):
            if row["batch_id"] not in seen:
                seen.add(row["batch_id"])
                out.append((BatchRecord(**row), src.name))
    return out


# ------------------------------------------------------------------------------------------ alarms

def alarm_states(plant: Plant) -> pl.DataFrame:
    """Each alarm's newest journal entry (JOURNAL_SCHEMA): its ISA-18.2 state now."""
    t = journal_table
    newest = select(func.max(t.c.id)).group_by(t.c.alarm_id).scalar_subquery()
    cols = [t.c[n] if n != "limit" else t.c.limit_value.label("limit") for n in JOURNAL_SCHEMA]
    with plant.records.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(*cols).where(t.c.id.in_(newest)).order_by(t.c.ts.desc()))]
    return pl.DataFrame(rows, schema=JOURNAL_SCHEMA, orient="row")


def alarm_list(states: pl.DataFrame) -> pl.DataFrame:
    """Alarms on the operator's list, most urgent first: unacknowledged, then by priority and time."""
    rank = {p: i for i, p in enumerate(PRIORITIES)}
    return (states.filter(pl.col("state").is_in(ACTIVE_STATES))
            .with_columns(_u=pl.col("state") != "UNACK",
                          _p=pl.col("priority").replace_strict(rank, default=len(rank), return_dtype=pl.Int32))
            .sort("_u", "_p", pl.col("ts"), descending=[False, False, True])
            .select("alarm_id", "state", "priority", "owner", "tag", "condition", "level", "value", "limit", "ts",
                    "actor", "reason"))


def particle_limits(grade: str, size: str) -> tuple[float | None, float | None]:
    """(at rest, in operation) Annex 1 limits per m3 for a grade and particle size ("0.5" or "5.0")."""
    i = 0 if size == "0.5" else 1
    lim = ANNEX1_PARTICLE_LIMITS[grade]
    return lim["at_rest"][i], lim["in_operation"][i]


def setpoint_steps(src: Source, tags: Sequence[str], start: datetime, end: datetime) -> pl.DataFrame:
    """Setpoints as steps in [start, end): logged only on change, so the newest value is repeated at `end`."""
    raw = src.historian.read(list(tags), start - timedelta(hours=1), end).filter(pl.col("value").is_not_null())
    raw = raw.select("ts", "tag", "value").with_columns(pl.col("ts").clip(start, None))
    tail = raw.group_by("tag").last().with_columns(ts=pl.lit(end - timedelta(minutes=1), pl.Datetime("us", "UTC")))
    return pl.concat([raw, tail.select(raw.columns)]).sort("tag", "ts")


# ------------------------------------------------------------------------------------------ cleanroom

def particle_tags(site: Site) -> tuple[str, ...]:
    """The Annex 1 particle tags of every room."""
    return tuple(t.name for t in site.tags.values() if t.annex1)


def particle_limit_rules(grade: str, size: str) -> pl.DataFrame:
    """The Annex 1 limits of a grade and size as chart rules (label, value); a missing limit is left out."""
    rest, operation = particle_limits(grade, size)
    rows = [(f"grade {grade} at rest", rest), (f"grade {grade} in operation", operation)]
    return pl.DataFrame([r for r in rows if r[1] is not None], schema={"label": pl.String(), "value": pl.Float64()},
                        orient="row")


def particle_summary(site: Site, values: pl.DataFrame) -> pl.DataFrame:
    """Per room and size: the highest count against the Annex 1 limits (values: a `trend` frame of maxima)."""
    peak = dict(values.group_by("tag").agg(pl.max("value")).iter_rows())
    rows = []
    for tag in (t for t in site.tags.values() if t.annex1):
        grade = site.rooms[tag.owner].grade
        rest, operation = particle_limits(grade, tag.annex1 or "0.5")
        top = peak.get(tag.name)
        ref = operation or rest
        rows.append((tag.owner, grade, f">= {tag.annex1} um", top, rest, operation,
                     None if top is None or not ref else 100.0 * top / ref))
    schema = {"room": pl.String(), "grade": pl.String(), "size": pl.String(), "highest /m3": pl.Float64(),
              "at rest limit": pl.Float64(), "in operation limit": pl.Float64(), "% of limit": pl.Float64()}
    return pl.DataFrame(rows, schema=schema, orient="row").sort("grade", "room", "size")


def cascade(site: Site, rooms: Sequence[RoomView]) -> pl.DataFrame:
    """The pressure cascade, cleanest grade first: room, grade, dp, setpoint, alert, action."""
    rows = []
    for r in sorted(rooms, key=lambda r: (r.grade, r.room)):
        dp = next((x.value for x in r.readings if x.short == "DP"), None)
        tag = site.tags.get(f"{r.room}.DP")
        rows.append((r.room, r.grade, dp, r.dp_setpoint_pa, tag.alert_low if tag else None,
                     tag.action_low if tag else None))
    return pl.DataFrame(rows, schema={"room": pl.String(), "grade": pl.String(), "dp": pl.Float64(),
                                      "setpoint": pl.Float64(), "alert": pl.Float64(), "action": pl.Float64()},
                        orient="row")
