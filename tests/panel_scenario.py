"""A small live plant for the panel's tests and benchmark: twin history, then a live tail with batches
running (recorded as they go, as a plant's MES would), users for every role, alarms replayed, a deviation
and one pending recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from argon2 import PasswordHasher

from plant.alarms import AlarmEngine, AlarmJournal, windows_from_batches
from plant.alarms.replay import replay
from plant.audit import AuditTrail
from plant.deviations import Deviations
from plant.historian import Historian
from plant.identity import LocalPasswords
from plant.recommendations import Recommendation, RecommendationStore
from plant.records import Records
from plant.sim.faults import Injection
from plant.sim.history import generate_history
from plant.sim.live import LiveTwin
from plant.sim.live_records import LiveRecorder
from plant.site import Site, load_demo_site
from plant.users import Users

UTC = timezone.utc
IDENTITY_FILE = Path(__file__).with_name("identity_fast.toml")  # the same argon2 costs as FAST
FAST = LocalPasswords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
USERS = {  # username: (full name, role, password)
    "root": ("Ada Admin", "admin", "admin-pass-9876"),
    "olga": ("Olga Operator", "operator", "operate-pass-1234"),
    "ed": ("Ed Engineer", "engineer", "engine-pass-1234"),
    "quinn": ("Quinn QA", "qa", "quality-pass-1234"),
    "dana": ("Dana Scientist", "data_scientist", "science-pass-1234"),
}
BY_ROLE = {role: name for name, (_, role, _) in USERS.items()}


@dataclass(frozen=True, slots=True)
class Scenario:
    data: Path
    history_end: datetime
    now: datetime
    running: dict[str, str]  # unit -> batch id running at `now`
    recommendation_id: str
    deviation_id: str


class LivePlant:
    """The live twin writing into a data folder minute by minute, its records kept current as it goes."""

    def __init__(self, site: Site, data: Path, start: datetime, seed: int,
                 injections: list[Injection] | None = None) -> None:
        self.twin = LiveTwin(site, seed, start, injections)
        self.historian = Historian(data / "historian")
        self.records = Records.open(data / "records.db")
        self.recorder = LiveRecorder(self.records, self.twin)
        self.writer = self.historian.writer(max_rows=200_000, max_age_s=3600)

    def run(self, minutes: int, sync_every: int = 60) -> None:
        """Advance `minutes` of plant time; the samples are stored (flushed) before this returns."""
        for minute in range(minutes):
            self.writer.append(self.twin.step())
            if minute % sync_every == 0:
                self.recorder.sync()
        self.recorder.sync()
        self.writer.flush()

    @property
    def now(self) -> datetime:
        return self.twin.now

    def running(self) -> dict[str, str]:
        """unit -> batch running now."""
        return {s.unit: s.batch_id for s in self.twin.status() if s.batch_id}

    def close(self) -> None:
        self.writer.close()
        self.records.close()


def build(data: Path, batches: int = 10, seed: int = 3, live_hours: float = 30.0, workers: int = 1,
          keep_live: bool = False) -> tuple[Scenario, LivePlant | None]:
    """Generate the whole scenario into `data` (20-30 s for the defaults); keep_live: the live plant stays
    open to run on (close it when done), else it is closed."""
    site = load_demo_site()
    result = generate_history(site, data, batches, seed, workers=workers)
    now = result.end + timedelta(hours=live_hours)
    # faults under way at `now`, so the pages have excursions, alarms and an alarm-opened deviation to show
    faults = [Injection("temperature_excursion", "BR04", now - timedelta(hours=3), 8.0),
              Injection("co2_supply_failure", "BR06", now - timedelta(hours=2), 6.0)]
    live = LivePlant(site, data, result.end, seed, faults)
    live.run(int(live_hours * 60))
    running = live.running()
    if not keep_live:
        live.close()
    with Records.open(data / "records.db") as records:
        audit = AuditTrail(records)
        users = Users(records, audit, identity=FAST)
        users.init_admin("root", *USERS["root"][:1], USERS["root"][2])
        for name, (full, role, pw) in USERS.items():
            if name != "root":
                users.create("root", name, full, role, pw)
        journal = AlarmJournal(records)
        devs = Deviations(records, audit, users, site)
        engine = AlarmEngine(site, journal=journal, audit=audit, users=users,
                             unit_windows=windows_from_batches(records.batches()), listeners=[devs.on_alarm])
        replay(Historian(data / "historian"), engine, result.end - timedelta(hours=6), now)
        unit = min(running)
        batch = running[unit]
        olga = users.authenticate("olga", USERS["olga"][2])
        dev = devs.open(olga, f"{unit}: culture bag wrinkle seen at inspection",
                        "Operator saw a fold in the bag during the daily check; no leak found.",
                        now - timedelta(hours=2), owner=unit, reason="found at daily inspection")
        [rec_id] = RecommendationStore(records).add([recommendation(batch, unit, now)])
    return Scenario(data, result.end, now, running, rec_id, dev.deviation_id), live if keep_live else None


def recommendation(batch_id: str, unit: str, now: datetime, proposed: float = 37.5) -> Recommendation:
    """A pending temperature-setpoint advice with its interval and drivers."""
    return Recommendation(batch_id, unit, "TEMP_SP", 37.0, proposed, 0.06, 0.02, 0.11, -0.02,
                          (("temp_mean_24h", 0.09), ("vcd_slope_24h", 0.04), ("ph_mean_24h", -0.02)),
                          "batch_yield/1", "cd" * 32, now - timedelta(minutes=20))
