"""Model commands: help everywhere; list, history and predict against the session's trained store."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner

from cellwatch.cli import cli
from plant.records import Records


@pytest.mark.parametrize("args", [["train"], ["evaluate"], ["tune"], ["predict"], ["models"], ["models", "list"],
                                  ["models", "promote"], ["models", "history"], ["import"], ["export"]])
def test_help(args):
    res = CliRunner().invoke(cli, [*args, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


def test_list_history_and_predict(trained, model_history):
    _, tracking = trained
    db = ["--data", str(model_history), "--mlflow-db", str(tracking.db)]
    res = CliRunner().invoke(cli, ["models", "list", *db])
    assert res.exit_code == 0 and "cellwatch-yield" in res.output and "cellwatch-deviation" in res.output
    with Records.open(model_history / "records.db") as rec:
        b = rec.batches().row(-1, named=True)
    at = (b["start_ts"] + timedelta(days=3)).isoformat()
    res = CliRunner().invoke(cli, ["predict", *db, "--batch", b["batch_id"], "--at", at, "--alias", "1",
                                   "--setpoint", "TEMP_SP=36.8"])
    assert res.exit_code == 0, res.output
    assert "harvest viable cells" in res.output and "deviation risk within 2 h" in res.output
    res = CliRunner().invoke(cli, ["models", "history", "--data", str(model_history)])
    assert res.exit_code == 0
