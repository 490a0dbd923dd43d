"""The ingest service: every connector of a site, concurrently, into the historian through a durable buffer.

Flow: connectors emit Samples (OPC UA: a SampleBatch of columns per publish) -> duplicates by (tag, source
timestamp) are dropped -> every `flush_s` the new samples are written to the spool (fsync; from then on they
are *accepted*) -> spool files are committed to the historian in order and deleted only afterwards. When the
historian refuses writes the spool grows and is replayed, in order, once writes succeed again, also after a
restart. Disk I/O and frame building run in worker threads (asyncio.to_thread) so fsyncs never stall the
connectors' event loop; nothing on the loop thread does work per sample beyond the duplicate check.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from connectors.base import (
    Connector,
    ConnectorState,
    Emit,
    SampleBatch,
    batches_to_frame,
)
from connectors.metrics import IngestMetrics, MetricsServer
from connectors.modbus import ModbusConnector
from connectors.opcua import OpcUaConnector
from connectors.opcua_session import ClientSecurity
from connectors.spool import Spool, SpoolError, SpoolFile
from plant.connector_log import ConnectorEvent, add_connector_events
from plant.historian import Historian
from plant.records import Records
from plant.samples import Quality, Sample, samples_to_frame, utcnow
from plant.secrets import client_credentials
from plant.site import Site

log = logging.getLogger("cellwatch.connectors.ingest")
_EPOCH, _US = datetime(1970, 1, 1, tzinfo=timezone.utc), timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Tuning of the service; defaults suit a plant of a few thousand tags."""

    flush_s: float = 0.5  # how often received samples are made durable (the acceptance point)
    max_commit_rows: int = 500_000  # rows per historian append
    retry_max_s: float = 5.0  # cap of the retry delay while the historian refuses writes
    compact_s: float = 600.0  # historian compaction period (0 = never)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9108  # None = no metrics endpoint; 0 = any free port
    record_latency: bool = False  # keep every commit latency in .latencies (benchmarks)
    # After start-up, move the start-up heap (asyncua's type tables, imports, the site) out of the cyclic
    # garbage collector's sight: a full collection then scans only what the service allocates. Without it a
    # full collection took 0.5-1.4 s of the event loop at 10,000 values/s (decoded notifications promote
    # fast), long enough for the loop to fall seconds behind. Process-wide; once per process.
    gc_freeze: bool = True


_frozen = False


def build_connectors(site: Site, emit_for: Callable[[str], Emit],
                     on_event: Callable[[ConnectorEvent], None], pki: Path | None, secrets: Path | None,
                     endpoints: list[str] | None = None) -> list[Connector]:
    """One connector per endpoint of the site that has tags (optionally only the given endpoint ids)."""
    used = {t.opcua.endpoint for t in site.tags.values() if t.opcua} | \
        {t.modbus.endpoint for t in site.tags.values() if t.modbus}
    wanted = set(endpoints) if endpoints else used
    if unknown := wanted - set(site.endpoints):
        raise ValueError(f"{site.source}: no endpoint(s) {sorted(unknown)}; known: {sorted(site.endpoints)}")
    out: list[Connector] = []
    for ep in site.endpoints.values():
        if ep.id not in wanted or ep.id not in used:
            continue
        if ep.protocol == "opcua":
            sec = ClientSecurity(pki, client_credentials(ep.id, secrets))
            out.append(OpcUaConnector(site, ep, emit_for(ep.id), sec, on_event))
        else:
            out.append(ModbusConnector(site, ep, emit_for(ep.id), on_event))
    return out


