"""MLflow pyfunc for both models, logged as "models from code" (no pickled objects in a GMP registry).

A registered version is this file, the model directory (artifact "model_dir") and model_config {"kind": ...}.
Imported only by models.registry and by MLflow when it loads a version (MLflow is slow to import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import polars as pl
from mlflow.models import set_model

from models.deviation import DeviationModel
from models.domain import DomainModel
from models.yield_model import YieldModel


def _frame(model_input: Any) -> pl.DataFrame:
    return model_input if isinstance(model_input, pl.DataFrame) else pl.from_pandas(pd.DataFrame(model_input))


class CellwatchPyfunc(mlflow.pyfunc.PythonModel):
    """yield: rows -> yield_log10, lo, hi, trustworthy, reasons; deviation: rows -> risk, above_threshold."""

    def load_context(self, context: Any) -> None:
        root = context.artifacts["model_dir"]
        self.kind = (context.model_config or {}).get("kind", "yield")
        if self.kind == "yield":
            self.model: YieldModel | DeviationModel = YieldModel.load(root)
            dom = Path(root) / "domain.json"
            self.domain: DomainModel | None = DomainModel.load(dom) if dom.exists() else None
        else:
            self.model, self.domain = DeviationModel.load(root), None

    # no type hint on model_input: MLflow would validate inputs against it (a list) and refuse DataFrames
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        x = _frame(model_input)
        if isinstance(self.model, DeviationModel):
            p = self.model.predict_proba(x)
            return pd.DataFrame({"risk": p, "above_threshold": p >= self.model.threshold_})
        out = self.model.predict_interval(x)
        if self.domain is None:  # a version logged without its applicability domain
            return out.with_columns(trustworthy=pl.lit(None, pl.Boolean), reasons=pl.lit("no domain model")).to_pandas()
        verdicts = self.domain.check(x)
        out = out.with_columns(trustworthy=pl.Series([v.trustworthy for v in verdicts], dtype=pl.Boolean),
                               reasons=pl.Series(["; ".join(v.reasons) for v in verdicts], dtype=pl.String))
        return out.to_pandas()


set_model(CellwatchPyfunc())
