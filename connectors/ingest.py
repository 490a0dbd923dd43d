"""The ingest service: every connector of a site, concurrently, into the historian through a durable buffer.

Flow: connectors emit Samples -> duplicates by (tag, source timestamp) are dropped -> every `flush_s`
the new samples are written to the spool (fsync; from then on they are *accepted*) -> spool files are
committed to the historian in order and deleted only afterwards. When the historian refuses writes the
spool grows and is replayed, in order, once writes succeed again, also after a restart. Disk I/O runs in
worker threads (asyncio.to_thread) so fsyncs never stall the connectors' event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from connectors.base import Connector, ConnectorState
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


def build_connectors(site: Site, emit_for: Callable[[str], Callable[[list[Sample]], None]],
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
        self._pending: list[Sample] = []
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

    def _emitter(self, endpoint: str) -> Callable[[list[Sample]], None]:
        counter = self.metrics.received.labels(endpoint)

        def emit(samples: list[Sample]) -> None:
            counter.inc(len(samples))
            self._accept(samples)
        return emit

    def _accept(self, samples: list[Sample]) -> None:
        keep = []
        for s in samples:
            if s.source_ts is None:  # produced here (gap, stale, a Modbus read): nothing re-sends it
                keep.append(s)
                continue
            ts, last = s.source_ts, self._last.get(s.tag)
            if last is None or ts > last:
                self._last[s.tag] = ts
                self._recent.setdefault(s.tag, deque(maxlen=64)).append(ts)
            elif ts == last or ts in self._recent.get(s.tag, ()):
                self.metrics.duplicates.inc()
                continue
            else:  # older than what we have: maybe stored before a restart; checked at commit
                self._suspect = True
            keep.append(s)
        if keep:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.extend(keep)

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
        batch, self._pending = self._pending, []
        since, self._pending_since = self._pending_since, None
        try:
            df, sf = await asyncio.to_thread(self._spool_samples, batch)
        except Exception as exc:  # noqa: BLE001 - spool disk full too: keep them in memory, retry next tick
            log.error("cannot write the spool %s: %s; %d samples held in memory", self.spool.root, exc, len(batch))
            self._pending = batch + self._pending
            self._pending_since = since
            return
        self._cache[sf.seq] = df
        self._accepted_at[sf.seq] = since or time.monotonic()
        self._publish_depth()

    def _spool_samples(self, batch: list[Sample]) -> tuple[pl.DataFrame, SpoolFile]:
        df = samples_to_frame(batch)  # in the worker thread too: building a frame from objects takes time
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
            if suspect:
                batch = await asyncio.to_thread(self._without_stored, batch)
            await asyncio.to_thread(self.historian.append, batch)
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
        self._after_commit(files, batch)
        return True

    def _after_commit(self, files: list[SpoolFile], batch: pl.DataFrame) -> None:
        self.spool.committed(files, _last_source_ts(batch))
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
        ref = batch.select(pl.coalesce("server_ts", "received_ts")).to_series().drop_nulls()
        if ref.len() == 0:
            return
        ages = ((pl.lit(utcnow(), dtype=ref.dtype) - pl.lit(ref)).dt.total_microseconds() / 1e6)
        values = pl.select(ages).to_series().to_list()
        observe = self.metrics.latency.observe
        for v in values:
            observe(v)
        if self.settings.record_latency:
            self.latencies.extend(values)

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
        self.metrics.depth.set(self.spool.depth + len(self._pending))
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