class IngestService:
    """Runs the connectors of a site and forwards their samples to the historian without loss."""

    def __init__(self, site: Site, historian: Historian, spool_dir: Path, records: Records | None = None,
                 pki: Path | None = None, secrets: Path | None = None, settings: IngestSettings = IngestSettings(),
                 endpoints: list[str] | None = None) -> None:
        self.site, self.historian, self.records, self.settings = site, historian, records, settings
        self.spool = Spool(spool_dir)
        self.metrics = IngestMetrics()
        self.connectors = build_connectors(site, self._emitter, self._on_event, pki, secrets, endpoints)
        self.tags = [t for c in self.connectors for t in _tag_names(c)]
        self._pending: list[list[Sample] | SampleBatch] = []  # arrival order; lists of Samples or batches
        self._pending_rows = 0
        self._pending_since: float | None = None
        self._last: dict[str, datetime] = {}
        self._recent: dict[str, deque[datetime]] = {}
        self._suspect = True  # the first commit after a start is checked against the historian
        self._cache: dict[int, pl.DataFrame] = {}
        self._accepted_at: dict[int, float] = {}
        self._events: list[ConnectorEvent] = []
        self._historian_fault: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._server: MetricsServer | None = None
        self.latencies: list[float] = []
        self.committed_total = 0

    # ---- intake --------------------------------------------------------------------------------

    def _emitter(self, endpoint: str) -> Emit:
        counter = self.metrics.received.labels(endpoint)

        def emit(samples: list[Sample] | SampleBatch) -> None:
            counter.inc(len(samples))
            self._accept(samples)
        return emit

    def _accept(self, samples: list[Sample] | SampleBatch) -> None:
        """Drop re-sent (tag, source ts) pairs and queue the rest for the spool."""
        if isinstance(samples, SampleBatch):
            keep = self._fresh_rows(samples.tag, samples.source_ts)
            part: list[Sample] | SampleBatch = samples if keep is None else samples.select(keep)
        else:
            keep = self._fresh_rows([s.tag for s in samples], [s.source_ts for s in samples])
            part = samples if keep is None else [samples[i] for i in keep]
        if not part:
            return
        if not self._pending:
            self._pending_since = time.monotonic()
        if isinstance(part, list) and self._pending and isinstance(self._pending[-1], list):
            self._pending[-1].extend(part)
        else:
            self._pending.append(part if isinstance(part, SampleBatch) else list(part))
        self._pending_rows += len(part)

    def _fresh_rows(self, tags: list[str], source_ts: list[datetime | None]) -> list[int] | None:
        """Indices of the rows to keep, or None for all of them (the common case: no copy)."""
        last_of, recent_of = self._last, self._recent
        drop: list[int] = []
        for i, (tag, ts) in enumerate(zip(tags, source_ts)):
            if ts is None:  # produced here (gap, stale, a Modbus read): nothing re-sends it
                continue
            last = last_of.get(tag)
            if last is None or ts > last:
                last_of[tag] = ts
                recent = recent_of.get(tag)
                if recent is None:
                    recent = recent_of[tag] = deque(maxlen=64)
                recent.append(ts)
            elif ts == last or ts in recent_of.get(tag, ()):
                drop.append(i)
            else:  # older than what we have: maybe stored before a restart; checked at commit
                self._suspect = True
        if not drop:
            return None
        self.metrics.duplicates.inc(len(drop))
        gone = set(drop)
        return [i for i in range(len(tags)) if i not in gone]

    @property
    def pending_rows(self) -> int:
        """Samples received but not yet in the spool."""
        return self._pending_rows

    def _on_event(self, event: ConnectorEvent) -> None:
        self.metrics.set_state(event.endpoint, event.protocol, event.to_state)
        self._events.append(event)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Replay what a previous run left, then start connectors, writer and metrics endpoint."""
        self._seed_dedupe()
        if self.spool.mark_running():
            log.warning("the previous ingest run did not stop cleanly; marking a gap on every tag")
            now = utcnow()
            self._accept([Sample(t, None, Quality.MISSING, None, None, now,
                                 "ingest restarted after an unclean stop: values before this may be missing")
                          for t in self.tags])
        s = self.settings
        global _frozen
        if s.gc_freeze and not _frozen:
            gc.collect()
            gc.freeze()
            _frozen = True
        if s.metrics_port is not None:
            self._server = MetricsServer(self.metrics, self.health, s.metrics_host, s.metrics_port)
            await self._server.start()
        self._tasks.append(asyncio.create_task(self._writer(), name="ingest-writer"))
        if s.compact_s:
            self._tasks.append(asyncio.create_task(self._compactor(), name="ingest-compactor"))
        for c in self.connectors:
            await c.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop connectors, make everything received durable, commit what the historian takes."""
        await asyncio.gather(*(c.stop() for c in self.connectors), return_exceptions=True)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, timeout)
        self._tasks = []
        await self._flush()
        await self._commit()
        await self._store_events()
        if self._server is not None:
            await self._server.stop()
        self.spool.mark_stopped()

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def health(self) -> tuple[bool, str]:
        """(healthy, reasons): the historian takes writes and every connector is READY."""
        problems = [f"historian: {self._historian_fault}"] if self._historian_fault else []
        problems += [f"{c.endpoint_id}: {c.state.value}" for c in self.connectors if c.state != ConnectorState.READY]
        return not problems, "; ".join(problems)

    # ---- writer --------------------------------------------------------------------------------

    def _seed_dedupe(self) -> None:
        self._last = dict(self.spool.last_ts())
        for sf in self.spool.pending():  # batches accepted but not yet committed by an earlier run
            try:
                df = self.spool.read(sf)
            except SpoolError as exc:
                self.spool.quarantine(sf, str(exc))
                self.metrics.corrupt.inc()
                continue
            self._cache[sf.seq] = df
            for tag, ts in _last_source_ts(df).items():
                if tag not in self._last or ts > self._last[tag]:
                    self._last[tag] = ts
        self._publish_depth()

    async def _writer(self) -> None:
        # Samples are made durable every flush_s whatever the historian does; only commits back off.
        loop = asyncio.get_running_loop()
        flush_s, due, retry_at, delay = self.settings.flush_s, loop.time(), 0.0, 0.0
        while True:
            due = max(due + flush_s, loop.time())  # when behind, go on from now rather than burst
            await asyncio.sleep(due - loop.time())
            try:
                await self._flush()
                if loop.time() >= retry_at:
                    if await self._commit():
                        delay = 0.0
                    else:
                        delay = min(self.settings.retry_max_s, max(0.5, delay * 2))
                        retry_at = loop.time() + delay
                await self._store_events()
            except Exception:  # noqa: BLE001 - e.g. the spool's own disk: keep going, nothing accepted is dropped
                log.exception("ingest writer cycle failed; retrying")
                retry_at = loop.time() + self.settings.retry_max_s

    async def _flush(self) -> None:
        """Make the received samples durable in the spool (they are accepted once this returns)."""
        if not self._pending:
            return
        batch, self._pending, rows, self._pending_rows = self._pending, [], self._pending_rows, 0
        since, self._pending_since = self._pending_since, None
        try:
            df, sf = await asyncio.to_thread(self._spool_samples, batch)
        except Exception as exc:  # noqa: BLE001 - spool disk full too: keep them in memory, retry next tick
            log.error("cannot write the spool %s: %s; %d samples held in memory", self.spool.root, exc, rows)
            self._pending = batch + self._pending
            self._pending_rows += rows
            self._pending_since = since
            return
        self._cache[sf.seq] = df
        self._accepted_at[sf.seq] = since or time.monotonic()
        self._publish_depth()

    def _spool_samples(self, parts: list[list[Sample] | SampleBatch]) -> tuple[pl.DataFrame, SpoolFile]:
        # In the worker thread: building a frame takes time (batches of columns take much less than Samples).
        frames, run = [], []
        for p in parts:
            if isinstance(p, SampleBatch):
                run.append(p)
                continue
            if run:
                frames.append(batches_to_frame(run))
                run = []
            frames.append(samples_to_frame(p))
        if run:
            frames.append(batches_to_frame(run))
        df = frames[0] if len(frames) == 1 else pl.concat(frames, rechunk=True)
        return df, self.spool.append(df)

    async def _commit(self) -> bool:
        """Append the spooled batches to the historian in order; False when the historian refused."""
        files, frames, rows = [], [], 0
        for sf in self.spool.pending():
            if files and rows + sf.rows > self.settings.max_commit_rows:
                break
            df = self._cache.get(sf.seq)
            if df is None:
                try:
                    df = await asyncio.to_thread(self.spool.read, sf)
                except SpoolError as exc:
                    self.spool.quarantine(sf, str(exc))
                    self.metrics.corrupt.inc()
                    continue
            files.append(sf)
            frames.append(df)
            rows += sf.rows
        if not files:
            return True
        batch = pl.concat(frames, rechunk=False)
        # Samples accepted meanwhile may set the flag again; files left for the next commit keep it.
        suspect, self._suspect = self._suspect, len(files) < len(self.spool.pending()) and self._suspect
        try:
            batch = await asyncio.to_thread(self._store, batch, suspect)
        except asyncio.CancelledError:  # stop() cancels the writer; the thread may still store the batch
            self._suspect = True
            raise
        except Exception as exc:  # noqa: BLE001 - disk full, permissions, a locked or missing folder: all retried
            self.metrics.historian_errors.inc()
            self.metrics.historian_ok.set(0)
            self._suspect = True  # a multi-day append may have stored part of it
            reason = f"{type(exc).__name__}: {exc}"
            if self._historian_fault is None:
                log.error("historian %s refuses writes (%s); buffering in %s", self.historian.root, reason,
                          self.spool.root)
            self._historian_fault = reason
            self._publish_depth()
            return False
        try:  # the spool's state file (fsync) and deletes: off the loop as well
            await asyncio.to_thread(lambda: self.spool.record_committed(files, _last_source_ts(batch)))
        except asyncio.CancelledError:  # stored, but still pending here: the next commit checks the historian
            self._suspect = True
            raise
        except Exception as exc:  # noqa: BLE001 - the historian has them; the spool offers them again
            log.error("cannot record a commit in the spool %s: %s; the batch will be checked against the "
                      "historian when it is offered again", self.spool.root, exc)
            self._suspect = True
            return False
        self._after_commit(files, batch)
        return True

    def _store(self, batch: pl.DataFrame, suspect: bool) -> pl.DataFrame:
        """In a worker thread: drop what the historian already holds (when suspect) and append the rest."""
        if suspect:
            batch = self._without_stored(batch)
        self.historian.append(batch)
        return batch

    def _after_commit(self, files: list[SpoolFile], batch: pl.DataFrame) -> None:
        self.spool.forget(files)
        for sf in files:
            self._cache.pop(sf.seq, None)
            self._accepted_at.pop(sf.seq, None)
        if self._historian_fault is not None:
            log.warning("historian takes writes again; replayed the buffer (%d samples in this commit)", batch.height)
            self._historian_fault = None
        self.metrics.historian_ok.set(1)
        self.metrics.committed(batch.height)
        self.committed_total += batch.height
        self._observe_latency(batch)
        self._publish_depth()

    def _observe_latency(self, batch: pl.DataFrame) -> None:
        """Commit time minus the server timestamp (else the receive time) of each committed sample."""
        now_us = (utcnow() - _EPOCH) // _US
        ref = batch.get_column("server_ts").fill_null(batch.get_column("received_ts")).drop_nulls()
        if ref.len() == 0:
            return
        ages = (now_us - ref.to_physical().to_numpy()) / 1e6  # microseconds since the epoch, as int64
        self.metrics.observe_latencies(ages)
        if self.settings.record_latency:
            self.latencies.extend(ages.tolist())

    def _without_stored(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Drop rows the historian already holds (same tag and ts): replays after a crash or a partial write."""
        lo, hi = batch["ts"].min(), batch["ts"].max()
        stored = self.historian.read(batch["tag"].unique().to_list(), lo, hi + timedelta(microseconds=1))
        stored = stored.select("tag", "ts")
        if stored.height == 0:
            return batch
        out = batch.join(stored, on=["tag", "ts"], how="anti", maintain_order="left")
        if (dropped := batch.height - out.height):
            self.metrics.duplicates.inc(dropped)
            log.info("dropped %d samples the historian already held", dropped)
        return out

    def _publish_depth(self) -> None:
        pending = self.spool.pending()
        self.metrics.depth.set(self.spool.depth + self._pending_rows)
        self.metrics.files.set(len(pending))
        oldest = [self._accepted_at[f.seq] for f in pending if f.seq in self._accepted_at]
        if self._pending_since is not None:
            oldest.append(self._pending_since)
        self.metrics.lag.set(time.monotonic() - min(oldest) if oldest else 0.0)

    async def _store_events(self) -> None:
        if not self._events or self.records is None:
            self._events.clear()
            return
        events, self._events = self._events, []
        try:
            await asyncio.to_thread(add_connector_events, self.records, events)
        except Exception as exc:  # noqa: BLE001 - the records store is down: keep the events for the next try
            log.error("cannot store %d connector events: %s", len(events), exc)
            self._events = events + self._events

    async def _compactor(self) -> None:
        while True:
            await asyncio.sleep(self.settings.compact_s)
            if self._historian_fault is None:
                try:
                    await asyncio.to_thread(self.historian.compact)
                except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; writes go on without it
                    log.warning("historian compaction failed: %s", exc)


def _last_source_ts(df: pl.DataFrame) -> dict[str, datetime]:
    """Newest timestamp per tag among samples a server sent (server_ts set): the ones that can be re-sent.
    Gap markers and Modbus reads carry local clock times and must not move the duplicate watermark."""
    sent = df.filter(pl.col("server_ts").is_not_null())
    return {tag: ts for tag, ts in sent.group_by("tag").agg(pl.col("ts").max()).iter_rows()}


def _tag_names(c: Connector) -> list[str]:
    if isinstance(c, OpcUaConnector):
        return [t.name for t in c.tags]
    if isinstance(c, ModbusConnector):
        return [rt.tag for rt in c.tags]
    return []
