"""Batch records store: round trips, interval queries, errors, chain-of-identity ids, WAL."""

from __future__ import annotations

import re
import sqlite3
import string
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from plant.records import (
    BATCH_SCHEMA, COVARIATE_SCHEMA, FAULT_SCHEMA, OFFLINE_SCHEMA, RELEASE_SCHEMA, SETPOINT_SCHEMA,
    BatchRecord, DonorCovariate, FaultLabel, OfflineResult, Records, ReleaseResult, SetpointChange,
    batches_table, coi_id, valid_coi,
)

KEY = b"test-key-0123456789abcdef"
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
CEST = timezone(timedelta(hours=2))
REPO = Path(__file__).resolve().parents[1]


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def bid(seq: int) -> str:
    return coi_id("DEMO", seq, KEY)


def batch(seq: int, unit: str = "BR-01", start: float = 0, end: float | None = None,
          status: str = "running", **kw: object) -> BatchRecord:
    return BatchRecord(bid(seq), unit, "DEMO", "CART-v1", kw.pop("kind", "production"), day(start),
                       day(start + 12), None if end is None else day(end), status, **kw)


@pytest.fixture
def store(tmp_path: Path):
    with Records.open(tmp_path / "records.db") as records:
        yield records


# -- round trips ------------------------------------------------------------------------------


def test_batch_round_trip_converts_to_utc(store: Records, tmp_path: Path) -> None:
    local_start = datetime(2025, 3, 1, 10, 0, tzinfo=CEST)  # == T0
    rec = BatchRecord(bid(1), "BR-01", "DEMO", "CART-v1", "process_characterisation", local_start,
                      local_start + timedelta(days=12), notes="DoE run 3")
    assert rec.start_ts == T0 and rec.start_ts.tzinfo is timezone.utc
    store.add_batches([rec, batch(2, "BR-02", 1, 11, "harvested", disposition="released")])

    got = store.get_batch(bid(1))
    assert got == rec and got.start_ts.tzinfo is timezone.utc
    frame = store.batches()
    assert frame.schema == pl.Schema(BATCH_SCHEMA)
    assert frame["batch_id"].to_list() == [bid(1), bid(2)]
    assert frame["start_ts"][0] == T0
    assert frame.row(1, named=True)["end_ts"] == day(11)
    # SQLite stores naive UTC text; the store adds the zone back.
    raw = sqlite3.connect(tmp_path / "records.db").execute(
        "SELECT start_ts FROM batches WHERE batch_id = ?", (bid(1),)).fetchone()[0]
    assert raw.startswith("2025-03-01 08:00:00")


def test_reopen_is_idempotent(tmp_path: Path) -> None:
    with Records.open(tmp_path / "sub" / "records.db") as first:
        first.add_batches([batch(1)])
    with Records.open(f"sqlite:///{tmp_path / 'sub' / 'records.db'}") as second:
        assert second.get_batch(bid(1)) == batch(1)


def test_child_records_round_trip(store: Records) -> None:
    store.add_batches([batch(1), batch(2, "BR-02")])
    sp = [SetpointChange(bid(1), "TEMP_SP", day(0), 37.0, "recipe"),
          SetpointChange(bid(1), "TEMP_SP", datetime(2025, 3, 3, 10, tzinfo=CEST), 36.5, "operator",
                         "heater check")]
    off = [OfflineResult(bid(1), day(d), "VCD", 1e6 * (d + 1), "cells/mL", "NC-200")
           for d in range(3)]
    rel = [ReleaseResult(bid(1), "viability", 91.5, "%", 80.0, None, True, day(12)),
           ReleaseResult(bid(1), "sterility", None, "", None, None, True, day(26), "no growth")]
    faults = [FaultLabel("temperature_excursion", day(2), day(2.1), unit="BR-01", batch_id=bid(1),
                         severity="major"),
              FaultLabel("hvac_trip", day(3), day(3.02), room="CR-B1", detail="AHU-1 trip")]
    store.add_setpoints(sp)
    store.add_offline_results(off)
    store.add_release_results(rel)
    store.add_fault_labels(faults)
    store.add_covariates([DonorCovariate(bid(1), "age", 54.0)])

    def frame(records: list, schema: dict) -> pl.DataFrame:
        return pl.DataFrame([{k: getattr(r, k) for k in schema} for r in records], schema=schema)

    assert_frame_equal(store.setpoints(), frame(sp, SETPOINT_SCHEMA))
    assert store.setpoints()["ts"][1] == day(2)
    assert_frame_equal(store.offline_results(bid(1), "VCD"), frame(off, OFFLINE_SCHEMA))
    assert store.offline_results(analyte="glucose").is_empty()
    assert_frame_equal(store.release_results(bid(1)), frame(rel[::-1], RELEASE_SCHEMA))
    assert_frame_equal(store.fault_labels(), frame(faults, FAULT_SCHEMA))
    assert store.release_results(bid(2)).schema == pl.Schema(RELEASE_SCHEMA)
    assert store.covariates().schema == pl.Schema(COVARIATE_SCHEMA)


