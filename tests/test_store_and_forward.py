"""The durable buffer and the ingest writer without servers: corrupt files, crash replays, duplicates, states."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from connectors.base import ConnectorState, SampleBatch, StateTracker, batches_to_frame
from connectors.ingest import IngestService, IngestSettings
from connectors.spool import Spool, SpoolError
from plant.historian import Historian
from plant.samples import Quality, Sample, samples_to_frame
from plant.site import load_demo_site

T = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def samples(tag: str, n: int, start: int = 0) -> list[Sample]:
    return [Sample(tag, float(i), Quality.GOOD, T + timedelta(seconds=i), T + timedelta(seconds=i),
                   T + timedelta(seconds=i, milliseconds=5)) for i in range(start, start + n)]


def service(tmp_path, **kw) -> IngestService:
    # One Modbus endpoint that is never started: the writer is exercised on its own.
    return IngestService(load_demo_site(), Historian(tmp_path / "historian"), tmp_path / "spool",
                         settings=IngestSettings(metrics_port=None, compact_s=0, **kw), endpoints=["CR-A1-PC"])


def test_spool_files_are_whole_ordered_and_survive_a_reopen(tmp_path):
    sp = Spool(tmp_path)
    a = sp.append(samples_to_frame(samples("X.A", 3)))
    b = sp.append(samples_to_frame(samples("X.A", 2, 3)))
    (tmp_path / "b-00000000000000000099-5.tmp").write_bytes(b"half written")  # a crash mid-write
    again = Spool(tmp_path)
    assert [f.seq for f in again.pending()] == [a.seq, b.seq] and again.depth == 5
    assert not list(tmp_path.glob("*.tmp"))  # never accepted, so dropped
    assert again.read(again.pending()[1])["value"].to_list() == [3.0, 4.0]
    again.committed(again.pending()[:1], {"X.A": T})
    assert [f.seq for f in Spool(tmp_path).pending()] == [b.seq] and Spool(tmp_path).committed_seq() == a.seq


@pytest.mark.asyncio
async def test_a_corrupt_buffer_file_is_named_set_aside_and_the_rest_is_stored(tmp_path, caplog):
    sp = Spool(tmp_path / "spool")
    files = [sp.append(samples_to_frame(samples(f"T.{i}", 4))) for i in range(3)]
    files[1].path.write_bytes(files[1].path.read_bytes()[:40])  # truncated on disk
    with pytest.raises(SpoolError, match=str(files[1].path.name)):
        sp.read(files[1])
    svc = service(tmp_path)
    with caplog.at_level(logging.ERROR, "cellwatch"):
        svc._seed_dedupe()
        assert await svc._commit()
    assert any(files[1].path.name in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "spool" / "corrupt" / files[1].path.name).exists()  # kept for recovery, not deleted
    assert sorted(svc.historian.read()["tag"].unique()) == ["T.0", "T.2"]
    assert not svc.spool.pending()


@pytest.mark.asyncio
async def test_a_replay_after_a_crash_does_not_duplicate_what_the_historian_has(tmp_path):
    first = samples("R.A", 6)
    Historian(tmp_path / "historian").append(first[:4])  # committed, but the crash came before the spool delete
    sp = Spool(tmp_path / "spool")
    sp.append(samples_to_frame(first[:4]))
    sp.append(samples_to_frame(first[4:]))
    svc = service(tmp_path)
    svc._seed_dedupe()
    assert await svc._commit()
    rows = svc.historian.read()
    assert rows["value"].to_list() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert svc.metrics.duplicates._value.get() == 4


@pytest.mark.asyncio
async def test_resent_values_are_dropped_by_tag_and_source_timestamp_also_after_a_restart(tmp_path):
    svc = service(tmp_path)
    s = samples("D.A", 3)
    svc._accept(s)
    svc._accept([s[-1], s[1]])  # an OPC UA server re-sends current values after a reconnect
    assert svc.pending_rows == 3 and svc.metrics.duplicates._value.get() == 2
    gap = Sample("D.A", None, Quality.MISSING, None, None, T, "connection lost")
    svc._accept([gap, gap])  # markers have no source timestamp: never taken for re-sends
    assert svc.pending_rows == 5
    await svc._flush()
    assert await svc._commit()
    restarted = service(tmp_path)
    restarted._seed_dedupe()
    restarted._accept([s[-1]] + samples("D.A", 1, 3))
    assert [x.value for part in restarted._pending for x in part] == [3.0]


def test_each_state_change_is_logged_once_and_handed_on(caplog):
    events = []
    tr = StateTracker("dev-1", "modbus", events.append, logging.getLogger("cellwatch.test"))
    with caplog.at_level(logging.DEBUG, "cellwatch.test"):
        tr.set(ConnectorState.CONNECTING, "127.0.0.1:1")
        tr.set(ConnectorState.READY)
        for i in range(3):
            tr.set(ConnectorState.RECONNECTING, f"attempt {i}: connection refused")
        tr.set(ConnectorState.READY)
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage().split(": ", 1)[1].split(" (")[0] for r in lines] == [
        "STOPPED -> CONNECTING", "CONNECTING -> READY", "READY -> RECONNECTING", "RECONNECTING -> READY"]
    assert [(e.from_state, e.to_state) for e in events] == [
        ("STOPPED", "CONNECTING"), ("CONNECTING", "READY"), ("READY", "RECONNECTING"), ("RECONNECTING", "READY")]
    assert events[2].reason == "attempt 0: connection refused" and events[2].ts.tzinfo is not None


def test_spool_frames_keep_the_sample_schema(tmp_path):
    sp = Spool(tmp_path)
    f = sp.append(samples_to_frame(samples("S.A", 2)))
    assert sp.read(f).schema == samples_to_frame(samples("S.A", 1)).schema
    assert pl.read_ipc(f.path.read_bytes()).height == 2


@pytest.mark.asyncio
async def test_a_batch_of_columns_is_deduplicated_and_stored_like_samples(tmp_path):
    s = samples("B.A", 3)
    batch = SampleBatch([x.tag for x in s], [x.value for x in s], ["GOOD"] * 3, [None] * 3, [x.source_ts for x in s],
                        [x.server_ts for x in s], T + timedelta(minutes=1))
    assert batches_to_frame([batch, batch.select([1])]).equals(samples_to_frame([*batch, *batch.select([1])]))
    svc = service(tmp_path)
    svc._accept(batch)
    svc._accept(batch.select([2, 0]))  # re-sent after a reconnect
    gap = Sample("B.A", None, Quality.MISSING, None, None, T + timedelta(minutes=2), "connection lost")
    svc._accept([gap])
    svc._accept(SampleBatch(["B.A"], [3.0], ["GOOD"], [None], [T + timedelta(seconds=3)], [None], T))
    assert svc.pending_rows == 5 and svc.metrics.duplicates._value.get() == 2
    await svc._flush()
    assert await svc._commit()
    rows = svc.historian.read()
    assert rows["value"].to_list() == [0.0, 1.0, 2.0, 3.0, None]  # sorted by ts: the gap marker is last
    assert rows["received_ts"].to_list()[:3] == [T + timedelta(minutes=1)] * 3
    assert rows["server_ts"].to_list()[3] is None and rows["status"].to_list()[4] == "connection lost"
