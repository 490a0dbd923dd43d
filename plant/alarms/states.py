"""The ISA-18.2 alarm state machine of one alarm point (pure: no I/O, no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from plant.alarms.journal import AlarmState, EventKind


class AlarmActionError(ValueError):
    """An operator action that the alarm's state does not allow; names the alarm and its state."""


@dataclass(slots=True)
class AlarmStatus:
    """Runtime state of a point: condition (after deadband/delays), ack, shelving, suppression."""

    condition: bool = False
    acked: bool = True
    shelved_until: datetime | None = None
    enabled: bool = True  # False: suppressed by design (the owner is not in the point's mode)
    value: float | None = None
    since: datetime | None = None  # when the current state began

    @property
    def state(self) -> AlarmState:
        if not self.enabled:
            return AlarmState.SUPPRESSED
        if self.shelved_until is not None:
            return AlarmState.SHELVED
        if self.condition:
            return AlarmState.ACKED if self.acked else AlarmState.UNACK
        return AlarmState.NORMAL if self.acked else AlarmState.RTN_UNACK

    @property
    def visible(self) -> bool:
        """Annunciated to the operator: neither shelved nor suppressed."""
        return self.enabled and self.shelved_until is None

    # -- process-driven transitions: return the journal event kind, or None when nothing to record
    def set_condition(self, on: bool, value: float | None) -> EventKind | None:
        if on == self.condition:
            return None
        self.condition, self.value = on, value
        if on and self.visible:
            self.acked = False  # A/D -> B: a new annunciation
        if not self.enabled:
            return None  # suppressed by design: tracked, not journaled (the limit does not apply)
        return EventKind.ACTIVE if on else EventKind.CLEAR  # B -> D, C -> A, or a shelved change

    def set_enabled(self, enabled: bool) -> EventKind | None:
        """Designed suppression follows the owner's state; quiet alarms change without a journal entry."""
        if enabled == self.enabled:
            return None
        before = self.state
        self.enabled = enabled
        if not enabled:
            self.acked = True  # a suppressed alarm leaves the operator's list
            return EventKind.SUPPRESS if before != AlarmState.NORMAL else None
        if self.condition and self.shelved_until is None:
            self.acked = False  # the limit applies again and is exceeded: annunciate
            return EventKind.UNSUPPRESS
        return None

    # -- operator and timer transitions
    def ack(self, alarm_id: str) -> EventKind:
        if self.state not in (AlarmState.UNACK, AlarmState.RTN_UNACK):
            raise AlarmActionError(f"alarm {alarm_id} is {self.state.value}: nothing to acknowledge")
        self.acked = True  # B -> C, D -> A
        return EventKind.ACK

    def shelve(self, alarm_id: str, until: datetime) -> EventKind:
        if not self.enabled:
            raise AlarmActionError(f"alarm {alarm_id} is suppressed by design: it cannot be shelved")
        self.shelved_until, self.acked = until, True
        return EventKind.SHELVE

    def unshelve(self, alarm_id: str, expired: bool = False) -> EventKind:
        if self.shelved_until is None:
            raise AlarmActionError(f"alarm {alarm_id} is {self.state.value}: it is not shelved")
        self.shelved_until = None
        if self.condition and self.enabled:
            self.acked = False  # E -> B: a still-active condition is annunciated again
        return EventKind.SHELVE_EXPIRED if expired else EventKind.UNSHELVE
