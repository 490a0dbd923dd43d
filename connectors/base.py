"""What every connector shares: the state machine, capped backoff, gap and stale markers, the sample sink."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from itertools import chain
from typing import Protocol

import numpy as np
import polars as pl

from plant.connector_log import ConnectorEvent
from plant.samples import SAMPLE_SCHEMA, TS_DTYPE, Quality, Sample, utcnow

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


@dataclass(slots=True)
class SampleBatch:
    """One burst of samples as columns, all received at the same moment.

    The OPC UA connector emits these instead of a Sample per value: at 10,000 values/s a frozen dataclass
    per value, and polars converting timezone-aware datetimes one by one, cost more CPU than receiving
    them. Iterating a batch still yields Samples (for taps, tests and simple sinks)."""

    tag: list[str]
    value: list[float | None]
    quality: list[str]  # Quality values
    status: list[str | None]  # None when fine
    source_ts: list[datetime | None]  # None when the source sent none (never re-sent, so never deduplicated)
    server_ts: list[datetime | None]
    received_ts: datetime

    def __len__(self) -> int:
        return len(self.tag)

    def __iter__(self) -> Iterator[Sample]:
        rec = self.received_ts
        for tag, value, q, status, src, srv in zip(self.tag, self.value, self.quality, self.status,
                                                   self.source_ts, self.server_ts):
            yield Sample(tag, value, Quality(q), src, srv, rec, status or "")

    def select(self, keep: list[int]) -> SampleBatch:
        """The rows at these indices, in this order."""
        cols = (self.tag, self.value, self.quality, self.status, self.source_ts, self.server_ts)
        return SampleBatch(*([c[i] for i in keep] for c in cols), self.received_ts)  # type: ignore[arg-type]

    def to_frame(self) -> pl.DataFrame:
        """The batch in SAMPLE_SCHEMA."""
        return batches_to_frame([self])


def batches_to_frame(batches: list[SampleBatch]) -> pl.DataFrame:
    """Consecutive batches as one frame in SAMPLE_SCHEMA, in order. Timestamps go to polars as integer
    microseconds (exact, and about five times faster than handing it aware datetimes); one frame for many
    small batches, because building a frame costs a fixed few hundred microseconds."""
    if len(batches) == 1:
        b = batches[0]
        tag, value, quality, status, src, srv = b.tag, b.value, b.quality, b.status, b.source_ts, b.server_ts
    else:
        def cat(col: str) -> list:
            return list(chain.from_iterable(getattr(b, col) for b in batches))
        tag, value, quality, status = cat("tag"), cat("value"), cat("quality"), cat("status")
        src, srv = cat("source_ts"), cat("server_ts")
    epoch, us = _EPOCH, _US
    received = np.repeat(np.array([(b.received_ts - epoch) // us for b in batches], dtype=np.int64),
                         [len(b) for b in batches])
    ts = [(s if s is not None else v) for s, v in zip(src, srv)]
    if None in ts:  # neither a source nor a server timestamp: the receive time is the best there is
        rec = [b.received_ts for b in batches for _ in range(len(b))]
        ts = [t if t is not None else r for t, r in zip(ts, rec)]
    return pl.DataFrame({
        "ts": _us_series(ts),
        "tag": pl.Series(tag, dtype=pl.String),
        "value": pl.Series(value, dtype=pl.Float64),
        "quality": pl.Series(quality, dtype=SAMPLE_SCHEMA["quality"]),
        "status": pl.Series(status, dtype=pl.String),
        "server_ts": _us_series(srv),
        "received_ts": pl.Series(received, dtype=pl.Int64).cast(TS_DTYPE),
    })


def _us_series(values: list[datetime | None]) -> pl.Series:
    epoch, us = _EPOCH, _US
    return pl.Series([None if d is None else (d - epoch) // us for d in values], dtype=pl.Int64).cast(TS_DTYPE)


Emit = Callable[["list[Sample] | SampleBatch"], None]
OnEvent = Callable[[ConnectorEvent], None]


class ConnectorState(StrEnum):
    CONNECTING = "CONNECTING"
    READY = "READY"
    RECONNECTING = "RECONNECTING"
    STOPPED = "STOPPED"


class Connector(Protocol):
    """Explicit lifecycle; BAD/STALE/MISSING samples are emitted, never dropped."""

    endpoint_id: str

    @property
    def state(self) -> ConnectorState: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Backoff:
    """Capped exponential backoff with seeded jitter (deterministic per endpoint)."""

    def __init__(self, key: str, first_s: float = 0.2, cap_s: float = 10.0) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self._rng = random.Random(zlib.crc32(key.encode()))
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.cap_s, self.first_s * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return base * (0.75 + 0.25 * self._rng.random())  # jitter so devices do not retry in lockstep

    def reset(self) -> None:
        self.attempt = 0


class StateTracker:
    """Holds a connector's state; each change is logged once and handed on as a ConnectorEvent."""

    def __init__(self, endpoint: str, protocol: str, on_event: OnEvent | None, log: logging.Logger) -> None:
        self.endpoint, self.protocol, self.on_event, self.log = endpoint, protocol, on_event, log
        self.state = ConnectorState.STOPPED
        self.reason = ""
        self.changed = asyncio.Event()

    def set(self, new: ConnectorState, reason: str = "") -> None:
        if new == self.state:
            if reason and reason != self.reason:
                self.log.debug("%s: still %s: %s", self.endpoint, new, reason)  # repeats go to debug
            return
        old, self.state, self.reason = self.state, new, reason
        level = logging.WARNING if new == ConnectorState.RECONNECTING else logging.INFO
        self.log.log(level, "%s: %s -> %s%s", self.endpoint, old, new, f" ({reason})" if reason else "")
        if self.on_event is not None:
            self.on_event(ConnectorEvent(utcnow(), self.endpoint, self.protocol, old.value, new.value, reason))
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_for(self, state: ConnectorState, timeout: float | None = None) -> None:
        """Wait until the connector is in `state`."""
        async with asyncio.timeout(timeout):
            while self.state != state:
                await self.changed.wait()