@pytest.mark.parametrize(("make", "field"), [
    (lambda ts: BatchRecord(bid(1), "BR-01", "DEMO", "r", "production", ts, day(12)),
     "BatchRecord.start_ts"),
    (lambda ts: BatchRecord(bid(1), "BR-01", "DEMO", "r", "production", T0, day(12), ts,
                            "harvested"), "BatchRecord.end_ts"),
    (lambda ts: SetpointChange(bid(1), "TEMP_SP", ts, 37.0, "recipe"), "SetpointChange.ts"),
    (lambda ts: OfflineResult(bid(1), ts, "VCD", 1.0, "cells/mL"), "OfflineResult.ts"),
    (lambda ts: ReleaseResult(bid(1), "viability", 90.0, "%", 80.0, None, True, ts),
     "ReleaseResult.ts"),
    (lambda ts: FaultLabel("door_open", T0, ts, room="CR-B1"), "FaultLabel.end_ts"),
])
def test_naive_timestamps_are_rejected_naming_the_field(make, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        make(datetime(2025, 3, 2, 8, 0))


def test_naive_query_arguments_are_rejected(store: Records) -> None:
    store.add_batches([batch(1)])
    naive = datetime(2025, 3, 2)
    with pytest.raises(ValueError, match="naive"):
        store.batches_active_at(naive)
    with pytest.raises(ValueError, match="overlapping"):
        store.batches(overlapping=(T0, naive))
    with pytest.raises(ValueError, match="naive"):
        store.setpoints_in_force(bid(1), naive)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_id": "B-001"}, "not a valid COI"),
    ({"kind": "validation"}, "kind"),
    ({"status": "done"}, "status"),
    ({"end_ts": day(5)}, "end_ts must be set iff"),
    ({"status": "harvested"}, "end_ts must be set iff"),
    ({"disposition": "released"}, "disposition"),
    ({"status": "terminated", "end_ts": day(5), "disposition": "released"}, "disposition"),
    ({"planned_end_ts": T0}, "planned_end_ts"),
])
def test_batch_record_validation(kwargs: dict, message: str) -> None:
    fields = {"batch_id": bid(1), "unit": "BR-01", "site": "DEMO", "recipe": "r",
              "kind": "production", "start_ts": T0, "planned_end_ts": day(12)} | kwargs
    with pytest.raises(ValueError, match=message):
        BatchRecord(**fields)


def test_other_record_validation() -> None:
    with pytest.raises(ValueError, match="source"):
        SetpointChange(bid(1), "TEMP_SP", T0, 37.0, "ai")
    with pytest.raises(ValueError, match="unit or a room"):
        FaultLabel("door_open", T0, day(1))
    with pytest.raises(ValueError, match="severity"):
        FaultLabel("door_open", T0, day(1), room="CR-B1", severity="huge")
    with pytest.raises(ValueError, match="no value or text"):
        DonorCovariate(bid(1), "age", None)


# -- updates and errors -----------------------------------------------------------------------


