"""Telemetry historian: crash-safe, append-only Parquet segments partitioned by UTC day.

Layout: ``<root>/date=YYYY-MM-DD/s-<seq>.parquet`` (one per append) and ``c-<maxseq>.parquet``
(compaction of every segment with seq <= maxseq). There is no manifest; in each partition the
live set is the newest compacted file plus the segments newer than it. Files only ever appear
by atomic rename, so readers need no locks; superseded files are deleted after a grace period.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from plant.samples import SAMPLE_SCHEMA, TS_DTYPE, Quality, Sample, samples_to_frame

SampleData = pl.DataFrame | Sequence[Sample]
Tags = str | Iterable[str] | None
When = datetime | None

_FILE_RE = re.compile(r"^([sc])-(\d{20})\.parquet$")
_PART_PREFIX = "date="
_COMMIT_LOCK = ".commit.lock"  # exclusive: allocating a seq + renaming into place
_WRITE_LOCK = ".write.lock"  # shared while a *.tmp is being written; exclusive to sweep tmps
_ROW_GROUP = 16_384  # small row groups so tag/time predicates skip most of a day file
_READ_ATTEMPTS = 8  # a busy compactor may replace files several times while a slow reader lists them
_USABLE = (Quality.GOOD.value, Quality.UNCERTAIN.value)
_AGGS = ("mean", "min", "max", "median", "sum", "std", "first", "last")


class HistorianError(RuntimeError):
    """Base class for historian storage errors."""


class CorruptFileError(HistorianError):
    """A committed Parquet file cannot be read."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"historian file is unreadable (corrupt or truncated): {path}: {cause}")
        self.path = path


@dataclass
class CompactionStats:
    """What one compact() call did."""

    partitions: int = 0
    files_before: int = 0  # live files in the partitions that were compacted
    files_after: int = 0  # one compacted file per compacted partition
    rows: int = 0
    files_deleted: int = 0  # superseded files past the grace period
    tmp_removed: int = 0


