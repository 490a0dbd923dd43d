"""Model settings and acceptance criteria: defaults in code, overridable from a TOML file."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A model config problem; the message names the file, the key and the bad value."""


@dataclass(frozen=True, slots=True)
class YieldAcceptance:
    """What a yield model must reach on the locked hold-out to be promoted."""

    max_rmse_log10_day5: float = 0.30  # log10 harvest viable cells at culture day 5
    min_coverage: float = 0.70  # 80 % interval, all held-out predictions from day 3 on
    max_coverage: float = 0.90


@dataclass(frozen=True, slots=True)
class DeviationAcceptance:
    """What a deviation model must reach on the locked hold-out to be promoted."""

    min_detection_rate: float = 0.85  # faults with an online signature
    max_false_alarms_per_batch_day: float = 0.20


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything training, evaluation and the promotion gate read; see models/config.toml."""

    bucket_min: int = 10  # telemetry is aggregated in buckets aligned to the batch start
    yield_step_h: float = 6.0  # yield training rows: one per batch every this many hours
    warning_horizon_h: float = 2.0  # label: a deviation starts within H hours (or is under way)
    warning_grace_h: float = 2.0  # alerts this long after a fault ends still count as detections
    warning_train_step_min: int = 30  # deviation training rows near faults
    warning_quiet_step_min: int = 360  # deviation training rows far from any fault
    target_false_alarms_per_batch_day: float = 0.15  # the alert threshold is chosen for this rate
    holdout_fraction: float = 0.20  # newest batches by start time form the locked hold-out
    interval: float = 0.80
    n_trials: int = 30
    seed: int = 7
    cv_folds: int = 4  # out-of-fold predictions (the recommender's risk model)
    calibration_fraction: float = 0.25  # newest training batches that calibrate the yield interval
    deviation_cv_folds: int = 3  # deviation: out-of-fold risks for calibration and the threshold
    no_signature_kinds: tuple[str, ...] = ("mycoplasma", "poor_donor_material", "low_transduction")
    yield_acceptance: YieldAcceptance = field(default_factory=YieldAcceptance)
    deviation_acceptance: DeviationAcceptance = field(default_factory=DeviationAcceptance)

    def as_dict(self) -> dict[str, Any]:
        """Flat dict for logging as run parameters."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_acceptance"):
                out |= {f"{f.name}.{g.name}": getattr(v, g.name) for g in fields(v)}
            else:
                out[f.name] = ",".join(v) if isinstance(v, tuple) else v
        return out


def _typed(source: str, key: str, value: Any, default: Any) -> Any:
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{source}: {key}: expected a list of strings (value: {value!r})")
        return tuple(value)
    if isinstance(default, bool) or not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{source}: {key}: expected a number (value: {value!r})")
    if isinstance(default, int) and not isinstance(value, int):
        raise ConfigError(f"{source}: {key}: expected an integer (value: {value!r})")
    if value < 0:
        raise ConfigError(f"{source}: {key}: must not be negative (value: {value!r})")
    return value


def _section(source: str, prefix: str, obj: Any, doc: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{source}: {name}: unknown key (typo?) (value: {value!r})")
        default = getattr(obj, key)
        if hasattr(default, "__dataclass_fields__"):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {name}: expected a table (value: {value!r})")
            changes[key] = _section(source, f"{name}.", default, value)
        else:
            changes[key] = _typed(source, name, value, default)
    return replace(obj, **changes)


def load_config(path: str | Path | None = None) -> ModelConfig:
    """Defaults, overridden by a TOML file when given; errors name the file, key and value."""
    cfg = ModelConfig()
    if path is None:
        return cfg
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read model config: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    cfg = _section(str(p), "", cfg, doc)
    a = cfg.yield_acceptance
    if not 0 < cfg.interval < 1:
        raise ConfigError(f"{p}: interval: must lie in (0, 1) (value: {cfg.interval!r})")
    if a.min_coverage > a.max_coverage:
        raise ConfigError(f"{p}: yield_acceptance.min_coverage: above max_coverage (value: {a.min_coverage!r})")
    if cfg.bucket_min < 1 or 60 % cfg.bucket_min:
        raise ConfigError(f"{p}: bucket_min: must divide 60 (value: {cfg.bucket_min!r})")
    return cfg
