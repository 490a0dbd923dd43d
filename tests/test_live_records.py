"""The live twin keeps a records store current: running batches, setpoints, offline results, harvests."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl

from plant.records import Records
from plant.sim.live import LiveTwin
from plant.sim.live_records import LiveRecorder
from plant.site import demo_site_text, parse_site


def short_site():
    """The demo site with two-day recipes so a whole batch fits in a test."""
    text = demo_site_text()
    for old in ("harvest_day = 12", "harvest_day = 10"):
        text = text.replace(old, "harvest_day = 2")
    text = text.replace("feed_start_day = 3", "feed_start_day = 1")
    return parse_site(text, "short.toml")


def test_running_then_harvested_batches_are_recorded(tmp_path):
    twin = LiveTwin(short_site(), 4, datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc), fault_rate_scale=0.0)
    with Records.open(tmp_path / "records.db") as records:
        recorder = LiveRecorder(records, twin)
        for _ in range(60):
            twin.step()
        recorder.sync()
        running = records.batches(status="running")
        assert running.height == 1 and running["unit"][0] == "BR01"
        assert records.setpoints(running["batch_id"][0]).height >= 5
        bid = running["batch_id"][0]
        twin.set_setpoint("BR01", "TEMP_SP", 37.5)
        for i in range(2 * 1440 + 30):
            twin.step()
            if i % 97 == 0:
                recorder.sync()
        recorder.sync()
        first = records.get_batch(bid)
        assert first.status == "harvested" and first.disposition in ("released", "rejected")
        sp = records.setpoints(bid).filter(pl.col("tag") == "TEMP_SP")
        assert sp["value"].to_list() == [37.0, 37.5]
        offline = records.offline_results(bid)
        assert offline.filter(pl.col("analyte") == "VCD").height == 2  # day 0 and day 1 counts
        assert offline.filter(pl.col("analyte") == "CAR_PCT").height == 1
        assert records.release_results(bid).height == 8
        assert records.batches().height >= 8  # every unit has started a batch by now
        # nothing is stored twice
        assert offline.unique(["analyte", "ts"]).height == offline.height