def test_update_batch(store: Records) -> None:
    store.add_batches([batch(1)])
    updated = store.update_batch(bid(1), status="harvested", end_ts=day(11), notes="ok")
    assert updated == store.get_batch(bid(1))
    assert (updated.status, updated.end_ts, updated.notes) == ("harvested", day(11), "ok")
    store.update_batch(bid(1), disposition="released")
    assert store.get_batch(bid(1)).disposition == "released"

    with pytest.raises(ValueError, match="unit"):
        store.update_batch(bid(1), unit="BR-09")
    with pytest.raises(ValueError, match="end_ts must be set iff"):
        store.update_batch(bid(1), status="running")
    assert store.get_batch(bid(1)).status == "harvested"
    with pytest.raises(KeyError, match=bid(2)):
        store.update_batch(bid(2), notes="x")


def test_unknown_batch_errors_name_the_batch(store: Records) -> None:
    with pytest.raises(KeyError, match=bid(7)):
        store.get_batch(bid(7))
    with pytest.raises(KeyError, match=bid(7)):
        store.setpoints_in_force(bid(7), T0)


def test_foreign_key_violation_names_the_batch_and_inserts_nothing(store: Records) -> None:
    store.add_batches([batch(1)])
    rows = [OfflineResult(bid(1), T0, "VCD", 1e6, "cells/mL"),
            OfflineResult(bid(9), T0, "VCD", 1e6, "cells/mL")]
    with pytest.raises(ValueError, match=f"unknown batch id.*{bid(9)}") as info:
        store.add_offline_results(rows)
    assert bid(1) not in str(info.value)
    assert store.offline_results().is_empty()
    for add, record in [
        (store.add_setpoints, SetpointChange(bid(9), "TEMP_SP", T0, 37.0, "recipe")),
        (store.add_covariates, DonorCovariate(bid(9), "age", 40.0)),
        (store.add_release_results,
         ReleaseResult(bid(9), "viability", 90.0, "%", 80, None, True, T0)),
        (store.add_fault_labels,
         FaultLabel("door_open", T0, day(1), unit="BR-01", batch_id=bid(9))),
    ]:
        with pytest.raises(ValueError, match=bid(9)):
            add([record])


def test_duplicates_and_wrong_types(store: Records) -> None:
    store.add_batches([batch(1)])
    with pytest.raises(ValueError, match=f"already exist.*{bid(1)}"):
        store.add_batches([batch(1, "BR-02")])
    with pytest.raises(ValueError, match=f"already exist.*{bid(2)}"):
        store.add_batches([batch(2), batch(2)])
    with pytest.raises(TypeError, match="OfflineResult"):
        store.add_offline_results([batch(3)])  # type: ignore[list-item]
    store.add_covariates([DonorCovariate(bid(1), "age", 40.0)])
    with pytest.raises(ValueError, match="donor_covariates"):
        store.add_covariates([DonorCovariate(bid(1), "age", 41.0)])


# -- interval queries -------------------------------------------------------------------------


@pytest.fixture
def schedule(store: Records) -> Records:
    store.add_batches([
        batch(1, "BR-01", 0, 10, "harvested"),      # [d0, d10)
        batch(2, "BR-01", 10),                       # [d10, open) running
        batch(3, "BR-02", 5, 8, "terminated"),       # [d5, d8)
        batch(4, "BR-03", 20, status="planned"),     # not started
    ])
    return store


def test_batches_filters(schedule: Records) -> None:
    def ids(frame: pl.DataFrame) -> list[str]:
        return frame["batch_id"].to_list()

    assert ids(schedule.batches(unit="BR-01")) == [bid(1), bid(2)]
    assert ids(schedule.batches(status="terminated")) == [bid(3)]
    assert ids(schedule.batches(overlapping=(day(9), day(11)))) == [bid(1), bid(2)]
    assert ids(schedule.batches(overlapping=(day(7.9), day(8)))) == [bid(1), bid(3)]
    assert ids(schedule.batches(overlapping=(day(8), day(9)))) == [bid(1)]  # half-open
    assert ids(schedule.batches(overlapping=(day(25), day(26)))) == [bid(2), bid(4)]
    assert ids(schedule.batches(unit="BR-01", overlapping=(day(-5), day(0)))) == []
    with pytest.raises(ValueError, match="status"):
        schedule.batches(status="done")


