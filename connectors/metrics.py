"""Ingest health and throughput as Prometheus metrics, served by a small asyncio HTTP endpoint.

GET /metrics: Prometheus text format. GET /health: 200 "ok" when the historian takes writes and every
connector is READY, else 503 with the reason (so a load balancer or a watchdog can act on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString

from connectors.base import ConnectorState

log = logging.getLogger("cellwatch.connectors.metrics")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, float("inf"))


class IngestMetrics:
    """The ingest service's counters and gauges, in their own registry (several services per process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.received = Counter("cellwatch_ingest_samples_received", "Samples received from connectors",
                                ["endpoint"], registry=r)
        self.duplicates = Counter("cellwatch_ingest_duplicates_dropped", "Samples dropped as (tag, ts) duplicates",
                                  registry=r)
        self.written = Counter("cellwatch_ingest_samples_written", "Samples committed to the historian", registry=r)
        self.historian_errors = Counter("cellwatch_ingest_historian_errors", "Failed historian writes", registry=r)
        self.corrupt = Counter("cellwatch_ingest_spool_corrupt_files", "Spool files moved to corrupt/", registry=r)
        self.rate = Gauge("cellwatch_ingest_samples_per_second", "Samples committed per second (10 s window)",
                          registry=r)
        self.lag = Gauge("cellwatch_ingest_lag_seconds", "Age of the oldest sample not yet in the historian",
                         registry=r)
        self.depth = Gauge("cellwatch_ingest_buffer_depth_samples", "Samples in the store-and-forward buffer",
                           registry=r)
        self.files = Gauge("cellwatch_ingest_buffer_files", "Files in the store-and-forward buffer", registry=r)
        self.historian_ok = Gauge("cellwatch_ingest_historian_healthy", "1 while the historian takes writes",
                                  registry=r)
        self.latency = BulkHistogram("cellwatch_ingest_latency_seconds",
                                     "Server (else receive) timestamp to historian commit", _LATENCY_BUCKETS, r)
        self.state = Gauge("cellwatch_connector_state", "1 for the current state of each connector",
                           ["endpoint", "protocol", "state"], registry=r)
        self.historian_ok.set(1)
        self._window: deque[tuple[float, int]] = deque()

    def set_state(self, endpoint: str, protocol: str, state: str) -> None:
        for s in ConnectorState:
            self.state.labels(endpoint, protocol, s.value).set(1 if s.value == state else 0)

    def committed(self, n: int) -> None:
        now = time.monotonic()
        self.written.inc(n)
        self._window.append((now, n))
        while self._window and now - self._window[0][0] > 10.0:
            self._window.popleft()
        span = max(1.0, now - self._window[0][0]) if self._window else 1.0
        self.rate.set(sum(k for _, k in self._window) / span)

    def observe_latencies(self, seconds: np.ndarray) -> None:
        self.latency.observe_many(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BulkHistogram:
    """A Prometheus histogram fed whole arrays at once: prometheus_client's Histogram takes one observe()
    call (and one lock) per value, which at 10,000 commits/s was a visible share of the ingest CPU."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.array([b for b in buckets if not math.isinf(b)], dtype=np.float64)
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many(np.array([value], dtype=np.float64))

    def observe_many(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        values = np.asarray(values, dtype=np.float64)
        # side="left": a value equal to a bound belongs to that bucket (Prometheus buckets are "le").
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts), self._sum
        les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=list(zip(les, map(int, cumulative))),
                                    sum_value=total)


class MetricsServer:
    """HTTP endpoint for /metrics and /health on a local port (port 0 picks a free one)."""

    def __init__(self, metrics: IngestMetrics, health: Callable[[], tuple[bool, str]], host: str = "127.0.0.1",
                 port: int = 9108) -> None:
        self.metrics, self.health, self.host, self.port = metrics, health, host, port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path.startswith("/metrics"):
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.metrics.render()
            elif path.startswith("/health"):
                ok, why = self.health()
                status, ctype = ("200 OK" if ok else "503 Service Unavailable"), "text/plain; charset=utf-8"
                body = (why or "ok").encode() + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics or /health\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