class Freshness:
    """Per-tag last-update clock: emits one STALE sample per tag when updates stop for `after_s`."""

    def __init__(self, tags: Iterable[str], after_s: dict[str, float] | float | None) -> None:
        self.tags = list(tags)
        now = time.monotonic()
        self.last = dict.fromkeys(self.tags, now)
        self.stale: set[str] = set()
        if isinstance(after_s, dict):
            self.after = after_s
        else:
            self.after = dict.fromkeys(self.tags, after_s) if after_s else {}

    def touch(self, tag: str, now: float) -> None:
        self.last[tag] = now
        self.stale.discard(tag)

    def touch_many(self, tags: list[str], now: float) -> None:
        self.last.update(dict.fromkeys(tags, now))
        if self.stale:
            self.stale.difference_update(tags)

    def restart(self) -> None:
        """Start every clock afresh (after a reconnect the gap is already marked MISSING)."""
        now = time.monotonic()
        self.last = dict.fromkeys(self.tags, now)
        self.stale.clear()

    def check(self) -> list[Sample]:
        """STALE samples for tags that just went stale."""
        now, out = time.monotonic(), []
        ts = utcnow()
        for tag, limit in self.after.items():
            if limit and tag not in self.stale and now - self.last[tag] > limit:
                self.stale.add(tag)
                out.append(Sample(tag, None, Quality.STALE, None, None, ts, f"no update for {limit:g} s"))
        return out


def gap_markers(tags: Iterable[str], reason: str) -> list[Sample]:
    """One MISSING sample per tag: the start of a gap, stamped when the loss was seen."""
    ts = utcnow()
    return [Sample(t, None, Quality.MISSING, None, None, ts, reason[:200]) for t in tags]


class QueueSink:
    """A sink for `Emit` that a consumer reads with `async for sample in sink`."""

    def __init__(self) -> None:
        self._q: asyncio.Queue[Sample] = asyncio.Queue()

    def __call__(self, samples: list[Sample] | SampleBatch) -> None:
        for s in samples:
            self._q.put_nowait(s)

    async def __aiter__(self) -> AsyncIterator[Sample]:
        while True:
            yield await self._q.get()
