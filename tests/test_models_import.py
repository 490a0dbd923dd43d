"""`cellwatch import`: the twin's history exported and imported again trains to the same figures; bad files
get errors that name the file, the row and the column."""

from __future__ import annotations

import os
import subprocess
import sys

import polars as pl
import pytest

from models.config import ModelConfig
from models.dataset import load_plant_data
from models.exporter import export_history
from models.importer import ImportError_, import_history
from models.training import prepare, split_batches
from models.yield_model import YieldModel
from models.evaluate import evaluate_yield
from plant.historian import Historian
from plant.records import Records
from plant.site import load_demo_site

SITE = load_demo_site()
CFG = ModelConfig()


def _prepared(folder):
    with Records.open(folder / "records.db") as rec:
        data = load_plant_data(Historian(folder / "historian"), rec, SITE)
        return prepare(data, split_batches(data, rec, CFG), CFG)


def _files(paths):
    return {k: paths[k] for k in ("telemetry", "batches", "offline", "covariates", "setpoints", "deviations")}


def test_round_trip_gives_the_same_data_and_the_same_metrics(model_history, trained, tmp_path):
    paths = export_history(model_history, tmp_path / "export", SITE, "parquet")
    r = import_history(tmp_path / "store", SITE, **_files(paths))
    assert r.batches == 20 and r.renamed_ids == 0 and r.samples > 2_000_000
    a, b = _prepared(model_history), _prepared(tmp_path / "store")
    assert a.split == b.split  # the fresh store locks the same newest batches as its hold-out
    assert a.fingerprint == b.fingerprint  # every training feature identical
    metrics = []
    for p in (a, b):
        m = YieldModel({"num_leaves": 8}, 60).fit(p.yield_train, p.yield_train["log10_tvc"].to_numpy(),
                                                  p.yield_train["batch_id"].to_numpy())
        metrics.append(evaluate_yield(m, p.yield_test, {}, 0.8).metrics)
    assert metrics[0] == metrics[1]


def test_csv_round_trip_of_some_batches(model_history, tmp_path):
    with Records.open(model_history / "records.db") as rec:
        ids = rec.batches()["batch_id"].head(2).to_list()
    paths = export_history(model_history, tmp_path / "csv", SITE, "csv", batch_ids=ids)
    assert paths["telemetry"].read_text().splitlines()[0] == "timestamp,unit,tag,value,quality,status"
    import_history(tmp_path / "store", SITE, **_files(paths))
    orig = Historian(model_history / "historian").read([f"{u}.TEMP" for u in ("BR01", "BR02")])
    back = Historian(tmp_path / "store" / "historian").read([f"{u}.TEMP" for u in ("BR01", "BR02")])
    joined = back.join(orig, on=["tag", "ts"], how="left")
    assert joined["value_right"].null_count() == 0 and (joined["value"] == joined["value_right"]).all()


def _write(path, text):
    path.write_text(text)
    return path


BATCHES = ("batch_id,unit,recipe,start,end,harvest_viable_cells\n"
           "B-001,BR01,CART-RB-12D,2025-01-06T08:00:00Z,2025-01-18T08:00:00Z,6.1e9\n")


@pytest.mark.parametrize(("telemetry", "needles"), [
    ("timestamp,unit,tag\n2025-01-06T08:01:00Z,BR01,TEMP\n", ["telemetry.csv", "missing column(s) ['value']"]),
    ("timestamp,unit,tag,value\n2025-01-06T08:01:00Z,BR01,TEMP,37.0\n2025-01-06 08:02,BR01,TEMP,37.1\n",
     ["telemetry.csv", "row 2 (line 3)", "column 'timestamp'", "UTC offset", "'2025-01-06 08:02'"]),
    ("timestamp,unit,tag,value\n2025-01-06T08:01:00Z,BR99,TEMP,37.0\n",
     ["telemetry.csv", "row 1 (line 2)", "column 'unit'", "'BR99'"]),
    ("timestamp,unit,tag,value\n2025-01-06T08:01:00Z,BR01,TEMP,warm\n",
     ["telemetry.csv", "row 1 (line 2)", "column 'value'", "not a number"]),
    ("timestamp,unit,tag,value,quality\n2025-01-06T08:01:00Z,BR01,TEMP,37,FINE\n",
     ["row 1 (line 2)", "column 'quality'", "'FINE'"]),
])
def test_bad_telemetry_is_refused_naming_file_row_and_column(tmp_path, telemetry, needles):
    tel = _write(tmp_path / "telemetry.csv", telemetry)
    bat = _write(tmp_path / "batches.csv", BATCHES)
    with pytest.raises(ImportError_) as err:
        import_history(tmp_path / "store", SITE, tel, bat)
    for n in needles:
        assert n in str(err.value), (n, str(err.value))
    assert not any((tmp_path / "store").iterdir())  # nothing half-imported


def test_site_batch_ids_get_chain_of_identity_ids_and_missing_values_are_bad(tmp_path):
    tel = _write(tmp_path / "t.csv", "timestamp,unit,tag,value\n2025-01-06T08:01:00+00:00,BR01,TEMP,37.0\n"
                                     "2025-01-06T09:02:00+01:00,BR01,TEMP,\n")
    r = import_history(tmp_path / "store", SITE, tel, _write(tmp_path / "b.csv", BATCHES))
    assert r.renamed_ids == 1 and r.samples == 2
    with Records.open(tmp_path / "store" / "records.db") as rec:
        b = rec.batches().row(0, named=True)
        assert b["notes"] == "site batch id: B-001" and b["batch_id"].startswith("COI-DEMO-")
        assert rec.release_results()["value"].to_list() == [6.1e9]
    s = Historian(tmp_path / "store" / "historian").read().sort("ts")
    assert s["quality"].cast(pl.String).to_list() == ["GOOD", "BAD"] and s["value"][1] is None
    assert (s["ts"][1] - s["ts"][0]).total_seconds() == 60  # +01:00 offsets become UTC
    bad = _write(tmp_path / "b2.csv", BATCHES.replace("6.1e9", "lots"))
    with pytest.raises(ImportError_, match=r"b2.csv: row 1 \(line 2\), column 'harvest_viable_cells': not a number"):
        import_history(tmp_path / "store2", SITE, tel, bad)


def test_cli_import_error_is_one_line(tmp_path):
    tel = _write(tmp_path / "telemetry.csv", "timestamp,unit,tag,value\nyesterday,BR01,TEMP,37.0\n")
    env = {k: v for k, v in os.environ.items() if k != "CELLWATCH_DEBUG"}
    res = subprocess.run([sys.executable, "-m", "cellwatch.cli", "import", "--telemetry", str(tel), "--batches",
                          str(_write(tmp_path / "batches.csv", BATCHES)), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "telemetry.csv: row 1 (line 2), column 'timestamp'" in lines[0]
