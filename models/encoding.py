"""Feature frame -> numeric matrix: numeric columns as they are, text columns one-hot on the training categories.

LightGBM aborts the process on polars Categorical columns (libraries.md §5), so nothing categorical ever
reaches it; the encoder is fitted with the model and saved with it.
"""

from __future__ import annotations

import fnmatch
import hashlib
from typing import Any

import numpy as np
import polars as pl

from models.features import feature_columns

class Encoder:
    """Numeric columns pass through (null -> NaN); text columns become 0/1 columns `name=value`.

    exclude: column names, or patterns with a `*` wildcard (`cov_*`, `*_phase_*`), left out of the inputs.
    """

    def __init__(self, exclude: tuple[str, ...] = ()) -> None:
        self.exclude = exclude

    def _excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.exclude)

    def fit(self, frame: pl.DataFrame) -> Encoder:
        cols = [c for c in feature_columns(frame) if not self._excluded(c)]
        self.numeric_ = [c for c in cols if frame.schema[c].is_numeric()]
        self.categories_ = {c: sorted(frame[c].drop_nulls().unique().to_list()) for c in cols
                            if frame.schema[c] in (pl.String, pl.Categorical) or isinstance(frame.schema[c], pl.Enum)}
        self.names_ = self.numeric_ + [f"{c}={v}" for c, vs in self.categories_.items() for v in vs]
        return self

    @property
    def inputs(self) -> list[str]:
        """Columns a frame must have to be transformed."""
        return self.numeric_ + list(self.categories_)

    def transform(self, frame: pl.DataFrame) -> np.ndarray:
        have = set(frame.columns)
        missing = [c for c in self.inputs if c not in have]
        if missing:
            raise ValueError(f"feature frame lacks column(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        # one select and numpy: building hundreds of cast expressions cost ~20 ms per call on a single row
        num = frame.select(pl.col(self.numeric_)).to_numpy().astype(np.float64) if self.numeric_ else \
            np.empty((frame.height, 0))
        parts = [num]
        for c, vs in self.categories_.items():
            col = frame[c].cast(pl.String)
            raw = np.asarray(col.to_list(), dtype=object)
            known = ~col.is_null().to_numpy()
            parts.append(np.column_stack([np.where(known, raw == v, np.nan).astype(np.float64) for v in vs])
                         if vs else np.empty((frame.height, 0)))
        return np.concatenate(parts, axis=1)

    def to_dict(self) -> dict[str, Any]:
        # categories as a list of pairs: column order is part of the model, and JSON may sort dict keys
        return {"exclude": list(self.exclude), "numeric": self.numeric_,
                "categories": [[c, vs] for c, vs in self.categories_.items()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Encoder:
        enc = cls(tuple(d["exclude"]))
        enc.numeric_, enc.categories_ = list(d["numeric"]), {c: list(vs) for c, vs in d["categories"]}
        enc.names_ = enc.numeric_ + [f"{c}={v}" for c, vs in enc.categories_.items() for v in vs]
        return enc


def fingerprint(frame: pl.DataFrame) -> str:
    """SHA-256 of a frame's content in a canonical order (columns sorted, rows sorted by key columns)."""
    cols = sorted(frame.columns)
    keys = [c for c in ("batch_id", "k_end") if c in cols]
    canon = frame.select(cols).sort(keys) if keys else frame.select(cols)
    h = hashlib.sha256()
    for c in cols:
        s = canon[c]
        h.update(f"{c}:{s.dtype}".encode())
        if s.dtype.is_temporal():
            s = s.dt.epoch("us") if isinstance(s.dtype, pl.Datetime) else s.cast(pl.Int64)
        if s.dtype.is_numeric() or s.dtype == pl.Boolean:
            h.update(s.cast(pl.Float64).fill_null(np.nan).to_numpy().tobytes())
        else:  # text and timestamps: their string form, with an explicit null marker
            h.update("\x1f".join("\0" if v is None else str(v) for v in s.to_list()).encode())
    return h.hexdigest()
