"""The MLflow way for data scientists: `mlflow run .` on the MLproject, and the MLflow UI on the same store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from models.registry import YIELD_MODEL, client
from tests.connector_helpers import free_ports

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _env(tracking_uri: str) -> dict[str, str]:
    # `mlflow run --env-manager local` runs the entry point's `python` from PATH: this environment's first.
    # MLflow variables the training fixture left in this process (experiment id, active run) must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "MLFLOW_TRACKING_URI": tracking_uri}


def test_mlflow_run_evaluate_entry_point_logs_a_run(trained, model_history):
    _, tracking = trained
    uri = f"sqlite:///{tracking.db}"
    out = subprocess.run([str(BIN / "mlflow"), "run", str(ROOT), "-e", "evaluate", "--env-manager", "local",
                          "--experiment-name", "mlproject-test", "-P", f"data={model_history}", "-P",
                          "alias=challenger"], env=_env(uri), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    mc = client(tracking)
    exp = mc.get_experiment_by_name("mlproject-test")
    runs = mc.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags.get("mlflow.project.entryPoint") == "evaluate"
    metrics = set(runs[0].data.metrics)
    for child in mc.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{runs[0].info.run_id}'"):
        metrics |= set(child.data.metrics)
    assert metrics, "the evaluate entry point logged no metrics into the project run"


def test_mlflow_ui_serves_the_registered_models_and_their_aliases(trained):
    _, tracking = trained
    (port,) = free_ports(1)
    proc = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{tracking.db}",
                             "--default-artifact-root", str(tracking.artifacts), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "MLflow UI did not answer within 90 s"
            time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        url = f"{base}/api/2.0/mlflow/registered-models/get?name={YIELD_MODEL}"
        with urllib.request.urlopen(url, timeout=10) as r:
            model = json.load(r)["registered_model"]
        assert {a["alias"] for a in model.get("aliases", [])} >= {"challenger"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_second_store_in_one_process_is_not_redirected_to_the_first(tmp_path, monkeypatch):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; Tracking.uri must not mistake that for a user's choice.
    from models.registry import Tracking, setup

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    a = Tracking(tmp_path / "a" / "mlflow.db", tmp_path / "a" / "mlruns")
    b = Tracking(tmp_path / "b" / "mlflow.db", tmp_path / "b" / "mlruns")
    setup(a)
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ
    mlflow = setup(b)
    assert mlflow.get_tracking_uri() == b.uri == f"sqlite:///{b.db.resolve()}"
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0)
    assert b.db.exists()
    assert client(b).get_run(run.info.run_id).data.metrics == {"x": 1.0}
