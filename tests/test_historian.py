"""Tests for plant.historian: real Parquet files under tmp_path, crash and concurrency in real processes."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from plant.historian import BatchWriter, CorruptFileError, Historian
from plant.samples import SAMPLE_SCHEMA, Quality, Sample, empty_samples

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
CHILD = Path(__file__).with_name("historian_child.py")
REPO = Path(__file__).resolve().parents[1]


def frame(rows: list[tuple]) -> pl.DataFrame:
    """(ts, tag, value, quality[, status]) tuples -> SAMPLE_SCHEMA frame."""
    rows = [r if len(r) == 5 else (*r, None) for r in rows]
    return pl.DataFrame(
        {
            "ts": [r[0] for r in rows],
            "tag": [r[1] for r in rows],
            "value": [r[2] for r in rows],
            "quality": [r[3] for r in rows],
            "status": [r[4] for r in rows],
            "server_ts": [r[0] + timedelta(milliseconds=5) for r in rows],
            "received_ts": [None for _ in rows],
        },
        schema=SAMPLE_SCHEMA,
    )


def minutes(tag: str, n: int, start: datetime = T0, quality: str = "GOOD", v0: float = 0.0) -> pl.DataFrame:
    """n samples of tag, one per minute, values v0, v0+1, ..."""
    return frame([(start + timedelta(minutes=i), tag, v0 + i, quality) for i in range(n)])


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


# ---- round trip, partitions, filters ---------------------------------------------------


def test_round_trip_every_column(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    berlin = pl.datetime_range(T0, T0 + timedelta(seconds=3), "1s", eager=True, time_zone="Europe/Berlin")
    df = pl.DataFrame(
        {
            "ts": berlin.dt.cast_time_unit("ms"),  # other zone and unit: coerced to UTC microseconds
            "tag": ["TT-101", "TT-101", "PH-7", "PH-7"],
            "value": [37.1, None, 7.2, float("nan")],
            "quality": ["GOOD", "BAD", "STALE", "UNCERTAIN"],
            "status": [None, "BadSensorFailure", "exception 0x02", ""],
            "server_ts": [T0, None, T0 + timedelta(seconds=9), T0],
            "received_ts": [T0 + timedelta(seconds=1), T0, None, T0],
        }
    )
    assert h.append(df) == 4
    out = h.read()
    assert out.schema == pl.Schema(SAMPLE_SCHEMA)
    utc_ts = pl.col("ts").dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    expected = df.with_columns(utc_ts).cast(SAMPLE_SCHEMA)  # type: ignore[arg-type]
    assert_frame_equal(out, expected.sort("tag", "ts"))
    assert out.filter(pl.col("quality") == "BAD")["value"].to_list() == [None]  # no zero filling


def test_sample_lists_are_accepted(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    s = [
        Sample("FT-1", 1.5, Quality.GOOD, T0, T0, T0 + timedelta(seconds=1)),
        Sample("FT-1", None, Quality.BAD, None, T0 + timedelta(seconds=2), T0 + timedelta(seconds=3), "BadCommFailure"),
    ]
    assert h.append(s) == 2
    out = h.read("FT-1")
    assert out["ts"].to_list() == [T0, T0 + timedelta(seconds=2)]  # ts falls back to server_ts
    assert out["status"].to_list() == [None, "BadCommFailure"]
    assert out["quality"].to_list() == ["GOOD", "BAD"]


def test_multi_day_append_lands_in_utc_date_partitions(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    df = minutes("a", 5, start=T0 - timedelta(minutes=2))  # 23:58 .. 00:02 UTC
    h.append(df)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["date=2025-12-31", "date=2026-01-01"]
    h.append(pl.concat([minutes("b", 3, start=T0), minutes("a", 3, start=T0 + timedelta(minutes=10))]))
    for f in parquet_files(tmp_path):
        seg = pl.read_parquet(f)
        assert {str(d) for d in seg["ts"].dt.date()} == {f.parent.name.removeprefix("date=")}
        assert_frame_equal(seg, seg.sort("tag", "ts"))  # segments are written sorted by (tag, ts)
    assert h.read().height == 11


def test_scan_is_lazy_and_pushes_filters_into_the_parquet_scan(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    h.append(pl.concat([minutes("a", 3, start=T0 + timedelta(days=d)) for d in range(3)]))
    lf = h.scan(["a"], T0 + timedelta(days=1), T0 + timedelta(days=2))
    assert isinstance(lf, pl.LazyFrame)
    plan = lf.explain()
    scan_line, selection = plan.splitlines()[0], plan.split("SELECTION:")[1]
    assert "date=2026-01-02" in scan_line and "date=2026-01-01" not in scan_line and "date=2026-01-03" not in scan_line
    assert "is_in" in selection and 'col("ts") >=' in selection and 'col("ts") <' in selection
    assert lf.collect().height == 3


def test_tag_and_time_filters_start_inclusive_end_exclusive(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    h.append(pl.concat([minutes("a", 10), minutes("b", 10, v0=100), minutes("c", 10, v0=200)]))
    out = h.read(["a", "c"], T0 + timedelta(minutes=2), T0 + timedelta(minutes=5))
    assert out["tag"].to_list() == ["a"] * 3 + ["c"] * 3
    assert out["value"].to_list() == [2.0, 3.0, 4.0, 202.0, 203.0, 204.0]
    assert h.read("b", start=T0 + timedelta(minutes=9))["value"].to_list() == [109.0]
    assert h.read("b", end=T0 + timedelta(minutes=1))["value"].to_list() == [100.0]
    # aware datetimes in other zones mean the same instant
    plus1 = timezone(timedelta(hours=1))
    assert h.read("a", T0.astimezone(plus1), (T0 + timedelta(minutes=1)).astimezone(plus1)).height == 1
    assert h.tags() == ["a", "b", "c"]
    assert h.time_bounds("b") == (T0, T0 + timedelta(minutes=9))
    assert h.scan("a").collect().height == 10


def test_read_is_sorted_by_tag_then_ts_across_overlapping_segments(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    odd = [minutes(t, 1500, start=T0 + timedelta(seconds=30), v0=1) for t in ("z", "a", "m")]
    even = [minutes(t, 1500, v0=0.5) for t in ("m", "z", "a")]  # same day, interleaved in time
    h.append(pl.concat(odd).sort("ts"))
    h.append(pl.concat(even))
    expected = pl.concat([*odd, *even]).sort("tag", "ts")
    assert_frame_equal(h.read(), expected)  # many rows per tag: the per-tag sort path
    cut = T0 + timedelta(minutes=2)
    assert_frame_equal(h.read(start=T0, end=cut), expected.filter(pl.col("ts") < cut))


def test_naive_datetimes_and_bad_frames_are_rejected(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    with pytest.raises(ValueError, match="start must be a timezone-aware"):
        h.read("a", datetime(2026, 1, 1), None)
    with pytest.raises(ValueError, match="end must be a timezone-aware"):
        h.resample("a", T0, datetime(2026, 1, 2))
    with pytest.raises(ValueError, match="'ts' is a naive datetime"):
        h.append(minutes("a", 2).with_columns(pl.col("ts").dt.replace_time_zone(None)))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['status'\]"):
        h.append(minutes("a", 2).drop("status"))
    with pytest.raises(ValueError, match="'quality'"):
        h.append(minutes("a", 2).with_columns(quality=pl.lit("GREAT")))
    with pytest.raises(ValueError, match="'tag' has 1 null"):
        h.append(minutes("a", 2).with_columns(tag=pl.Series([None, "a"], dtype=pl.String)))
    assert parquet_files(tmp_path) == []


def test_empty_historian_returns_empty_frames(tmp_path: Path) -> None:
    h = Historian(tmp_path / "new")
    assert_frame_equal(h.read(["a"], T0, T0 + timedelta(days=1)), empty_samples())
    assert h.tags() == [] and h.time_bounds() is None
    grid = h.resample(["a"], T0, T0 + timedelta(minutes=3))
    assert grid["value"].to_list() == [None] * 3 and grid["n_good"].to_list() == [0] * 3
    assert h.resample(None, None, None).height == 0
    assert h.compact(min_files=1, grace_s=0).partitions == 0


def test_unrelated_days_are_never_opened(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    h.append(minutes("a", 3, start=T0))
    h.append(minutes("a", 3, start=T0 + timedelta(days=1)))
    (victim,) = parquet_files(tmp_path / "date=2026-01-02")
    victim.write_bytes(b"garbage")  # would fail any read that touched it
    assert h.read("a", T0, T0 + timedelta(days=1)).height == 3
    with pytest.raises(CorruptFileError):
        h.read("a", T0, T0 + timedelta(days=1, microseconds=1))


def test_corrupt_file_error_names_the_file(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    h.append(minutes("a", 50))
    h.append(minutes("b", 50))
    victim = parquet_files(tmp_path)[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated, as by a bad disk
    with pytest.raises(CorruptFileError, match=str(victim)) as info:
        h.read()
    assert info.value.path == victim
    with pytest.raises(CorruptFileError, match=victim.name):
        h.compact(min_files=2, grace_s=0)


# ---- resample ------------------------------------------------------------------------


def test_resample_mean_excludes_bad_and_keeps_empty_buckets_null(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    s = lambda m, tag, v, q="GOOD": (T0 + timedelta(seconds=m), tag, v, q)  # noqa: E731
    h.append(
        frame(
            [
                s(0, "a", 1.0), s(20, "a", 3.0), s(40, "a", 1000.0, "BAD"),  # bucket 0: mean 2, 1 bad
                s(70, "a", 5.0, "UNCERTAIN"), s(80, "a", None, "STALE"),  # bucket 1: 5, 1 bad
                s(130, "a", 9.0, "BAD"),  # bucket 2: only bad -> null
                # bucket 3: no samples at all -> null
                s(250, "a", 8.0),  # bucket 4
                s(10, "b", 10.0), s(200, "b", 30.0),
            ]
        )
    )
    out = h.resample(["a", "b"], T0, T0 + timedelta(minutes=5), every="1m")
    a = out.filter(pl.col("tag") == "a")
    assert a["ts"].to_list() == [T0 + timedelta(minutes=i) for i in range(5)]
    assert a["value"].to_list() == [2.0, 5.0, None, None, 8.0]
    assert a["n_good"].to_list() == [2, 1, 0, 0, 1]
    assert a["n_bad"].to_list() == [1, 1, 1, 0, 0]
    assert out.columns == ["ts", "tag", "value", "n_good", "n_bad"]
    assert out.filter(pl.col("tag") == "b")["value"].to_list() == [10.0, None, None, 30.0, None]

    wide = h.resample(["b", "a", "missing"], T0, T0 + timedelta(minutes=5), wide=True)
    assert wide.columns == ["ts", "b", "a", "missing"]
    assert wide.height == 5 and wide["a"].to_list() == [2.0, 5.0, None, None, 8.0]
    assert wide["missing"].null_count() == 5  # a requested tag with no data is a null column, not dropped

    assert h.resample("a", T0, T0 + timedelta(minutes=5), agg="sum")["value"].to_list() == [4.0, 5.0, None, None, 8.0]
    assert h.resample("a", T0, T0 + timedelta(minutes=5), agg="last")["value"].to_list() == [3.0, 5.0, None, None, 8.0]
    with pytest.raises(ValueError, match="agg must be one of"):
        h.resample("a", T0, T0 + timedelta(minutes=5), agg="avg")


def test_resample_defaults_to_stored_tags_and_bounds(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    h.append(pl.concat([minutes("a", 120), minutes("b", 60, start=T0 + timedelta(minutes=30))]))
    out = h.resample(None, None, None, every="1h", wide=True)
    assert out["ts"].to_list() == [T0, T0 + timedelta(hours=1)]
    assert out["a"].to_list() == [29.5, 89.5]
    assert out["b"].to_list() == [14.5, 44.5]


# ---- batch writer --------------------------------------------------------------------


def test_batch_writer_buffers_until_full_flush_or_close(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    w = h.writer(max_rows=10, max_age_s=3600)
    assert isinstance(w, BatchWriter)
    assert w.append(minutes("a", 4)) == 0 and h.read().height == 0  # buffered, not yet acknowledged
    assert w.append(minutes("a", 6, start=T0 + timedelta(minutes=4))) == 10  # full -> one segment
    assert h.read().height == 10 and len(parquet_files(tmp_path)) == 1
    w.append([Sample("b", 1.0, Quality.GOOD, T0, None, T0)])
    assert w.flush() == 1 and h.read("b").height == 1
    with h.writer(max_rows=1000, max_age_s=0) as aged:  # max_age_s=0: every append is due
        assert aged.append(minutes("c", 2)) == 2
    with h.writer(max_rows=1000) as w2:
        w2.append(minutes("d", 3))
    assert h.read("d").height == 3  # context exit flushed
    with pytest.raises(RuntimeError, match="closed"):
        w2.append(minutes("d", 1))
    with pytest.raises(ValueError, match="missing column"):
        w.append(minutes("a", 1).drop("tag"))  # validated at append time, not at flush


# ---- compaction ----------------------------------------------------------------------


def test_compaction_keeps_rows_and_drops_file_count(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    for i in range(6):
        h.append(minutes(f"t{i % 3}", 30, start=T0 + timedelta(hours=i * 8), v0=i * 1000))  # 2 days
    before = h.read()
    assert len(parquet_files(tmp_path)) == 6
    assert h.compact(min_files=20, grace_s=0).partitions == 0  # below min_files: untouched
    stats = h.compact(min_files=2, grace_s=0)
    assert (stats.partitions, stats.files_before, stats.files_after, stats.rows) == (2, 6, 2, before.height)
    assert stats.files_deleted == 6
    assert [f.name[:2] for f in parquet_files(tmp_path)] == ["c-", "c-"]
    assert_frame_equal(h.read(), before)
    merged = pl.read_parquet(parquet_files(tmp_path)[0])
    assert_frame_equal(merged, merged.sort("tag", "ts"))  # compacted files are sorted by (tag, ts)
    # appends after a compaction that deleted every segment still get a newer seq
    h.append(minutes("late", 2))
    assert h.read("late").height == 2 and h.read().height == before.height + 2


def test_reader_rule_ignores_superseded_files_and_grace_protects_listed_readers(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    h.append(minutes("a", 10))
    h.append(minutes("b", 10))
    h.compact(min_files=2, grace_s=3600)  # c-2
    h.append(minutes("c", 10))
    listed_early = h.scan()  # a reader that listed c-2 + s-3 before the next compaction
    h.append(minutes("d", 10))
    h.compact(min_files=2, grace_s=3600)  # c-4; c-2 and s-1..s-4 stay on disk during the grace
    names = sorted(f.name[:2] + str(int(f.stem[2:])) for f in parquet_files(tmp_path))
    assert names == ["c-2", "c-4", "s-1", "s-2", "s-3", "s-4"]
    out = h.read()
    assert out.height == 40 and out.select("tag", "ts").is_duplicated().sum() == 0
    assert listed_early.collect().height == 30  # its files are still there
    stats = h.compact(min_files=2, grace_s=0)
    assert stats.files_deleted == 5 and [f.name[:2] for f in parquet_files(tmp_path)] == ["c-"]
    with pytest.raises(FileNotFoundError):
        listed_early.collect()  # without a grace period a slow reader loses its files ...
    assert h.read().height == 40


def test_read_retries_when_a_compaction_deletes_listed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Historian(tmp_path)
    for i in range(3):
        h.append(minutes(f"t{i}", 5))
    stale = h._live_files(None, None)
    h.compact(min_files=2, grace_s=0)
    real = Historian._live_files
    calls = []

    def first_stale(self: Historian, start: datetime | None, end: datetime | None) -> list[Path]:
        calls.append(1)
        return stale if len(calls) == 1 else real(self, start, end)

    monkeypatch.setattr(Historian, "_live_files", first_stale)
    assert h.read().height == 15  # ... which read() survives by listing again
    assert len(calls) == 2


def test_tmp_files_are_ignored_and_swept_only_when_orphaned(tmp_path: Path) -> None:
    h = Historian(tmp_path)
    h.append(minutes("a", 5))
    part = tmp_path / "date=2026-01-01"
    stray = part / "tmp-crashed-writer.tmp"
    stray.write_bytes(b"PAR1 half a file")
    assert h.read().height == 5  # readers ignore *.tmp
    assert h.compact(min_files=2, grace_s=3600).tmp_removed == 0 and stray.exists()  # younger than grace
    fd = os.open(part / ".write.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as a writer staging its tmp would hold it
        assert h.compact(min_files=2, grace_s=0).tmp_removed == 0 and stray.exists()
    finally:
        os.close(fd)
    assert h.compact(min_files=2, grace_s=0).tmp_removed == 1 and not stray.exists()


# ---- crash safety and concurrency (real processes) -----------------------------------


@pytest.mark.parametrize("acks_before_kill", [1, 4, 9])
def test_sigkill_never_loses_acknowledged_data(tmp_path: Path, acks_before_kill: int) -> None:
    rows = 6000
    rnd = random.Random(acks_before_kill)
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "write", str(tmp_path), "1000", str(rows)],
        stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO,
    )
    acked = []
    try:
        assert proc.stdout is not None
        while len(acked) < acks_before_kill:
            line = proc.stdout.readline()
            assert line.startswith("ACK "), f"child died early: {line!r}"
            acked.append(int(line.split()[1]))
        time.sleep(rnd.uniform(0.0, 0.03))  # land somewhere inside a later append
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout:  # ACKs printed before the kill landed are acknowledged too
            acked.append(int(line.split()[1]))
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for f in parquet_files(tmp_path):  # every committed file is whole (tmp files may be partial)
        pl.read_parquet(f)
    ids = Historian(tmp_path).read()["value"].cast(pl.Int64)
    assert ids.is_duplicated().sum() == 0  # exactly once
    want = set(range(0, (max(acked) + 1) * rows))
    assert want <= set(ids.to_list())  # every acknowledged row is there
    assert ids.max() < (max(acked) + 2) * rows  # at most the in-flight batch on top
    Historian(tmp_path).compact(min_files=1, grace_s=0)  # crash leftovers are swept, data intact
    assert not list(tmp_path.rglob("*.tmp"))
    assert Historian(tmp_path).read()["value"].cast(pl.Int64).sort().equals(ids.sort())


def test_concurrent_reader_writer_and_compaction(tmp_path: Path) -> None:
    n_batches, rows = 40, 500
    stop = tmp_path / "stop"
    root = tmp_path / "hist"
    h = Historian(root)
    reader = subprocess.Popen(
        [sys.executable, str(CHILD), "read", str(root), str(stop)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=REPO,
    )
    writer = None
    compactions = 0
    try:
        assert reader.stdout is not None
        first = reader.stdout.readline()  # the reader is up and looping before any data arrives
        assert first.startswith("COUNT 0 "), first + reader.stderr.read()  # type: ignore[union-attr]
        writer = subprocess.Popen(
            [sys.executable, str(CHILD), "write", str(root), str(n_batches), str(rows)],
            stdout=subprocess.DEVNULL, env=child_env(), cwd=REPO,
        )
        while writer.poll() is None:
            compactions += h.compact(min_files=2, grace_s=0).partitions  # grace 0: readers must retry
        assert writer.returncode == 0
        stop.touch()
        out, err = reader.communicate(timeout=60)
    finally:
        for p in (writer, reader):
            if p is not None:
                p.kill()
                p.wait()
    assert reader.returncode == 0, err
    counts = [int(line.split()[1]) for line in [first, *out.splitlines()]]
    assert counts == sorted(counts) and counts[-1] == n_batches * rows  # monotonic, complete at the end
    assert compactions > 0
    assert sorted(h.read()["value"].cast(pl.Int64).to_list()) == list(range(n_batches * rows))