def test_batches_active_at(schedule: Records) -> None:
    def ids(records: list[BatchRecord]) -> list[str]:
        return [r.batch_id for r in records]

    assert ids(schedule.batches_active_at(day(6))) == [bid(1), bid(3)]
    assert ids(schedule.batches_active_at(day(10))) == [bid(2)]  # ends are exclusive
    assert ids(schedule.batches_active_at(day(0))) == [bid(1)]  # starts are inclusive
    assert ids(schedule.batches_active_at(day(21))) == [bid(2)]  # planned is not running
    assert ids(schedule.batches_active_at(day(6), units=["BR-02", "BR-03"])) == [bid(3)]
    assert ids(schedule.batches_active_at(day(6), units="BR-01")) == [bid(1)]
    assert schedule.batches_active_at(day(6), units=[]) == []
    assert schedule.batches_active_at(datetime(2025, 3, 7, 10, tzinfo=CEST))[0] == batch(
        1, "BR-01", 0, 10, "harvested")


def test_fault_label_filters(schedule: Records) -> None:
    schedule.add_fault_labels([
        FaultLabel("pump_failure", day(2), day(2.5), unit="BR-01", batch_id=bid(1)),
        FaultLabel("hvac_trip", day(6), day(6.1), room="CR-B1"),
        FaultLabel("door_open", day(11), day(11.01), unit="BR-01", room="CR-B1", batch_id=bid(2)),
    ])

    def kinds(frame: pl.DataFrame) -> list[str]:
        return frame["kind"].to_list()

    assert kinds(schedule.fault_labels(unit="BR-01")) == ["pump_failure", "door_open"]
    assert kinds(schedule.fault_labels(room="CR-B1")) == ["hvac_trip", "door_open"]
    assert kinds(schedule.fault_labels(batch_id=bid(2))) == ["door_open"]
    assert kinds(schedule.fault_labels(overlapping=(day(2.4), day(6.05)))) == [
        "pump_failure", "hvac_trip"]
    late = schedule.fault_labels(unit="BR-01", overlapping=(day(6), day(12)))
    assert kinds(late) == ["door_open"]


def test_setpoints_in_force(store: Records) -> None:
    store.add_batches([batch(1)])
    store.add_setpoints([
        SetpointChange(bid(1), "TEMP_SP", day(0), 37.0, "recipe"),
        SetpointChange(bid(1), "PH_SP", day(0), 7.2, "recipe"),
        SetpointChange(bid(1), "PH_SP", day(0), 7.1, "doe", "DoE arm B"),  # same ts: later wins
        SetpointChange(bid(1), "TEMP_SP", day(3), 36.5, "recommendation"),
        SetpointChange(bid(1), "TEMP_SP", day(5), 37.0, "operator"),
    ])
    assert store.setpoints_in_force(bid(1), day(-1)) == {}
    assert store.setpoints_in_force(bid(1), day(0)) == {"TEMP_SP": 37.0, "PH_SP": 7.1}
    assert store.setpoints_in_force(bid(1), day(3) - timedelta(microseconds=1))["TEMP_SP"] == 37.0
    assert store.setpoints_in_force(bid(1), day(3))["TEMP_SP"] == 36.5
    assert store.setpoints_in_force(bid(1), day(4.9))["TEMP_SP"] == 36.5
    assert store.setpoints_in_force(bid(1), day(30))["TEMP_SP"] == 37.0


def test_covariates_wide(store: Records) -> None:
    store.add_batches([batch(1), batch(2), batch(3)])
    store.add_covariates([
        DonorCovariate(bid(1), "age", 54.0), DonorCovariate(bid(1), "cd3_pct", 61.0),
        DonorCovariate(bid(1), "indication", None, "DLBCL"),
        DonorCovariate(bid(2), "age", 8.0), DonorCovariate(bid(2), "indication", None, "B-ALL"),
        DonorCovariate(bid(2), "prior_lines", 3.0),
    ])
    expected = pl.DataFrame({
        "batch_id": [bid(1), bid(2)], "age": [54.0, 8.0], "cd3_pct": [61.0, None],
        "indication": ["DLBCL", "B-ALL"], "prior_lines": [None, 3.0],
    })
    wide = store.covariates(wide=True).sort("batch_id")
    assert_frame_equal(wide, expected.sort("batch_id"))
    assert store.covariates(bid(2), wide=True).columns == [
        "batch_id", "age", "indication", "prior_lines"]
    assert store.covariates(bid(3), wide=True).shape == (0, 1)
    assert store.covariates(bid(1)).height == 3


