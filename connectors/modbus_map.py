"""Declarative Modbus register maps: validated per device and grouped into the fewest block reads."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from plant.modbus_codec import INT_RANGE, REGISTERS, is_float
from plant.site import Endpoint, ModbusAddress, Site, Tag

MAX_REGISTERS_PER_READ = 125  # Modbus FC 03/04 limit


class RegisterMapError(ValueError):
    """A register map that cannot be read correctly; the message names the site file, device and tag."""


@dataclass(frozen=True, slots=True)
class RegisterTag:
    """One tag's place in a device's register space."""

    tag: str
    spec: ModbusAddress

    @property
    def first(self) -> int:
        return self.spec.address

    @property
    def last(self) -> int:
        return self.spec.address + REGISTERS[self.spec.type] - 1


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` registers from `start` with function 3 or 4, and the tags inside."""

    function: int
    start: int
    count: int
    tags: tuple[RegisterTag, ...]

    def slice(self, regs: list[int], rt: RegisterTag) -> list[int]:
        """The registers of one tag out of this block's response."""
        off = rt.first - self.start
        return regs[off:off + REGISTERS[rt.spec.type]]


def device_tags(site: Site, endpoint: Endpoint) -> list[RegisterTag]:
    """Validated register tags of one Modbus device; RegisterMapError names the file, device and tag."""
    where = f"{site.source}: endpoint {endpoint.id}"
    tags = [RegisterTag(t.name, t.modbus) for t in site.tags.values()
            if t.modbus is not None and t.modbus.endpoint == endpoint.id]
    for rt in tags:
        _check_tag(where, rt, endpoint)
    by_fc: dict[int, list[RegisterTag]] = {}
    for rt in tags:
        by_fc.setdefault(rt.spec.function, []).append(rt)
    for fc, group in by_fc.items():
        group.sort(key=lambda r: (r.first, r.tag))
        for a, b in zip(group, group[1:]):
            if b.first <= a.last and _layout(a) != _layout(b):
                raise RegisterMapError(
                    f"{where}: tag {b.tag} (function {fc}, registers {b.first}-{b.last}, {b.spec.type}) overlaps "
                    f"tag {a.tag} (registers {a.first}-{a.last}, {a.spec.type}) with a different layout")
    return tags


def _layout(rt: RegisterTag) -> tuple[object, ...]:
    s = rt.spec
    return (s.address, s.type, s.byte_order, s.word_order)


def _check_tag(where: str, rt: RegisterTag, endpoint: Endpoint) -> None:
    s = rt.spec
    n = REGISTERS[s.type]
    if n > endpoint.max_block:
        raise RegisterMapError(f"{where}: tag {rt.tag}: modbus.type = {s.type!r} needs {n} registers, more than "
                               f"the endpoint's max_block = {endpoint.max_block}")
    if s.nan_sentinel is None:
        return
    if is_float(s.type):
        if not math.isfinite(s.nan_sentinel):
            raise RegisterMapError(f"{where}: tag {rt.tag}: modbus.nan_sentinel = {s.nan_sentinel} must be finite")
        return
    lo, hi = INT_RANGE[s.type]
    if s.nan_sentinel != int(s.nan_sentinel) or not lo <= s.nan_sentinel <= hi:
        raise RegisterMapError(f"{where}: tag {rt.tag}: modbus.nan_sentinel = {s.nan_sentinel:g} is not a raw "
                               f"{s.type} value ({lo}..{hi})")


def plan_blocks(tags: Iterable[RegisterTag], max_block: int = MAX_REGISTERS_PER_READ, max_gap: int = 8) -> list[Block]:
    """The fewest reads covering every tag: per function, neighbours join while the read stays within
    max_block registers and skips at most max_gap unused registers."""
    if not 1 <= max_block <= MAX_REGISTERS_PER_READ:
        raise RegisterMapError(f"max_block = {max_block} must be 1..{MAX_REGISTERS_PER_READ}")
    blocks: list[Block] = []
    by_fc: dict[int, list[RegisterTag]] = {}
    for rt in tags:
        by_fc.setdefault(rt.spec.function, []).append(rt)
    for fc in sorted(by_fc):
        group = sorted(by_fc[fc], key=lambda r: (r.first, r.tag))
        cur: list[RegisterTag] = []
        start = end = 0
        for rt in group:
            if cur and rt.last - start + 1 <= max_block and rt.first - end - 1 <= max_gap:
                cur.append(rt)
                end = max(end, rt.last)
                continue
            if cur:
                blocks.append(Block(fc, start, end - start + 1, tuple(cur)))
            cur, start, end = [rt], rt.first, rt.last
        if cur:
            blocks.append(Block(fc, start, end - start + 1, tuple(cur)))
    return blocks


def per_tag_blocks(tags: Iterable[RegisterTag]) -> list[Block]:
    """One read per tag (the baseline that block grouping is measured against)."""
    return [Block(rt.spec.function, rt.first, rt.last - rt.first + 1, (rt,))
            for rt in sorted(tags, key=lambda r: (r.spec.function, r.first))]


def modbus_tags(site: Site) -> dict[str, list[Tag]]:
    """Modbus tags of a site grouped by endpoint id."""
    out: dict[str, list[Tag]] = {}
    for t in site.tags.values():
        if t.modbus is not None:
            out.setdefault(t.modbus.endpoint, []).append(t)
    return out
