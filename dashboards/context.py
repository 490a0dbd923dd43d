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
from plant.records import Records
from plant.site import Site, load_demo_site, load_site
from plant.users import Users

DATA_ENV = "CELLWATCH_DATA"
SITE_ENV = "CELLWATCH_SITE"


class PanelConfigError(RuntimeError):
    """The panel cannot start: no data folder, or no records database in it."""


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

    @property
    def uses_oidc(self) -> bool:
        """True when logins are checked by an OIDC identity provider instead of local passwords."""
        return isinstance(self.users.identity, OIDCProvider)

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.data.resolve() / 'mlflow.db'}"


def data_dir(argv: list[str] | None = None) -> Path:
    """The data folder: `--data DIR` after `streamlit run app.py --`, else $CELLWATCH_DATA."""
    args = list(argv or [])
    for i, arg in enumerate(args):
        if arg == "--data" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--data="):
            return Path(arg.split("=", 1)[1])
    value = os.environ.get(DATA_ENV)
    if not value:
        raise PanelConfigError(f"no data folder: start the panel with `cellwatch panel --data DIR` "
                               f"(or set {DATA_ENV})")
    return Path(value)


def open_plant(data: Path, site_path: str | None = None) -> Plant:
    """Open the stores of a data folder (records.db, historian/); the site file from $CELLWATCH_SITE."""
    db = data / "records.db"
    if not db.exists():
        raise PanelConfigError(f"{data}: no records.db here; run `cellwatch simulate --out {data}` "
                               "or `cellwatch demo` first")
    site_path = site_path or os.environ.get(SITE_ENV)
    site = load_demo_site() if not site_path else load_site(site_path)
    records = Records.open(db)
    audit = AuditTrail(records)
    users = Users(records, audit, identity=load_identity())
    return Plant(data=data, site=site, records=records, historian=Historian(data / "historian"), audit=audit,
                 users=users, journal=AlarmJournal(records), deviations=Deviations(records, audit, users, site),
                 recommendations=RecommendationStore(records), review=AuditReview(audit, users),
                 points=tuple(build_points(site)))
