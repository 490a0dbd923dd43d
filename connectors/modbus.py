"""Modbus TCP connector: one poller per device, block reads from a validated register map.

Each device has its own connection, task and timeout, so a slow or dead device never stalls the others.
A lost connection marks every tag of the device MISSING (the gap), timeouts without a reply make tags
STALE after `stale_intervals` polls, and an exception response becomes BAD samples naming the exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from connectors.base import Backoff, ConnectorState, Emit, Freshness, OnEvent, StateTracker, gap_markers
from connectors.modbus_map import Block, device_tags, per_tag_blocks, plan_blocks
from plant.modbus_codec import CodecError, decode
from plant.samples import Quality, Sample, utcnow
from plant.site import Endpoint, Site

log = logging.getLogger("cellwatch.connectors.modbus")
# pymodbus logs every failed connect and timeout itself; this connector logs each fault once instead.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
    5: "acknowledge", 6: "server device busy", 8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class _Lost(Exception):
    """The connection to the device is gone (closed, refused, or no reply for too long)."""


class ModbusConnector:
    """Polls one Modbus device (endpoint) and emits samples; reconnects on its own."""

    def __init__(self, site: Site, endpoint: Endpoint, emit: Emit, on_event: OnEvent | None = None,
                 *, grouping: bool = True) -> None:
        if endpoint.protocol != "modbus":
            raise ValueError(f"endpoint {endpoint.id} is {endpoint.protocol}, not modbus")
        self.endpoint, self.emit = endpoint, emit
        self.endpoint_id = endpoint.id
        self.tags = device_tags(site, endpoint)
        self.blocks: list[Block] = (plan_blocks(self.tags, endpoint.max_block, endpoint.max_gap) if grouping
                                    else per_tag_blocks(self.tags))
        self.interval_s = endpoint.interval_ms / 1000.0
        self._tracker = StateTracker(endpoint.id, "modbus", on_event, log)
        after = endpoint.stale_intervals * self.interval_s if endpoint.stale_intervals else None
        self._fresh = Freshness([rt.tag for rt in self.tags], after)
        self._backoff = Backoff(endpoint.id, first_s=min(0.2, endpoint.backoff_max_s), cap_s=endpoint.backoff_max_s)
        self._client: AsyncModbusTcpClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.polls = 0

    @property
    def state(self) -> ConnectorState:
        return self._tracker.state

    @property
    def tracker(self) -> StateTracker:
        return self._tracker

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._tracker.set(ConnectorState.CONNECTING, f"{self.endpoint.host}:{self.endpoint.port}")
            self._task = asyncio.create_task(self._run(), name=f"modbus:{self.endpoint_id}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop polling and close the connection (idempotent, bounded by timeout)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(self._task, timeout)
            self._task = None
        self._close()
        self._tracker.set(ConnectorState.STOPPED)

    # ---- connection ------------------------------------------------------------------------

    async def connect(self) -> bool:
        """Open the TCP connection (no retries here: the run loop backs off)."""
        self._close()
        ep = self.endpoint
        # reconnect_delay=0: pymodbus must not reconnect behind our back; this state machine owns it.
        self._client = AsyncModbusTcpClient(ep.host or "", port=ep.port or 502, timeout=ep.timeout_s, retries=0,
                                            reconnect_delay=0, name=ep.id)
        try:
            return bool(await asyncio.wait_for(self._client.connect(), ep.timeout_s * 2))
        except (TimeoutError, OSError, ModbusException):
            return False

    def _close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    async def _run(self) -> None:
        ever_ready, marked = False, False
        where = f"{self.endpoint.host}:{self.endpoint.port}"
        while True:
            if not await self.connect():
                reason = f"cannot connect to {where} (device {self.endpoint.device_id})"
                if not marked:
                    self.emit(gap_markers(self._fresh.tags, reason))
                    marked = True
                self._tracker.set(ConnectorState.RECONNECTING if ever_ready else ConnectorState.CONNECTING, reason)
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._backoff.reset()
            self._fresh.restart()
            ever_ready, marked = True, False
            self._tracker.set(ConnectorState.READY, where)
            try:
                await self._poll_loop()
            except Exception as exc:  # noqa: BLE001 - _Lost, or anything unexpected: mark the gap, reconnect
                if not isinstance(exc, _Lost):
                    log.exception("%s: polling failed", self.endpoint_id)
                reason = str(exc) if isinstance(exc, _Lost) else f"polling failed: {type(exc).__name__}: {exc}"
                self._close()
                self.emit(gap_markers(self._fresh.tags, reason))
                marked = True
                self._tracker.set(ConnectorState.RECONNECTING, reason)
                await asyncio.sleep(self._backoff.next_delay())

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        silent = 0  # consecutive polls without any reply
        give_up = max(3, self.endpoint.stale_intervals + 1)
        while True:
            samples, replied = await self.poll_once()
            silent = 0 if replied else silent + 1
            self.emit(samples + self._fresh.check())
            if silent >= give_up:
                raise _Lost(f"no reply to {silent} polls in a row (timeout {self.endpoint.timeout_s:g} s)")
            due += self.interval_s
            now = loop.time()
            if due < now:  # overran (slow device): skip the missed ticks rather than bursting
                due = now
            await asyncio.sleep(due - now)

    # ---- reading ---------------------------------------------------------------------------

    async def poll_once(self) -> tuple[list[Sample], bool]:
        """Read every block once; returns the samples and whether the device replied at all."""
        out: list[Sample] = []
        replied = False
        for block in self.blocks:
            got = await self._read(block)
            if got is None:
                continue
            replied = True
            out += got
        self.polls += 1
        return out, replied

    async def _read(self, block: Block) -> list[Sample] | None:
        client = self._client
        if client is None or not client.connected:
            raise _Lost("connection closed")
        read = client.read_holding_registers if block.function == 3 else client.read_input_registers
        try:
            rr = await asyncio.wait_for(read(block.start, count=block.count, device_id=self.endpoint.device_id),
                                        self.endpoint.timeout_s * 1.5)
        except ConnectionException as exc:
            raise _Lost(f"connection lost: {exc}") from None
        except (ModbusIOException, TimeoutError) as exc:
            if not client.connected:  # closed by the peer, or by pymodbus after several unanswered requests
                raise _Lost(f"no reply within {self.endpoint.timeout_s:g} s and the connection closed ({exc})") \
                    from None
            log.debug("%s: no reply to FC%d %d+%d", self.endpoint_id, block.function, block.start, block.count)
            return None
        except ModbusException as exc:
            return self._bad(block, f"modbus error: {exc}")
        ts = utcnow()
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            return self._bad(block, f"exception 0x{code:02x} ({EXCEPTION_NAMES.get(code, 'unknown')})", ts)
        regs = list(rr.registers)
        if len(regs) < block.count:
            return self._bad(block, f"short reply: {len(regs)} of {block.count} registers", ts)
        now = time.monotonic()
        out = []
        for rt in block.tags:
            try:
                d = decode(block.slice(regs, rt), rt.spec)
            except CodecError as exc:
                out.append(Sample(rt.tag, None, Quality.BAD, None, None, ts, f"undecodable registers: {exc}"))
            else:
                q = Quality.GOOD if d.value is not None else Quality.BAD
                out.append(Sample(rt.tag, d.value, q, None, None, ts, d.status))
            self._fresh.touch(rt.tag, now)
        return out

    def _bad(self, block: Block, status: str, ts=None) -> list[Sample]:
        ts = ts or utcnow()
        now = time.monotonic()
        for rt in block.tags:
            self._fresh.touch(rt.tag, now)
        return [Sample(rt.tag, None, Quality.BAD, None, None, ts, status) for rt in block.tags]
