"""The plant's stores as the panel uses them: one `Plant` per data folder (no Streamlit here)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from plant.alarms import AlarmJournal, build_points
from plant.alarms.points import AlarmPoint
from plant.audit import AuditTrail
from plant.audit_review import AuditReview
from plant.deviations import Deviations
from plant.historian import Historian
from plant.oidc import OIDCProvider, load_identity
from plant.recommendations import RecommendationStore
from plant.records import BatchRecord, Records
from plant.site import Site, load_demo_site, load_site
from plant.users import Users

DATA_ENV, HISTORY_ENV, SITE_ENV = "CELLWATCH_DATA", "CELLWATCH_HISTORY", "CELLWATCH_SITE"
MLFLOW_ENV = "CELLWATCH_MLFLOW_DB"


class PanelConfigError(RuntimeError):
    """The panel cannot start: no data folder, or no records database in it."""


@dataclass(frozen=True, slots=True)
class PanelArgs:
    """Where the panel reads: the plant's data folder, an optional older history, the MLflow store."""

    data: Path
    history: Path | None = None
    mlflow_db: Path | None = None  # default: <data>/mlflow.db

    def key(self) -> str:
        """One string naming all three, the cache key of the opened stores."""
        return "|".join(str(p.resolve()) if p else "" for p in (self.data, self.history, self.mlflow_db))

    @classmethod
    def parse(cls, key: str) -> PanelArgs:
        data, history, mlflow = key.split("|")
        return cls(Path(data), Path(history) if history else None, Path(mlflow) if mlflow else None)


@dataclass(frozen=True, slots=True)
class Source:
    """A records database and its telemetry: the live plant's, or an older history's (read only)."""

    name: str
    path: Path
    records: Records
    historian: Historian


@dataclass(frozen=True, slots=True)
class Plant:
    """Every store the pages read and write, opened once per data folder and shared by sessions."""

    data: Path
    site: Site
    records: Records
    historian: Historian
    audit: AuditTrail
    users: Users
    journal: AlarmJournal
    deviations: Deviations
    recommendations: RecommendationStore
    review: AuditReview
    points: tuple[AlarmPoint, ...]  # built once: alarm actions re-create a short-lived engine
    mlflow_db: Path
    history: Source | None = None

    @property
    def uses_oidc(self) -> bool:
        """True when logins are checked by an OIDC identity provider instead of local passwords."""
        return isinstance(self.users.identity, OIDCProvider)

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db.resolve()}"

    @property
    def live(self) -> Source:
        return Source("live", self.data, self.records, self.historian)

    def sources(self) -> list[Source]:
        """The live plant first, then the history if there is one."""
        return [self.live] + ([self.history] if self.history is not None else [])

    def source(self, name: str) -> Source:
        return self.history if name == "history" and self.history is not None else self.live

    @property
    def training_data(self) -> Path:
        """The folder models are trained and gated on: the history when there is one, else the plant's."""
        return self.history.path if self.history is not None else self.data

    def find_batch(self, batch_id: str) -> tuple[BatchRecord, Source]:
        """A batch and the source holding it; KeyError naming it when no source has it."""
        for src in self.sources():
            try:
                return src.records.get_batch(batch_id), src
            except KeyError:
                continue
        raise KeyError(f"unknown batch id: {batch_id}")


def _flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def panel_args(argv: list[str] | None = None) -> PanelArgs:
    """`--data DIR [--history DIR] [--mlflow FILE]` after `streamlit run app.py --`, else $CELLWATCH_*."""
    args = list(argv or [])
    data = _flag(args, "--data") or os.environ.get(DATA_ENV)
    if not data:
        raise PanelConfigError(f"no data folder: start the panel with `cellwatch panel --data DIR` (or set {DATA_ENV})")
    history = _flag(args, "--history") or os.environ.get(HISTORY_ENV)
    mlflow = _flag(args, "--mlflow") or os.environ.get(MLFLOW_ENV)
    return PanelArgs(Path(data), Path(history) if history else None, Path(mlflow) if mlflow else None)


def open_plant(args: PanelArgs | Path, site_path: str | None = None) -> Plant:
    """Open the stores of a data folder (records.db, historian/); the site file from $CELLWATCH_SITE."""
    args = args if isinstance(args, PanelArgs) else PanelArgs(args)
    data = args.data
    if not (data / "records.db").exists():
        raise PanelConfigError(f"{data}: no records.db here; run `cellwatch simulate --out {data}` "
                               "or `cellwatch demo` first")
    history = None
    if args.history is not None:
        if not (args.history / "records.db").exists():
            raise PanelConfigError(f"--history {args.history}: no records.db here")
        history = Source("history", args.history, Records.open(args.history / "records.db"),
                         Historian(args.history / "historian"))
    site_path = site_path or os.environ.get(SITE_ENV)
    site = load_demo_site() if not site_path else load_site(site_path)
    records = Records.open(data / "records.db")
    audit = AuditTrail(records)
    users = Users(records, audit, identity=load_identity())
    return Plant(data=data, site=site, records=records, historian=Historian(data / "historian"), audit=audit,
                 users=users, journal=AlarmJournal(records), deviations=Deviations(records, audit, users, site),
                 recommendations=RecommendationStore(records), review=AuditReview(audit, users),
                 points=tuple(build_points(site)), mlflow_db=args.mlflow_db or data / "mlflow.db", history=history)
