"""Replay historian data through an alarm engine in time order (tests, back-fill, `cellwatch alarms run`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from plant.alarms.engine import AlarmEngine
from plant.historian import Historian


@dataclass(frozen=True, slots=True)
class ReplayStats:
    samples: int
    events: int
    annunciated: int
    seconds: float
    start: datetime | None
    end: datetime | None

    @property
    def rate(self) -> float:
        """Samples evaluated per second of wall time."""
        return self.samples / self.seconds if self.seconds > 0 else float("inf")


def replay(historian: Historian, engine: AlarmEngine, start: datetime | None = None, end: datetime | None = None,
           chunk: timedelta = timedelta(hours=6), progress: Callable[[datetime], None] | None = None) -> ReplayStats:
    """Feed [start, end) to the engine chunk by chunk (each sorted by time), as a live plant would."""
    bounds = historian.time_bounds()
    if bounds is None:
        return ReplayStats(0, 0, 0, 0.0, start, end)
    start = start or bounds[0]
    end = end or bounds[1] + timedelta(microseconds=1)
    t0 = time.perf_counter()
    samples = events = ann = 0
    at = start
    while at < end:
        nxt = min(at + chunk, end)
        frame = historian.scan(start=at, end=nxt).sort("ts").collect()
        if frame.height:
            evs = engine.process(frame)
            samples += frame.height
            events += len(evs)
            ann += sum(e.annunciated for e in evs)
        if progress is not None:
            progress(nxt)
        at = nxt
    return ReplayStats(samples, events, ann, time.perf_counter() - t0, start, end)


def frames(historian: Historian, start: datetime, end: datetime, chunk: timedelta) -> list[pl.DataFrame]:
    """The replay's frames, materialised (the benchmark times evaluation apart from reading)."""
    out, at = [], start
    while at < end:
        nxt = min(at + chunk, end)
        out.append(historian.read(start=at, end=nxt).sort("ts"))
        at = nxt
    return [f for f in out if f.height]
