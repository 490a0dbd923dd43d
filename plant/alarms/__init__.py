"""Alarm management (ISA-18.2): points from the site, vectorised evaluation, states, journal, KPIs."""

from plant.alarms.engine import AlarmEngine, Risk, RiskHook, windows_from_batches
from plant.alarms.journal import AlarmEvent, AlarmJournal, AlarmState, EventKind
from plant.alarms.points import AlarmPoint, AlarmSettings, Condition, Level, Mode, Priority, build_points, settings
from plant.alarms.states import AlarmActionError

__all__ = ["AlarmActionError", "AlarmEngine", "AlarmEvent", "AlarmJournal", "AlarmPoint", "AlarmSettings",
           "AlarmState", "Condition", "EventKind", "Level", "Mode", "Priority", "Risk", "RiskHook", "build_points",
           "settings", "windows_from_batches"]
