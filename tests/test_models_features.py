"""Model features: nothing after t reaches the features at t; BAD/STALE samples are counted, never zero-filled."""

from __future__ import annotations

import shutil
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from models.dataset import load_plant_data
from models.features import as_of, feature_rows, rows_every
from plant.historian import Historian
from plant.records import OfflineResult, Records, SetpointChange
from plant.samples import QUALITY_DTYPE
from plant.site import load_demo_site

SITE = load_demo_site()


@pytest.fixture(scope="module")
def batch(model_history):
    with Records.open(model_history / "records.db") as rec:
        return rec.batches().row(3, named=True)


def _copy(src, dst, unit, edit_samples=lambda f: f, edit_records=None):
    """A copy of a history folder (the unit's telemetry only) with telemetry and records edited."""
    dst.mkdir(parents=True)
    shutil.copy(src / "records.db", dst / "records.db")
    frame = Historian(src / "historian").read([t.name for t in SITE.unit_tags(unit)])
    Historian(dst / "historian").append(edit_samples(frame))
    if edit_records is not None:
        with Records.open(dst / "records.db") as rec:
            edit_records(rec)
    return dst


def _row(folder, batch_id, t):
    with Records.open(folder / "records.db") as rec:
        data = load_plant_data(Historian(folder / "historian"), rec, SITE, [batch_id])
    return as_of(data, batch_id, t)


def test_features_at_t_never_change_when_data_after_t_changes(model_history, batch, tmp_path):
    t = batch["start_ts"] + timedelta(hours=77, minutes=23)
    rng = np.random.default_rng(0)

    def scramble(frame: pl.DataFrame) -> pl.DataFrame:  # every sample at or after t: new values, some BAD
        after = frame["ts"] >= t
        noise = pl.Series(rng.normal(50, 30, frame.height))
        return frame.with_columns(
            value=pl.when(after).then(noise).otherwise(pl.col("value")),
            quality=pl.when(after & (noise > 70)).then(pl.lit("BAD")).otherwise(pl.col("quality").cast(pl.String))
            .cast(QUALITY_DTYPE))

    def more_records(rec: Records) -> None:  # results and setpoint changes that arrive after t
        rec.add_offline_results([OfflineResult(batch["batch_id"], t, "VCD", 9.9e7, "/mL"),
                                 OfflineResult(batch["batch_id"], t + timedelta(hours=1), "PH", 6.2, "[pH]")])
        rec.add_setpoints([SetpointChange(batch["batch_id"], "TEMP_SP", t + timedelta(minutes=1), 36.0, "operator")])

    changed = _copy(model_history, tmp_path / "changed", batch["unit"], scramble, more_records)
    before = _row(model_history, batch["batch_id"], t)
    assert_frame_equal(before, _row(changed, batch["batch_id"], t))
    # the same edit is visible later on: the test would notice a leak
    later = t + timedelta(hours=6)
    assert not _row(model_history, batch["batch_id"], later).equals(_row(changed, batch["batch_id"], later))
    assert before["t"][0] <= t and before["sp_TEMP_SP"][0] is not None


def test_bad_and_stale_samples_are_counted_not_filled_with_zeros(model_history, batch, tmp_path):
    t = batch["start_ts"] + timedelta(hours=50)
    tag = f"{batch['unit']}.DO"

    def silence(quality: str):
        def edit(frame: pl.DataFrame) -> pl.DataFrame:
            gap = (frame["tag"] == tag) & (frame["ts"] >= t - timedelta(minutes=45)) & (frame["ts"] < t)
            return frame.with_columns(value=pl.when(gap).then(None).otherwise(pl.col("value")),
                                      quality=pl.when(gap).then(pl.lit(quality)).otherwise(
                                          pl.col("quality").cast(pl.String)).cast(QUALITY_DTYPE))
        return edit

    base = _row(model_history, batch["batch_id"], t)
    for quality in ("BAD", "STALE"):
        row = _row(_copy(model_history, tmp_path / quality, batch["unit"], silence(quality)), batch["batch_id"], t)
        assert row["DO_bad_1h"][0] > 0.7  # 45 of the last 60 minutes
        assert row["DO_age_min"][0] >= 40  # the last good value is 45 min old
        # the mean of the last hour uses the 15 good minutes: not dragged towards zero, not missing
        assert row["DO_mean_1h"][0] == pytest.approx(base["DO_mean_1h"][0], rel=0.1)
        assert row["DO_last"][0] == pytest.approx(base["DO_mean_1h"][0], rel=0.1)
        assert base["DO_bad_1h"][0] == 0 and base["DO_age_min"][0] == 0


def test_training_rows_equal_inference_rows(model_history, batch):
    with Records.open(model_history / "records.db") as rec:
        data = load_plant_data(Historian(model_history / "historian"), rec, SITE, [batch["batch_id"]])
    grid = feature_rows(data, rows_every(data, 60))  # many rows at once, as for training
    row = grid.filter(pl.col("k_end") == 300)
    single = as_of(data, batch["batch_id"], row["t"][0])
    assert_frame_equal(row, single)
    assert row["sp_TEMP_SP_avg"][0] == pytest.approx(grid.filter(pl.col("k_end") == 300)["sp_TEMP_SP_avg"][0])