def test_bulk_insert_of_a_plant_year(store: Records) -> None:
    """Correctness of a large bulk insert; its speed is measured in bench/, not asserted here."""
    batches = [batch(i, f"BR-{i % 10:02d}", i) for i in range(200)]
    analytes = ["VCD", "viability", "glucose", "lactate", "glutamine", "ammonia", "CAR_pct", "pH"]
    results = [OfflineResult(b.batch_id, b.start_ts + timedelta(days=d), a, 1.0, "u")
               for b in batches for d in range(12) for a in analytes]
    store.add_batches(batches)
    store.add_offline_results(results)
    assert store.offline_results().height == 200 * 12 * 8
    assert store.offline_results(batches[7].batch_id, "pH").height == 12


# -- chain of identity ------------------------------------------------------------------------


def test_coi_id_is_deterministic_distinct_and_well_formed() -> None:
    ids = [coi_id("DEMO", seq, KEY) for seq in range(2000)]
    assert ids == [coi_id("DEMO", seq, KEY) for seq in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"COI-DEMO-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]", i) for i in ids)
    assert all(valid_coi(i) for i in ids)
    assert coi_id("DEMO", 1, KEY) != coi_id("DEMO", 1, KEY + b"x")
    assert coi_id("DEMO", 1, KEY)[9:] != coi_id("LON1", 1, KEY)[9:]


@pytest.mark.parametrize("seq", [0, 1, 42, 1234, 99999])
def test_check_character_detects_typos_and_transpositions(seq: int) -> None:
    good = coi_id("DEMO", seq, KEY)
    alphabet = string.digits + string.ascii_uppercase
    positions = [i for i, c in enumerate(good) if c != "-" and i >= 4]  # site, body and check
    for i in positions:
        for c in alphabet.replace(good[i], ""):
            assert not valid_coi(good[:i] + c + good[i + 1:]), (good, i, c)
    chars = [c for c in good[4:] if c != "-"]
    for i in range(len(chars) - 1):
        if chars[i] != chars[i + 1]:
            swapped = chars[:i] + [chars[i + 1], chars[i]] + chars[i + 2:]
            site, body = "".join(swapped[:4]), "".join(swapped[4:])
            candidate = f"COI-{site}-{body[:4]}-{body[4:8]}-{body[8]}"
            assert not valid_coi(candidate), (good, candidate)


def test_coi_rejects_bad_input() -> None:
    assert not valid_coi(None)
    assert not valid_coi(coi_id("DEMO", 1, KEY).lower())
    assert not valid_coi("COI-DEMO-ABCD-EFGH")
    with pytest.raises(ValueError, match="site_code"):
        coi_id("demo", 1, KEY)
    with pytest.raises(ValueError, match="seq"):
        coi_id("DEMO", -1, KEY)
    with pytest.raises(ValueError, match="key"):
        coi_id("DEMO", 1, b"short")


# -- concurrency ------------------------------------------------------------------------------

READER = """
import sys
from plant.records import Records
with Records.open(sys.argv[1]) as records:
    print(records.batches().height)
"""


def test_second_process_reads_while_first_writes(store: Records, tmp_path: Path) -> None:
    store.add_batches([batch(1)])
    path = str(tmp_path / "records.db")

    def read_in_subprocess() -> int:
        out = subprocess.run([sys.executable, "-c", READER, path], cwd=REPO, capture_output=True,
                             text=True, timeout=30, check=True)
        return int(out.stdout.strip())

    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    with store.engine.begin() as conn:
        # EXCLUSIVE would lock readers out of a rollback-journal database; WAL lets them read.
        conn.exec_driver_sql("BEGIN EXCLUSIVE")
        conn.execute(batches_table.insert(), {
            "batch_id": bid(2), "unit": "BR-02", "site": "DEMO", "recipe": "r",
            "kind": "production", "start_ts": T0, "planned_end_ts": day(12), "end_ts": None,
            "status": "running", "disposition": None, "notes": ""})
        assert read_in_subprocess() == 1  # sees the committed batch; a blocked reader would fail "locked"
    assert read_in_subprocess() == 2
