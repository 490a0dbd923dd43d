"""MLflow tracking and model registry: sqlite metadata and file artifacts under one folder (default mlruns/).

Every trained model is a new registered version with the alias `challenger`; `champion` moves only
through the promotion gate (models.gate). Inference loads by alias. MLflow is imported lazily.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl

from models.deviation import DeviationModel
from models.domain import DomainModel
from models.yield_model import YieldModel

EXPERIMENT = "cellwatch"
YIELD_MODEL = "cellwatch-yield"
DEVIATION_MODEL = "cellwatch-deviation"
MODEL_NAMES = {"yield": YIELD_MODEL, "deviation": DEVIATION_MODEL}
# requirements of a logged model: pinned here so log_model skips its 6-9 s inference (libraries.md §3)
PIP_REQUIREMENTS = ["lightgbm>=4.7,<5", "polars>=2.1,<3", "numpy>=2.2,<3", "pandas>=2", "scikit-learn>=1.9,<2",
                    "scipy>=1.17,<2"]


@dataclass(frozen=True, slots=True)
class Tracking:
    """Where runs and models live: sqlite metadata (db) and file artifacts (artifacts folder).

    A data folder keeps its own: <data>/mlflow.db and <data>/mlruns/ (what the panel and `mlflow ui` open).
    $MLFLOW_TRACKING_URI (e.g. set by `mlflow run`, or a tracking server) takes precedence over db.
    """

    db: Path
    artifacts: Path

    @classmethod
    def for_data(cls, data_dir: Path) -> Tracking:
        return cls(data_dir / "mlflow.db", data_dir / "mlruns")

    @property
    def uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.db.resolve()}"


@dataclass(frozen=True, slots=True)
class LoadedModels:
    """Both models of one alias (or version), with the versions they came from."""

    yield_model: YieldModel
    domain: DomainModel
    deviation_model: DeviationModel
    versions: dict[str, str]
    tags: dict[str, dict[str, str]]


@contextmanager
def mlflow_env_kept() -> Iterator[None]:
    """Undo the MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_ID that mlflow.set_tracking_uri/set_experiment export.

    Tracking.uri reads that variable as "set from outside"; left in place, every later store of the process
    would silently resolve to the first one.
    """
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def setup(tracking: Tracking) -> Any:
    """Point MLflow at the store (creating it and the experiment) and return the mlflow module."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in logs
    import mlflow

    tracking.db.parent.mkdir(parents=True, exist_ok=True)
    tracking.artifacts.mkdir(parents=True, exist_ok=True)
    with mlflow_env_kept():
        mlflow.set_tracking_uri(tracking.uri)
        if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`: the run and its experiment exist already
            return mlflow
        if mlflow.get_experiment_by_name(EXPERIMENT) is None:
            mlflow.create_experiment(EXPERIMENT, artifact_location=tracking.artifacts.resolve().as_uri())
        mlflow.set_experiment(EXPERIMENT)
        return mlflow


def client(tracking: Tracking) -> Any:
    from mlflow import MlflowClient

    setup(tracking)
    return MlflowClient(tracking_uri=tracking.uri)


def code_version() -> str:
    """git commit of the code (with "+dirty" for uncommitted changes), or the package version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "models", "plant"], cwd=here.parent,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"cellwatch {version('cellwatch')}"


def log_model(mlflow: Any, kind: str, model: YieldModel | DeviationModel, domain: DomainModel | None,
              example: pl.DataFrame, tags: dict[str, str], card: str) -> str:
    """Log one model (pyfunc) in the active run, register it as a new version, alias it `challenger`."""
    from mlflow.models import infer_signature

    from models import pyfunc

    name = MODEL_NAMES[kind]
    with tempfile.TemporaryDirectory() as tmp:
        mdir = Path(tmp) / "model"
        model.save(mdir)
        if domain is not None:
            domain.save(mdir / "domain.json")
        probe = pyfunc.CellwatchPyfunc()  # loaded here only to infer the output signature
        probe.load_context(SimpleNamespace(artifacts={"model_dir": str(mdir)}, model_config={"kind": kind}))
        inputs = example.select(model.encoder_.inputs)
        x = inputs.to_pandas()
        signature = infer_signature(x, probe.predict(None, inputs))
        with warnings.catch_warnings():  # MLflow warns about predict's type hints; the signature is explicit
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(name="model", python_model=pyfunc.__file__, model_config={"kind": kind},
                                           artifacts={"model_dir": str(mdir)}, signature=signature,
                                           input_example=x.head(3), pip_requirements=PIP_REQUIREMENTS,
                                           registered_model_name=name)
    version = str(info.registered_model_version)
    c = mlflow.MlflowClient()
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)
    c.update_model_version(name, version, description=card)
    c.set_registered_model_alias(name, "challenger", version)
    return version


def train(data_dir: Path, site: Any, n_trials: int | None = None) -> str:
    """Train both models on a data folder into its own store (the panel's "retrain"); a one-line summary."""
    from models.config import load_config
    from models.pipeline import train as run_training

    r = run_training(Path(data_dir), site, load_config(), Tracking.for_data(Path(data_dir)), n_trials)
    return (f"yield v{r.versions.get('yield')} (RMSE day 5 {r.metrics.get('yield_rmse_day5', float('nan')):.3f}), "
            f"deviation v{r.versions.get('deviation')} (detection {r.metrics.get('dev_detection_rate', 0):.0%}), "
            "both registered as challenger")


def resolve(tracking: Tracking, kind: str, alias_or_version: str) -> str | None:
    """Version number behind an alias (or a version given as digits); None when the alias is not set."""
    if alias_or_version.isdigit():
        return alias_or_version
    from mlflow.exceptions import MlflowException

    try:
        return str(client(tracking).get_model_version_by_alias(MODEL_NAMES[kind], alias_or_version).version)
    except MlflowException:
        return None


def load_version(tracking: Tracking, kind: str, version: str) -> tuple[Any, dict[str, str]]:
    """The unwrapped pyfunc (with .model, and .domain for yield) and the version's tags."""
    mlflow = setup(tracking)
    name = MODEL_NAMES[kind]
    wrapper = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    tags = dict(mlflow.MlflowClient().get_model_version(name, version).tags)
    return wrapper, tags


def load_models(tracking: Tracking, alias: str = "champion") -> LoadedModels:
    """Both models by alias ("champion", "challenger") or version number; KeyError names what is missing."""
    versions: dict[str, str] = {}
    for kind in MODEL_NAMES:
        v = resolve(tracking, kind, alias)
        if v is None:
            raise KeyError(f"{MODEL_NAMES[kind]} has no version with alias {alias!r} in {tracking.uri}; "
                           "train one (cellwatch train) and promote it (cellwatch models promote)")
        versions[kind] = v
    y, ytags = load_version(tracking, "yield", versions["yield"])
    d, dtags = load_version(tracking, "deviation", versions["deviation"])
    return LoadedModels(y.model, y.domain, d.model, versions, {"yield": ytags, "deviation": dtags})


def set_champion(tracking: Tracking, kind: str, version: str, tags: dict[str, str]) -> None:
    """Move `champion` to a version (and drop `challenger` from it), tagging who promoted it and why."""
    c = client(tracking)
    name = MODEL_NAMES[kind]
    c.set_registered_model_alias(name, "champion", version)
    if resolve(tracking, kind, "challenger") == version:
        c.delete_registered_model_alias(name, "challenger")
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)


def versions_table(tracking: Tracking) -> pl.DataFrame:
    """Every registered version with its aliases and headline metrics."""
    c = client(tracking)
    rows = []
    for kind, name in MODEL_NAMES.items():
        try:
            aliases = c.get_registered_model(name).aliases
        except Exception:  # noqa: BLE001 (not registered yet)
            continue
        by_version: dict[str, list[str]] = {}
        for a, v in aliases.items():
            by_version.setdefault(str(v), []).append(a)
        for mv in c.search_model_versions(f"name='{name}'"):
            metrics = json.loads(mv.tags.get("cellwatch.metrics", "{}"))
            rows.append({"model": name, "version": int(mv.version), "aliases": ",".join(sorted(by_version.get(
                str(mv.version), []))), "run_id": mv.run_id, "data": mv.tags.get("cellwatch.data_fingerprint", "")[:12],
                "code": mv.tags.get("cellwatch.code_version", "")[:12],
                "headline": ", ".join(f"{k}={v:.3g}" for k, v in metrics.items())})
    schema = {"model": pl.String, "version": pl.Int64, "aliases": pl.String, "run_id": pl.String, "data": pl.String,
              "code": pl.String, "headline": pl.String}
    return pl.DataFrame(rows, schema=schema).sort("model", "version")
