"""MLflow pyfunc wrappers: a registered version is the model directory plus these thin loaders.

Imported only by models.registry (MLflow is slow to import; libraries.md §3).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd
import polars as pl

from models.deviation import DeviationModel
from models.domain import DomainModel
from models.yield_model import YieldModel


def _frame(model_input: Any) -> pl.DataFrame:
    return model_input if isinstance(model_input, pl.DataFrame) else pl.from_pandas(pd.DataFrame(model_input))


class YieldPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc: feature rows -> yield_log10, lo, hi, trustworthy (applicability domain)."""

    def load_context(self, context: Any) -> None:
        root = context.artifacts["model_dir"]
        self.model = YieldModel.load(root)
        self.domain = DomainModel.load(f"{root}/domain.json")

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        x = _frame(model_input)
        out = self.model.predict_interval(x)
        verdicts = self.domain.check(x)
        out = out.with_columns(trustworthy=pl.Series([v.trustworthy for v in verdicts], dtype=pl.Boolean),
                               reasons=pl.Series(["; ".join(v.reasons) for v in verdicts], dtype=pl.String))
        return out.to_pandas()


class DeviationPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc: feature rows -> risk (calibrated probability) and above_threshold."""

    def load_context(self, context: Any) -> None:
        self.model = DeviationModel.load(context.artifacts["model_dir"])

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        p = self.model.predict_proba(_frame(model_input))
        return pd.DataFrame({"risk": p, "above_threshold": p >= self.model.threshold_})