class Historian:
    """Append-only telemetry store in long format (columns exactly SAMPLE_SCHEMA)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- writing -------------------------------------------------------------------------

    def append(self, data: SampleData) -> int:
        """Store samples durably; returning is the acknowledgement. Returns rows written.

        Each UTC day is committed on its own: if this raises, some days may already be stored.
        """
        df = to_frame(data)
        if df.height == 0:
            return 0
        days = df.get_column("ts").dt.date()
        if days.min() == days.max():  # the common case: no copy
            parts = {days[0]: df}
        else:
            split = df.with_columns(_d=days).partition_by("_d", as_dict=True, include_key=False)
            parts = {k[0]: v for k, v in split.items()}
        staged: list[tuple[Path, Path]] = []
        with ExitStack() as stack:  # hold every partition's write lock so no sweep takes our tmp files
            try:
                for day, part in sorted(parts.items()):
                    pdir = self._partition_dir(day)
                    stack.enter_context(_flock(pdir / _WRITE_LOCK, fcntl.LOCK_SH))
                    staged.append((pdir, _write_tmp(pdir, _sort_tag_ts(part))))
                for pdir, tmp in staged:
                    with _flock(pdir / _COMMIT_LOCK, fcntl.LOCK_EX):
                        segs, comps, _ = _listing(pdir)
                        seq = max([0, *segs, *comps]) + 1  # above compacted maxseq too, or readers skip it
                        os.rename(tmp, pdir / f"s-{seq:020d}.parquet")
                        _fsync_dir(pdir)
            except BaseException:
                for _, tmp in staged:
                    tmp.unlink(missing_ok=True)  # committed ones were renamed away already
                raise
        return df.height

    def writer(self, max_rows: int = 100_000, max_age_s: float = 5.0) -> BatchWriter:
        """A buffering writer that appends when max_rows or max_age_s is reached."""
        return BatchWriter(self, max_rows=max_rows, max_age_s=max_age_s)

    # ---- reading -------------------------------------------------------------------------

    def scan(self, tags: Tags = None, start: When = None, end: When = None) -> pl.LazyFrame:
        """Lazy frame over [start, end) for tags; only partitions overlapping the range are listed.

        Collecting it yourself skips read()'s retry and error naming; the grace period keeps it valid.
        """
        start, end = _utc(start, "start"), _utc(end, "end")
        return _scan(self._live_files(start, end), _tag_list(tags), start, end)

    def read(self, tags: Tags = None, start: When = None, end: When = None) -> pl.DataFrame:
        """Samples in [start, end) for tags, sorted by (tag, ts)."""
        start, end = _utc(start, "start"), _utc(end, "end")
        return _sort_tag_ts(self._query(_tag_list(tags), start, end, lambda lf: lf))

    def resample(
        self,
        tags: Tags,
        start: When,
        end: When,
        every: str | timedelta = "1m",
        agg: str = "mean",
        wide: bool = False,
    ) -> pl.DataFrame:
        """Aggregate GOOD/UNCERTAIN values onto a full grid of `every`-wide buckets (labelled by start).

        Long form: ts, tag, value, n_good (samples used), n_bad (samples not used: BAD/STALE/MISSING
        or no value); buckets without usable values have value null. wide=True: ts + one column per tag.
        """
        if agg not in _AGGS:
            raise ValueError(f"agg must be one of {_AGGS}, got {agg!r}")
        start, end = _utc(start, "start"), _utc(end, "end")
        tag_list = _tag_list(tags)
        if tag_list is None:
            tag_list = self.tags()
        if start is None or end is None:
            bounds = self.time_bounds(tag_list)
            if bounds is not None:
                start = start or bounds[0]
                end = end or bounds[1] + timedelta(microseconds=1)
        stats = self._query(tag_list, start, end, lambda lf: _bucket_stats(lf, every, agg))
        out = (
            _grid(sorted(tag_list), start, end, every)  # already in (tag, ts) order, which the join keeps
            .join(stats, on=["tag", "ts"], how="left", maintain_order="left")
            .with_columns(pl.col("n_good", "n_bad").fill_null(0))
            .select("ts", "tag", "value", "n_good", "n_bad")
        )
        if not wide:
            return out
        if out.height == 0:
            return pl.DataFrame(schema={"ts": TS_DTYPE, **{t: pl.Float64() for t in tag_list}})
        return out.pivot(on="tag", index="ts", values="value").sort("ts").select("ts", *tag_list)

    def tags(self) -> list[str]:
        """All tags stored, sorted."""
        return self._query(None, None, None, lambda lf: lf.select("tag").unique())["tag"].sort().to_list()

    def time_bounds(self, tags: Tags = None) -> tuple[datetime, datetime] | None:
        """(first ts, last ts) stored for tags, or None when there is nothing."""
        b = self._query(_tag_list(tags), None, None, lambda lf: lf.select(lo=pl.min("ts"), hi=pl.max("ts")))
        return None if b["lo"][0] is None else (b["lo"][0], b["hi"][0])

    # ---- compaction ----------------------------------------------------------------------

    def compact(self, min_files: int = 8, grace_s: float = 300.0) -> CompactionStats:
        """Merge each partition's live files into one when it has >= min_files; sweep old files.

        Superseded files and stray *.tmp are deleted only once grace_s has passed, so readers
        that listed them before the compaction can still open them.
        """
        stats = CompactionStats()
        for pdir in self._partitions(None, None):
            self._compact_partition(pdir, min_files, stats)
            self._sweep_partition(pdir, grace_s, stats)
        return stats

    def _compact_partition(self, pdir: Path, min_files: int, stats: CompactionStats) -> None:
        with _flock(pdir / _COMMIT_LOCK, fcntl.LOCK_EX):
            segs, comps, _ = _listing(pdir)
        live, maxseq = _live(segs, comps)
        if len(live) < max(min_files, 2):  # one file is already as compact as it gets
            return
        with _flock(pdir / _WRITE_LOCK, fcntl.LOCK_SH):
            try:
                merged = _read_files(live)
            except FileNotFoundError:  # a concurrent compaction got there first and swept them
                return
            tmp = _write_tmp(pdir, _sort_tag_ts(merged))
            with _flock(pdir / _COMMIT_LOCK, fcntl.LOCK_EX):
                _, comps, _ = _listing(pdir)
                if comps and max(comps) >= maxseq:  # someone compacted at least as far meanwhile
                    tmp.unlink()
                    return
                os.rename(tmp, pdir / f"c-{maxseq:020d}.parquet")
                _fsync_dir(pdir)
        stats.partitions += 1
        stats.files_before += len(live)
        stats.files_after += 1
        stats.rows += merged.height

    def _sweep_partition(self, pdir: Path, grace_s: float, stats: CompactionStats) -> None:
        segs, comps, tmps = _listing(pdir)
        now = time.time()
        born = {k: _mtime(p) for k, p in comps.items()}  # when each compacted file appeared
        doomed = [(p, min(k for k in comps if k >= q)) for q, p in segs.items() if q <= max(comps, default=0)]
        doomed += [(p, min(k for k in comps if k > q)) for q, p in comps.items() if q < max(comps)]
        for path, cover in doomed:
            # Age of the *first* file that covered it: a reader listed before that has had grace_s.
            if now - born[cover] >= grace_s and _unlink(path):
                stats.files_deleted += 1
        with _flock(pdir / _WRITE_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
            if free:  # no writer is staging a tmp here, so every tmp is an orphan
                stats.tmp_removed += sum(now - _mtime(t) >= grace_s and _unlink(t) for t in tmps)

    # ---- internals -----------------------------------------------------------------------

    def _partition_dir(self, day: date) -> Path:
        pdir = self.root / f"{_PART_PREFIX}{day.isoformat()}"
        if not pdir.is_dir():
            pdir.mkdir(exist_ok=True)
            _fsync_dir(self.root)  # the new directory entry must survive a crash too
        return pdir

    def _partitions(self, start: When, end: When) -> list[Path]:
        lo = start.date() if start else date.min
        hi = (end - timedelta(microseconds=1)).date() if end else date.max
        out = []
        for entry in os.scandir(self.root):
            if entry.is_dir() and entry.name.startswith(_PART_PREFIX):
                try:
                    day = date.fromisoformat(entry.name[len(_PART_PREFIX) :])
                except ValueError:
                    continue
                if lo <= day <= hi:
                    out.append(Path(entry.path))
        return sorted(out)

    def _live_files(self, start: When, end: When) -> list[Path]:
        files: list[Path] = []
        for pdir in self._partitions(start, end):
            segs, comps, _ = _listing(pdir)
            files += _live(segs, comps)[0]
        return files

    def _query(
        self, tags: list[str] | None, start: When, end: When, then: Callable[[pl.LazyFrame], pl.LazyFrame]
    ) -> pl.DataFrame:
        """Collect then(scan) over the live files, listing again if a compaction removed one mid-read."""
        for attempt in range(_READ_ATTEMPTS):
            files = self._live_files(start, end)
            try:
                return then(_scan(files, tags, start, end)).collect()
            except FileNotFoundError:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
                time.sleep(0.005 * 2**attempt)  # let the competing compaction finish its rename
            except pl.exceptions.PolarsError as exc:
                if attempt == _READ_ATTEMPTS - 1 or all(f.exists() for f in files):
                    _raise_if_corrupt(files, exc)
                    raise
        raise AssertionError("unreachable")  # the last attempt returns or raises


class BatchWriter:
    """Buffers samples in memory and appends them in batches.

    Data is acknowledged (durable) only when flush() / close() returns, or when an append()
    that triggered a flush returns; a crash before that loses the buffer. The age limit is
    checked on each append(), so call flush() when the source goes quiet.
    """

    def __init__(self, historian: Historian, max_rows: int, max_age_s: float) -> None:
        self.historian, self.max_rows, self.max_age_s = historian, max_rows, max_age_s
        self._frames: list[pl.DataFrame] = []
        self._rows = 0
        self._since: float | None = None
        self._lock = threading.Lock()
        self._closed = False

    def append(self, data: SampleData) -> int:
        """Buffer samples (validated now); flush when full or old. Returns rows flushed now."""
        df = to_frame(data)
        with self._lock:
            if self._closed:
                raise RuntimeError("BatchWriter is closed")
            if df.height:
                self._frames.append(df)
                self._rows += df.height
                self._since = self._since or time.monotonic()
            old = self._since is not None and time.monotonic() - self._since >= self.max_age_s
            return self._flush_locked() if old or self._rows >= self.max_rows else 0

    def flush(self) -> int:
        """Append everything buffered; returns rows written (acknowledged)."""
        with self._lock:
            return self._flush_locked()

    def close(self) -> None:
        """Flush and refuse further appends."""
        with self._lock:
            self._flush_locked()
            self._closed = True

    def _flush_locked(self) -> int:
        if not self._frames:
            return 0
        written = self.historian.append(pl.concat(self._frames, rechunk=False))
        self._frames, self._rows, self._since = [], 0, None  # only after success: a failed flush can retry
        return written

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- module helpers ----------------------------------------------------------------------


def to_frame(data: SampleData) -> pl.DataFrame:
    """Validate and coerce samples to SAMPLE_SCHEMA; ValueError names the offending column."""
    if not isinstance(data, pl.DataFrame):
        data = samples_to_frame(list(data))
    missing = [c for c in SAMPLE_SCHEMA if c not in data.columns]
    extra = [c for c in data.columns if c not in SAMPLE_SCHEMA]
    if missing or extra:
        raise ValueError(
            f"samples frame: missing column(s) {missing}, unexpected column(s) {extra}; "
            f"expected exactly {list(SAMPLE_SCHEMA)}"
        )
    out = pl.DataFrame([_coerce(data.get_column(c), c, t) for c, t in SAMPLE_SCHEMA.items()])
    for col in ("ts", "tag", "quality"):
        if (n := out.get_column(col).null_count()) > 0:
            raise ValueError(f"samples frame: column {col!r} has {n} null value(s); it is required")
    return out


def _coerce(s: pl.Series, name: str, dtype: pl.DataType) -> pl.Series:
    if s.dtype == dtype:
        return s
    if isinstance(dtype, pl.Datetime) and s.dtype != pl.Null:
        if not isinstance(s.dtype, pl.Datetime):
            raise ValueError(f"samples frame: column {name!r} must be a UTC datetime, got {s.dtype}")
        if s.dtype.time_zone is None:
            raise ValueError(f"samples frame: column {name!r} is a naive datetime; make it timezone-aware")
        return s.dt.convert_time_zone("UTC").cast(dtype)
    try:
        return s.cast(dtype, strict=True)
    except pl.exceptions.PolarsError as exc:
        msg = f"samples frame: column {name!r} cannot be converted from {s.dtype} to {dtype}: {exc}"
        raise ValueError(msg) from None


def _utc(ts: When, name: str) -> When:
    if ts is None:
        return None
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC), got naive {ts!r}")
    return ts.astimezone(timezone.utc)


def _tag_list(tags: Tags) -> list[str] | None:
    return None if tags is None else [tags] if isinstance(tags, str) else list(dict.fromkeys(tags))


def _scan(files: list[Path], tags: list[str] | None, start: When, end: When) -> pl.LazyFrame:
    # glob=False: a root path may contain glob characters such as "[" (pytest ids do).
    lf = pl.scan_parquet([str(f) for f in files], schema=SAMPLE_SCHEMA, glob=False)
    if tags is not None:
        lf = lf.filter(pl.col("tag").is_in(tags))
    if start is not None:
        lf = lf.filter(pl.col("ts") >= pl.lit(start, dtype=TS_DTYPE))
    if end is not None:
        lf = lf.filter(pl.col("ts") < pl.lit(end, dtype=TS_DTYPE))
    return lf


def _bucket_stats(lf: pl.LazyFrame, every: str | timedelta, agg: str) -> pl.LazyFrame:
    usable = pl.col("quality").is_in(_USABLE) & pl.col("value").is_not_null() & pl.col("value").is_not_nan()
    vals = pl.col("value").filter(usable)
    if agg in ("first", "last"):
        vals = vals.sort_by(pl.col("ts").filter(usable))  # in-bucket order is not kept by group_by
    n_good = usable.sum()
    return lf.group_by("tag", pl.col("ts").dt.truncate(every).alias("bucket")).agg(
        value=pl.when(n_good > 0).then(getattr(vals, agg)()),  # sum of nothing is null here, not 0
        n_good=n_good.cast(pl.UInt32),
        n_bad=(~usable).sum().cast(pl.UInt32),
    ).rename({"bucket": "ts"})


def _grid(tags: list[str], start: When, end: When, every: str | timedelta) -> pl.DataFrame:
    if start is None or end is None or not tags or end <= start:
        return pl.DataFrame(schema={"tag": pl.String(), "ts": TS_DTYPE})
    first = pl.Series([start], dtype=TS_DTYPE).dt.truncate(every)[0]
    ts = pl.datetime_range(first, end, every, closed="left", time_unit="us", time_zone="UTC", eager=True)
    return pl.DataFrame({"tag": tags}).join(pl.DataFrame({"ts": ts}), how="cross", maintain_order="left_right")


def _sort_tag_ts(df: pl.DataFrame) -> pl.DataFrame:
    """Sort by (tag, ts); per-tag sorts when tags are long, as the (String, Datetime) sort is ~3x slower."""
    n_tags = df.get_column("tag").n_unique()
    if df.height <= 1000 * n_tags:  # short tags: ~0.2 ms per partition would dominate (measured)
        return df.sort("tag", "ts")
    parts = df.partition_by("tag", as_dict=True)
    return pl.concat([parts[k].sort("ts") for k in sorted(parts)])


def _read_files(files: list[Path]) -> pl.DataFrame:
    try:
        return _scan(files, None, None, None).collect()
    except pl.exceptions.PolarsError as exc:
        _raise_if_corrupt(files, exc)
        raise


def _raise_if_corrupt(files: list[Path], exc: BaseException) -> None:
    """Turn an opaque Parquet decode error into one that names the bad file (slow path only)."""
    for f in files:
        try:
            pl.scan_parquet(str(f), schema=SAMPLE_SCHEMA, glob=False).collect()
        except FileNotFoundError:
            continue
        except pl.exceptions.PolarsError as bad:
            raise CorruptFileError(f, bad) from exc


def _listing(pdir: Path) -> tuple[dict[int, Path], dict[int, Path], list[Path]]:
    """(segments by seq, compacted files by maxseq, tmp files) in one partition directory."""
    segs: dict[int, Path] = {}
    comps: dict[int, Path] = {}
    tmps: list[Path] = []
    for name in os.listdir(pdir):
        if m := _FILE_RE.match(name):
            (segs if m[1] == "s" else comps)[int(m[2])] = pdir / name
        elif name.endswith(".tmp"):
            tmps.append(pdir / name)
    return segs, comps, tmps


def _live(segs: dict[int, Path], comps: dict[int, Path]) -> tuple[list[Path], int]:
    """Reader rule: newest compacted file plus newer segments. Returns (files, max seq)."""
    base = max(comps, default=0)
    newer = sorted(q for q in segs if q > base)
    files = ([comps[base]] if comps else []) + [segs[q] for q in newer]
    return files, max([base, *newer])


def _write_tmp(pdir: Path, df: pl.DataFrame) -> Path:
    tmp = pdir / f"tmp-{os.getpid()}-{uuid.uuid4().hex}.tmp"
    with open(tmp, "xb") as fh:
        df.write_parquet(fh, compression="zstd", statistics=True, row_group_size=_ROW_GROUP)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


@contextmanager
def _flock(path: Path, op: int) -> Iterator[bool]:
    """Hold an flock on path for the block; yields False if LOCK_NB was given and it is taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()  # already gone: treat as brand new so nothing is deleted on its account


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
