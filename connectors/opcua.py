"""OPC UA connector: data-change subscriptions on a site endpoint's tags, with quality and both timestamps.

asyncua's auto-reconnect restores the session and re-creates the subscription after a loss; this class
turns its client states into the connector state machine, marks every tag MISSING when the connection
goes (the gap, never filled with invented values) and STALE when a tag stops updating. The first
connection (and a client asyncua gave up on) is retried here with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from datetime import datetime

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription

from connectors.base import Backoff, ConnectorState, Emit, Freshness, OnEvent, SampleBatch, StateTracker, gap_markers
from connectors.opcua_session import (
    ClientSecurity, OpcUaConfigError, explain, log, make_client, resolve, unit_mismatches,
)
from plant.samples import Quality, Sample, utcnow
from plant.site import Endpoint, Site, Tag

_HANDLE0 = 1000  # client handles are ours: tag index + _HANDLE0
_OVERFLOW = 0x480  # StatusCode InfoType = DataValue (0x400) with the Overflow bit (0x80), OPC UA Part 4 7.39


QUEUE_SECONDS = 4.0  # server-side buffer per item: a publish this late still loses nothing


def queue_size(interval_ms: float, sampling_ms: float) -> int:
    """Monitored-item queue: QUEUE_SECONDS of values at the sampling rate, at least 10 and 2 publishes' worth;
    a server discards the oldest values when the client falls behind by more."""
    return max(10, math.ceil(QUEUE_SECONDS * 1000 / sampling_ms), math.ceil(2 * interval_ms / sampling_ms))


def _quality(code: ua.StatusCode) -> Quality:
    if code.is_good():
        return Quality.GOOD
    return Quality.UNCERTAIN if code.is_uncertain() else Quality.BAD


class OpcUaConnector:
    """Subscribes to one OPC UA endpoint's tags and emits each publish's data changes as one SampleBatch."""

    def __init__(self, site: Site, endpoint: Endpoint, emit: Emit, security: ClientSecurity,
                 on_event: OnEvent | None = None, tags: list[Tag] | None = None) -> None:
        if endpoint.protocol != "opcua":
            raise ValueError(f"endpoint {endpoint.id} is {endpoint.protocol}, not opcua")
        self.endpoint, self.emit, self.security = endpoint, emit, security
        self.endpoint_id = endpoint.id
        self.tags = tags if tags is not None else [
            t for t in site.tags.values() if t.opcua is not None and t.opcua.endpoint == endpoint.id]
        self.by_name = {t.name: t for t in self.tags}
        self._tracker = StateTracker(endpoint.id, "opcua", on_event, log)
        self._fresh = Freshness(self.by_name, self._stale_after())
        self._backoff = Backoff(endpoint.id, first_s=min(0.5, endpoint.backoff_max_s), cap_s=endpoint.backoff_max_s)
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._handles: list[str] = []
        self._mismatch: dict[str, str] = {}
        self._gap_open = False
        self.notifications = 0

    def _stale_after(self) -> dict[str, float]:
        n, pub = self.endpoint.stale_intervals, self.endpoint.interval_ms
        if not n:
            return {}
        # Only tags without a deadband: a steady value inside its deadband is rightly never reported.
        return {t.name: n * max(t.opcua.sampling_ms, pub) / 1000.0  # type: ignore[union-attr]
                for t in self.tags if not t.opcua.deadband}  # type: ignore[union-attr]

    @property
    def state(self) -> ConnectorState:
        return self._tracker.state

    @property
    def tracker(self) -> StateTracker:
        return self._tracker

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._tracker.set(ConnectorState.CONNECTING, self.endpoint.url or "")
            self._task = asyncio.create_task(self._run(), name=f"opcua:{self.endpoint_id}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Unsubscribe and disconnect (idempotent, bounded by timeout)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(self._task, timeout)
            self._task = None
        await self._disconnect(timeout)
        self._tracker.set(ConnectorState.STOPPED)

    async def _disconnect(self, timeout: float = 3.0) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def _run(self) -> None:
        ever_ready = False
        while True:
            try:
                sub = await self._connect()
            except OpcUaConfigError as exc:
                self._lost(str(exc), ConnectorState.RECONNECTING if ever_ready else ConnectorState.CONNECTING)
                await asyncio.sleep(self.endpoint.backoff_max_s)
                continue
            except Exception as exc:  # noqa: BLE001 - socket, timeout, security and status errors alike: explain, retry
                log.debug("%s: connect failed", self.endpoint_id, exc_info=True)
                await self._disconnect()
                self._lost(explain(exc, self.endpoint, self.security),
                           ConnectorState.RECONNECTING if ever_ready else ConnectorState.CONNECTING)
                await asyncio.sleep(self._backoff.next_delay())
                continue
            ever_ready = True
            self._backoff.reset()
            self._ready()
            reason = "subscription closed"
            try:
                await self._pump(sub)
            except Exception as exc:  # noqa: BLE001 - never let the connector die: mark the gap and start over
                log.exception("%s: receiving failed", self.endpoint_id)
                reason = f"receiving failed: {type(exc).__name__}: {exc}"
            finally:
                await self._disconnect()
            self._lost(reason)
            await asyncio.sleep(self._backoff.next_delay())

    async def _connect(self) -> Subscription:
        client = await make_client(self.endpoint, self.security)
        self._client = client
        client.connection_lost_callback = self._on_connection_lost
        async with asyncio.timeout(max(10.0, 4 * self.endpoint.timeout_s)):
            await client.connect()
            nodes, failed = await resolve(client, self.endpoint, self.tags)
            self._mismatch = await unit_mismatches(client, self.by_name, nodes)
        for name, why in {**failed, **self._mismatch}.items():
            log.warning("%s: %s: %s", self.endpoint_id, name, why)
        if failed:
            self.emit([Sample(n, None, Quality.BAD, None, None, utcnow(), why) for n, why in failed.items()])
        return await self._subscribe(client, nodes)

    async def _subscribe(self, client: Client, nodes: dict[str, ua.NodeId]) -> Subscription:
        ep = self.endpoint
        # queue_maxsize=0: unbounded, so a slow consumer delays values but never drops them.
        sub = await client.create_subscription(ep.interval_ms, None, queue_maxsize=0)
        self._handles = list(nodes)
        mirs = []
        for i, name in enumerate(self._handles):
            addr = self.by_name[name].opcua
            assert addr is not None
            flt = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp,
                                      DeadbandType=ua.DeadbandType.Absolute if addr.deadband else ua.DeadbandType.None_,
                                      DeadbandValue=addr.deadband)
            rv = ua.ReadValueId(NodeId=nodes[name], AttributeId=ua.AttributeIds.Value)
            queue = queue_size(ep.interval_ms, addr.sampling_ms)
            mp = ua.MonitoringParameters(ClientHandle=_HANDLE0 + i, SamplingInterval=addr.sampling_ms,
                                         QueueSize=queue, DiscardOldest=True, Filter=flt)
            mirs.append(ua.MonitoredItemCreateRequest(ItemToMonitor=rv, MonitoringMode=ua.MonitoringMode.Reporting,
                                                      RequestedParameters=mp))
        bad = []
        for i in range(0, len(mirs), 1000):
            results = await sub.create_monitored_items(mirs[i:i + 1000])
            bad += [(self._handles[i + j], r) for j, r in enumerate(results) if isinstance(r, ua.StatusCode)]
        if bad:
            self.emit([Sample(n, None, Quality.BAD, None, None, utcnow(), f"{r.name}: cannot monitor")
                       for n, r in bad])
        return sub

    def _ready(self) -> None:
        self._gap_open = False
        self._fresh.restart()
        self._tracker.set(ConnectorState.READY, self.endpoint.url or "")

    def _lost(self, reason: str, state: ConnectorState = ConnectorState.RECONNECTING) -> None:
        if not self._gap_open:
            self._gap_open = True
            self.emit(gap_markers(self.by_name, reason))
        self._tracker.set(state, reason)

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._lost(f"connection lost: {type(exc).__name__}: {exc}"[:200])

    async def _pump(self, sub: Subscription) -> None:
        client = self._client
        assert client is not None
        watch = asyncio.create_task(self._watch_state(client))
        stale = asyncio.create_task(self._watch_stale())
        batched = _deliver_in_bursts(sub)
        queue = getattr(sub, "_event_queue", None)  # else drained in bulk below when asyncua exposes it
        try:
            async for ev in sub:
                if type(ev) is _Burst:  # one publish's data changes at once (the normal path)
                    if batch := self._columns(ev.items):
                        self.emit(batch)
                    continue
                events = [ev]
                while not batched and queue is not None and len(events) < 5000:
                    try:
                        events.append(queue.get_nowait())
                    except asyncio.QueueEmpty:
                        break
                items = []
                for e in events:
                    if isinstance(e, DataChangeEvent):
                        items.append(e.data.monitored_item)
                    elif isinstance(e, _Burst):
                        items.extend(e.items)
                    elif isinstance(e, StatusChangeEvent):
                        log.info("%s: subscription status %s", self.endpoint_id, e.notification.Status)
                    elif e is None:  # the subscription was closed
                        if items and (batch := self._columns(items)):
                            self.emit(batch)
                        return
                if items and (batch := self._columns(items)):
                    self.emit(batch)
        finally:
            watch.cancel()
            stale.cancel()

    async def _watch_state(self, client: Client) -> None:
        async with client.subscribe_state() as states:
            while True:
                st = await states.next_change()
                if st is UaClientState.CONNECTED:
                    if self._tracker.state == ConnectorState.RECONNECTING:
                        self._ready()
                elif st in (UaClientState.DISCONNECTED, UaClientState.RECONNECTING):
                    self._lost(f"connection lost ({st.value})")

    async def _watch_stale(self) -> None:
        period = max(0.2, self.endpoint.interval_ms / 1000.0)
        while True:
            await asyncio.sleep(period)
            if self._tracker.state == ConnectorState.READY:
                marks = self._fresh.check()
                if marks:
                    self.emit(marks)

    def _columns(self, items: list[ua.MonitoredItemNotification]) -> SampleBatch:
        """Data-change notifications -> one SampleBatch: one receive time and one freshness clock per burst,
        and per value only list appends (no object per sample); the common case (Good, a float) is inlined."""
        now, mono = utcnow(), time.monotonic()
        handles, n_handles, mismatch = self._handles, len(self._handles), self._mismatch
        tags: list[str] = []
        values: list[float | None] = []
        quals: list[str] = []
        stats: list[str | None] = []
        srcs: list[datetime | None] = []
        srvs: list[datetime | None] = []
        good = Quality.GOOD.value
        for it in items:
            i = it.ClientHandle - _HANDLE0
            if not 0 <= i < n_handles:  # not one of ours (asyncua skips these too)
                continue
            name, dv = handles[i], it.Value
            code, var = dv.StatusCode, dv.Value
            value = var.Value if var is not None else None
            if (code is None or code.value == 0) and type(value) is float and not mismatch:
                q, st = good, None
            else:
                value, q, st = self._judge(name, code, value)
            tags.append(name)
            values.append(value)
            quals.append(q)
            stats.append(st)
            srcs.append(dv.SourceTimestamp)
            srvs.append(dv.ServerTimestamp)
        self.notifications += len(tags)
        self._fresh.touch_many(tags, mono)
        return SampleBatch(tags, values, quals, stats, srcs, srvs, now)

    def _judge(self, name: str, code: ua.StatusCode | None, value: object) -> tuple[float | None, str, str | None]:
        """(value, quality, status) of a value that is not simply a Good float."""
        code = code or ua.StatusCode()
        quality, status = _quality(code), "" if code.is_good() else code.name
        if code.value & _OVERFLOW == _OVERFLOW:  # the server's queue overflowed: values before this were discarded
            status = (status + "; " if status else "") + "overflow: earlier values discarded by the server"
        if quality == Quality.BAD:
            value = None
        elif isinstance(value, (bool, int, float)):
            value = float(value)
        else:
            quality, status, value = Quality.BAD, f"not a number: {type(value).__name__}", None
        if name in self._mismatch and quality == Quality.GOOD:
            quality, status = Quality.UNCERTAIN, self._mismatch[name]
        return value, quality.value, status or None  # type: ignore[return-value]


class _Burst:
    """The data changes of one publish response, delivered as one event (see _deliver_in_bursts)."""

    __slots__ = ("items",)

    def __init__(self, items: list[ua.MonitoredItemNotification]) -> None:
        self.items = items


def _deliver_in_bursts(sub: Subscription) -> bool:
    """Make the subscription queue one _Burst per DataChangeNotification instead of a DataChangeEvent per value.

    asyncua's iterator wraps every value in two objects and one queue put/get, which costs about as much CPU
    as the rest of the ingest path. The hook is the subscription's own per-notification step, so replays
    after a reconnect (same Subscription object) are batched too; False when this asyncua lacks it."""
    if not callable(getattr(sub, "_explode_datachange", None)):
        return False

    def explode(datachange: ua.DataChangeNotification):  # noqa: ANN202 - a generator, as asyncua expects
        if datachange.MonitoredItems:
            yield _Burst(datachange.MonitoredItems)

    sub._explode_datachange = explode  # type: ignore[method-assign]
    return True
