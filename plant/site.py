"""The declarative site: areas, graded rooms, units, endpoints and tags, loaded from TOML and validated."""

from __future__ import annotations

import math
import re
import string
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

Grade = Literal["A", "B", "C", "D"]
UnitKind = Literal["rocking_bag", "stirred_tank", "static_gp"]
ModbusType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64"]
ByteOrder = Literal["big", "little"]
AlarmPriority = Literal["low", "medium", "high", "critical"]

# EU GMP Annex 1 (2022) particle limits per m3 (>=0.5 um, >=5.0 um), at rest and in operation.
# None = not specified / not predetermined (set by risk assessment).
ANNEX1_PARTICLE_LIMITS: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "A": {"at_rest": (3520, 29), "in_operation": (3520, 29)},
    "B": {"at_rest": (3520, 29), "in_operation": (352_000, 2930)},
    "C": {"at_rest": (352_000, 2930), "in_operation": (3_520_000, 29_300)},
    "D": {"at_rest": (3_520_000, 29_300), "in_operation": (None, None)},
}


class SiteError(ValueError):
    """A site file problem; the message names the file, the key and the bad value."""


class _Model(BaseModel):
    # strict: a quoted number ("30"), a bool for a number or 1 for a bool is a typo in a site file, not
    # something to coerce silently. TOML integers are still accepted where a float is expected.
    # TOML's nan/inf are never a meaningful limit, volume, step or scale.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# TOML has arrays, not tuples: accept a list for a (low, high) pair; the items stay strictly numeric.
_Pair = Annotated[tuple[float, float], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]

# Placeholders an address may use; both stand for the owning unit's or room's id.
_PLACEHOLDERS = frozenset({"unit", "owner"})


def _template(v: str | None) -> str | None:
    """Check that an address template uses only {unit}/{owner}, so resolving it cannot fail later."""
    if v is None:
        return v
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(v) if f is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid address template ({exc}); use {{unit}} or {{owner}}") from None
    for f, spec, conv in fields:
        if f not in _PLACEHOLDERS or spec or conv:
            shown = f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
            raise ValueError(f"unknown placeholder {{{shown}}}; use {{unit}} or {{owner}}")
    return v


def _pair(v: tuple[float, float], what: str) -> tuple[float, float]:
    lo, hi = v
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{what} must be finite numbers")
    if lo >= hi:
        raise ValueError(f"{what} low ({lo}) must be below high ({hi})")
    return v


class OpcUaAddress(_Model):
    """Where a tag lives on an OPC UA server: a browse path under the owner object, or a node id."""

    endpoint: str
    browse_path: str = Field(min_length=1)
    node_id: str | None = None
    sampling_ms: float = Field(default=1000.0, gt=0)
    deadband: float = Field(default=0.0, ge=0)

    _templates = field_validator("endpoint", "browse_path", "node_id")(_template)


class ModbusAddress(_Model):
    """Where a tag lives on a Modbus device: register, type, byte/word order, scaling."""

    endpoint: str
    function: Literal[3, 4]
    address: int = Field(ge=0, le=65535)
    type: ModbusType = "float32"
    byte_order: ByteOrder = "big"
    word_order: ByteOrder = "big"
    scale: float = 1.0
    offset: float = 0.0
    nan_sentinel: float | None = None

    _templates = field_validator("endpoint")(_template)

    @field_validator("scale")
    @classmethod
    def _scale_nonzero(cls, v: float) -> float:
        if v == 0 or not math.isfinite(v):
            raise ValueError("scale must be a finite non-zero number")
        return v

    @property
    def register_count(self) -> int:
        return {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}[self.type]

    @model_validator(mode="after")
    def _fits(self) -> ModbusAddress:
        if self.address + self.register_count - 1 > 65535:
            raise ValueError(f"address = {self.address} with type {self.type} ({self.register_count} registers) "
                             "runs past register 65535")
        return self


class TagTemplate(_Model):
    """A tag as declared in a unit or room type; becomes a Tag per owner."""

    name: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    description: str = ""
    uom: str = Field(min_length=1)
    eng_range: _Pair
    alert_low: float | None = None
    alert_high: float | None = None
    action_low: float | None = None
    action_high: float | None = None
    annex1: Literal["0.5", "5.0"] | None = None  # action limit from the room's grade
    controllable: bool = False
    controls: str | None = None  # the process value a setpoint steers
    par: _Pair | None = None  # proven acceptable range
    max_step: float | None = Field(default=None, gt=0)
    min_interval_h: float = Field(default=4.0, ge=0)
    opcua: OpcUaAddress | None = None
    modbus: ModbusAddress | None = None
    # Alarm configuration (docs/alarms.md); None = the engine's default for the condition.
    priority: AlarmPriority | None = None  # of the action-level alarms; alert-level ones are one step lower
    deadband: float | None = Field(default=None, ge=0)  # hysteresis in the tag's unit
    on_delay_s: float | None = Field(default=None, ge=0, le=86_400)
    off_delay_s: float | None = Field(default=None, ge=0, le=86_400)
    roc_per_min: float | None = Field(default=None, gt=0)  # rate-of-change alarm, |change| per minute
    stale_s: float | None = Field(default=None, gt=0, le=86_400)  # no usable value for this long: stale

    @field_validator("eng_range")
    @classmethod
    def _eng(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _pair(v, "eng_range")

    @field_validator("par")
    @classmethod
    def _par(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        return None if v is None else _pair(v, "par")

    @model_validator(mode="after")
    def _limits(self) -> TagTemplate:
        lo, hi = self.eng_range
        for key in ("alert_low", "alert_high", "action_low", "action_high"):
            v = getattr(self, key)
            if v is not None and not lo <= v <= hi:
                raise ValueError(f"{key} = {v} lies outside eng_range [{lo}, {hi}]")
        if self.alert_low is not None and self.action_low is not None and self.alert_low < self.action_low:
            raise ValueError(f"alert_low = {self.alert_low} is below action_low = {self.action_low}")
        if self.alert_high is not None and self.action_high is not None and self.alert_high > self.action_high:
            raise ValueError(f"alert_high = {self.alert_high} is above action_high = {self.action_high}")
        if self.controllable:
            missing = [k for k in ("par", "max_step") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"controllable = true needs par = [low, high] and max_step (tag {self.name}); "
                                 f"missing: {', '.join(missing)}")
            if not (lo <= self.par[0] and self.par[1] <= hi):
                raise ValueError(f"par = {list(self.par)} lies outside eng_range [{lo}, {hi}]")
        else:
            for key in ("par", "max_step"):
                v = getattr(self, key)
                if v is not None:
                    shown = list(v) if isinstance(v, tuple) else v
                    raise ValueError(f"{key} = {shown} is only for controllable tags (set controllable = true)")
        if self.opcua is not None and self.modbus is not None:
            raise ValueError("a tag has one address: opcua or modbus, not both")
        if self.deadband is not None and self.deadband >= hi - lo:
            raise ValueError(f"deadband = {self.deadband} is not below the eng_range span {hi - lo:g}")
        alarmed = self.annex1 is not None or self.roc_per_min is not None or self.stale_s is not None or any(
            getattr(self, k) is not None for k in ("alert_low", "alert_high", "action_low", "action_high"))
        if not alarmed:
            for key in ("priority", "deadband", "on_delay_s", "off_delay_s"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} = {getattr(self, key)!r} needs an alarm on tag {self.name} "
                                     "(alert_*/action_* limits, annex1, roc_per_min or stale_s)")
        return self


class TagType(_Model):
    """A reusable set of tags (for a kind of bioreactor or a kind of room).

    Unique tag names and ``controls`` references are checked by the site cross-check, which can name
    the exact key (``unit_types[0].tags[3].controls``).
    """

    id: str
    tags: list[TagTemplate] = Field(min_length=1)


class Endpoint(_Model):
    """A server or device cellwatch connects to."""

    id: str
    protocol: Literal["opcua", "modbus"]
    url: str | None = None  # opc.tcp://host:port/path
    host: str | None = None  # modbus
    port: int | None = Field(default=None, ge=1, le=65535)
    device_id: int = Field(default=1, ge=0, le=255)
    timeout_s: float = Field(default=1.0, gt=0)
    security: Literal["Basic256Sha256_SignAndEncrypt", "None"] = "Basic256Sha256_SignAndEncrypt"
    # Connector settings (docs/connectors/opcua.md, modbus.md); credentials never go in a site file.
    interval_ms: float = Field(default=1000.0, gt=0)  # OPC UA publishing interval / Modbus poll interval
    stale_intervals: int = Field(default=3, ge=0)  # no update for this many intervals -> STALE; 0 = off
    backoff_max_s: float = Field(default=10.0, gt=0)  # cap of the reconnect backoff
    namespace: str | None = None  # OPC UA namespace URI of browse-path names (default: index 2)
    max_block: int = Field(default=125, ge=1, le=125)  # Modbus: registers per read request
    max_gap: int = Field(default=8, ge=0, le=124)  # Modbus: unused registers one read may span

    @model_validator(mode="after")
    def _addr(self) -> Endpoint:
        if self.protocol == "opcua" and not (self.url or "").startswith("opc.tcp://"):
            if self.url is None:
                raise ValueError("an opcua endpoint needs url = 'opc.tcp://...'; missing: url")
            raise ValueError(f"url = {self.url!r} is not an OPC UA address; an opcua endpoint needs "
                             "url = 'opc.tcp://...'")
        if self.protocol == "modbus" and (not self.host or self.port is None):
            missing = [k for k in ("host", "port") if getattr(self, k) in (None, "")]
            raise ValueError(f"a modbus endpoint needs host and port; missing: {', '.join(missing)}")
        return self


class Area(_Model):
    id: str
    name: str


class Room(_Model):
    id: str
    area: str
    name: str
    grade: Grade
    dp_setpoint_pa: float = Field(ge=0, le=100)
    type: str


class Unit(_Model):
    id: str = Field(pattern=r"^[A-Z][A-Z0-9-]*$")
    kind: UnitKind
    room: str
    type: str
    description: str = ""
    initial_volume_l: float = Field(gt=0)
    working_volume_l: float = Field(gt=0)


class Recipe(_Model):
    """Master recipe: process schedule and the setpoints a batch starts with."""

    id: str
    unit_kinds: list[UnitKind] = Field(min_length=1)
    seed_density: float = Field(gt=0, description="viable cells/mL at activation")
    transduction_day: float = Field(ge=0)
    feed_start_day: float = Field(ge=0)
    harvest_day: float = Field(gt=0)
    setpoints: dict[str, float]

    @model_validator(mode="after")
    def _order(self) -> Recipe:
        rule = "(schedule must satisfy transduction_day <= feed_start_day < harvest_day)"
        if self.feed_start_day < self.transduction_day:
            raise ValueError(f"feed_start_day = {self.feed_start_day} is before transduction_day = "
                             f"{self.transduction_day} {rule}")
        if self.harvest_day <= self.feed_start_day:
            raise ValueError(f"harvest_day = {self.harvest_day} is not after feed_start_day = "
                             f"{self.feed_start_day} {rule}")
        return self


class SiteInfo(_Model):
    name: str
    code: str = Field(pattern=r"^[A-Z0-9]{2,8}$")
    description: str = ""


class SiteFile(_Model):
    """The raw TOML document, validated field by field."""

    site: SiteInfo
    areas: list[Area] = Field(min_length=1)
    rooms: list[Room] = Field(min_length=1)
    units: list[Unit] = Field(min_length=1)
    endpoints: list[Endpoint] = []
    unit_types: list[TagType] = Field(min_length=1)
    room_types: list[TagType] = []
    recipes: list[Recipe] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Tag:
    """One concrete tag of a unit or room (e.g. BR01.TEMP), with its limits and address."""

    name: str
    owner: str
    short: str
    description: str
    uom: str
    eng_range: tuple[float, float]
    alert_low: float | None
    alert_high: float | None
    action_low: float | None
    action_high: float | None
    controllable: bool
    controls: str | None
    par: tuple[float, float] | None
    max_step: float | None
    min_interval_h: float
    opcua: OpcUaAddress | None
    modbus: ModbusAddress | None
    annex1: str | None = None  # "0.5"/"5.0": particle size whose Annex 1 limits apply (room tags)
    priority: str | None = None
    deadband: float | None = None
    on_delay_s: float | None = None
    off_delay_s: float | None = None
    roc_per_min: float | None = None
    stale_s: float | None = None


@dataclass(frozen=True, slots=True)
class Site:
    """A validated site with every tag resolved per unit and room."""

    source: str
    info: SiteInfo
    areas: dict[str, Area]
    rooms: dict[str, Room]
    units: dict[str, Unit]
    endpoints: dict[str, Endpoint]
    recipes: dict[str, Recipe]
    tags: dict[str, Tag]

    def unit_tags(self, unit: str) -> list[Tag]:
        """Tags owned by a unit or room id, in declaration order."""
        return [t for t in self.tags.values() if t.owner == unit]

    def units_in_room(self, room: str) -> list[Unit]:
        """Units located in a room."""
        return [u for u in self.units.values() if u.room == room]

    def controllable(self, unit: str) -> list[Tag]:
        """Setpoint tags of a unit that cellwatch may recommend changing."""
        return [t for t in self.unit_tags(unit) if t.controllable]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _lookup(doc: object, loc: tuple[int | str, ...]) -> object:
    for part in loc:
        try:
            doc = doc[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def _describe(doc: dict, loc: tuple[int | str, ...]) -> str:
    """Name the offending entry by its id when the location is inside a list of tables."""
    for i in range(len(loc) - 1, 0, -1):
        if isinstance(loc[i], int):
            item = _lookup(doc, loc[: i + 1])
            if isinstance(item, dict) and ("id" in item or "name" in item):
                return f" ({item.get('id') or item.get('name')})"
    return ""


def _shown(value: object, limit: int = 120) -> str:
    """The bad value as it appears in a message: repr, tables elided, long values cut."""
    text = "{...}" if isinstance(value, dict) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_validation(source: str, doc: dict, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-"))))
        key = _loc(loc)
        value = e.get("input") if e["type"] != "missing" else "(missing)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        # Cross-field checks name their field first ("alert_low = 34.0 is below ..."): point at it.
        field = re.match(r"^([a-z_0-9]+) = ", msg)
        if field and isinstance(value, dict) and field.group(1) in value:
            loc = (*loc, field.group(1))
            key, value = _loc(loc), value[field.group(1)]
        lines.append(f"{source}: {key}{_describe(doc, loc)}: {msg} (value: {_shown(value)})")
    return "\n".join(lines)


def _annex1_limit(grade: Grade, size: str) -> float | None:
    """The Annex 1 in-operation action limit per m3 for a grade and particle size ("0.5" or "5.0")."""
    limits = ANNEX1_PARTICLE_LIMITS[grade]["in_operation"]
    return limits[0] if size == "0.5" else limits[1]


def _cross_check(sf: SiteFile) -> list[tuple[str, str, object]]:
    """References between sections: (key, message, value) per problem."""
    problems: list[tuple[str, str, object]] = []
    for what, items in (("areas", sf.areas), ("rooms", sf.rooms), ("units", sf.units), ("endpoints", sf.endpoints),
                        ("unit_types", sf.unit_types), ("room_types", sf.room_types), ("recipes", sf.recipes)):
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.id in seen:
                problems.append((f"{what}[{i}].id", f"duplicate id in {what}", item.id))
            seen.add(item.id)
    for kind, types in (("unit_types", sf.unit_types), ("room_types", sf.room_types)):
        for i, tt in enumerate(types):
            names: set[str] = set()
            for j, t in enumerate(tt.tags):
                if t.name in names:
                    problems.append((f"{kind}[{i}].tags[{j}].name", f"duplicate tag name in {kind[:-6]} type {tt.id}",
                                     t.name))
                names.add(t.name)
            for j, t in enumerate(tt.tags):
                if t.controls is not None and t.controls not in names:
                    problems.append((f"{kind}[{i}].tags[{j}].controls",
                                     f"tag {t.name} of {kind[:-6]} type {tt.id} controls an unknown tag", t.controls))
                if kind == "unit_types" and t.annex1 is not None:
                    problems.append((f"{kind}[{i}].tags[{j}].annex1", f"tag {t.name} of unit type {tt.id}: annex1 "
                                     "limits come from a room's grade and only apply to room_types tags", t.annex1))
    areas = {a.id for a in sf.areas}
    rooms = {r.id for r in sf.rooms}
    utypes = {t.id: t for t in sf.unit_types}
    rtypes = {t.id for t in sf.room_types}
    endpoints = {e.id: e for e in sf.endpoints}
    for i, r in enumerate(sf.rooms):
        if r.area not in areas:
            problems.append((f"rooms[{i}].area", f"room {r.id} names an unknown area", r.area))
        if r.type not in rtypes:
            problems.append((f"rooms[{i}].type", f"room {r.id} names an unknown room type", r.type))
    if {u.id for u in sf.units} & rooms:
        problems.append(("units", "a unit id equals a room id", sorted({u.id for u in sf.units} & rooms)))
    for i, u in enumerate(sf.units):
        if u.room not in rooms:
            problems.append((f"units[{i}].room", f"unit {u.id} names an unknown room", u.room))
        if u.type not in utypes:
            problems.append((f"units[{i}].type", f"unit {u.id} names an unknown unit type", u.type))
        if u.working_volume_l < u.initial_volume_l:
            problems.append((f"units[{i}].working_volume_l", f"unit {u.id}: working volume is below the initial volume",
                             u.working_volume_l))
    # Addresses: resolve each tag's endpoint per owner; one problem per (key, endpoint), naming all owners.
    owners_of = {("unit_types", t.id): [u.id for u in sf.units if u.type == t.id] for t in sf.unit_types}
    owners_of |= {("room_types", t.id): [r.id for r in sf.rooms if r.type == t.id] for t in sf.room_types}
    for kind, types in (("unit_types", sf.unit_types), ("room_types", sf.room_types)):
        for i, tt in enumerate(types):
            owners = owners_of[(kind, tt.id)]
            for j, t in enumerate(tt.tags):
                for proto, addr in (("opcua", t.opcua), ("modbus", t.modbus)):
                    if addr is None:
                        continue
                    bad: dict[str, list[str]] = {}
                    for owner in owners:
                        bad.setdefault(addr.endpoint.format(owner=owner, unit=owner), []).append(owner)
                    for ep_id, who in bad.items():
                        ep = endpoints.get(ep_id)
                        tag = f"tag {t.name} of {', '.join(who)}"
                        key = f"{kind}[{i}].tags[{j}].{proto}.endpoint"
                        if ep is None:
                            problems.append((key, f"{tag} names an unknown endpoint", ep_id))
                        elif ep.protocol != proto:
                            problems.append((key, f"{tag} has an {proto} address on a {ep.protocol} endpoint", ep_id))
    # Particle limits from the Annex 1 grade of every room using the type: alert must stay inside action,
    # and an explicit action limit may only be tighter than the grade's.
    for i, tt in enumerate(sf.room_types):
        graded = [r for r in sf.rooms if r.type == tt.id]
        for j, t in enumerate(tt.tags):
            if t.annex1 is None:
                continue
            for r in graded:
                limit = _annex1_limit(r.grade, t.annex1)
                if limit is None:
                    continue
                where = (f"room {r.id} (grade {r.grade}): the Annex 1 action limit for >= {t.annex1} um "
                         f"in operation is {limit:.15g} /m3")
                if t.action_high is not None and t.action_high > limit:
                    problems.append((f"room_types[{i}].tags[{j}].action_high",
                                     f"{where}; action_high of {t.name} may not be above it", t.action_high))
                action = limit if t.action_high is None else min(limit, t.action_high)
                if t.alert_high is not None and t.alert_high > action:
                    problems.append((f"room_types[{i}].tags[{j}].alert_high",
                                     f"{where}; alert_high of {t.name} must not be above the action limit "
                                     f"{action:.15g}",
                                     t.alert_high))
    # Recipes: every setpoint must be a controllable tag of the unit types the recipe runs on, inside its PAR.
    controllable = {t.name for tt in sf.unit_types for t in tt.tags if t.controllable}
    for i, rc in enumerate(sf.recipes):
        types = [utypes[tid] for tid in dict.fromkeys(u.type for u in sf.units if u.kind in rc.unit_kinds)
                 if tid in utypes]
        for name, value in rc.setpoints.items():
            key = f"recipes[{i}].setpoints.{name}"
            if name not in controllable:
                problems.append((key, f"recipe {rc.id} sets {name}, which no unit type declares controllable", name))
                continue
            for tt in types:
                tag = next((t for t in tt.tags if t.name == name), None)
                if tag is None or not tag.controllable:
                    problems.append((key, f"recipe {rc.id} sets {name}, which unit type {tt.id} does not declare "
                                     "controllable", name))
                elif not (tag.par[0] <= value <= tag.par[1]):  # type: ignore[index]
                    problems.append((key, f"recipe {rc.id}: {name} = {value} lies outside the par "
                                     f"{list(tag.par)} of unit type {tt.id}", value))  # type: ignore[arg-type]
    return problems


def _resolve_tags(sf: SiteFile) -> dict[str, Tag]:
    utypes = {t.id: t for t in sf.unit_types}
    rtypes = {t.id: t for t in sf.room_types}
    tags: dict[str, Tag] = {}
    owners: list[tuple[str, TagType, Grade | None]] = [(u.id, utypes[u.type], None) for u in sf.units]
    owners += [(r.id, rtypes[r.type], r.grade) for r in sf.rooms]
    for owner, ttype, grade in owners:
        for t in ttype.tags:
            action_high = t.action_high
            if t.annex1 is not None and grade is not None and action_high is None:
                limits = ANNEX1_PARTICLE_LIMITS[grade]["in_operation"]
                action_high = limits[0] if t.annex1 == "0.5" else limits[1]
            fmt = {"unit": owner, "owner": owner}
            opcua = t.opcua and t.opcua.model_copy(update={
                "browse_path": t.opcua.browse_path.format(**fmt),
                "node_id": t.opcua.node_id and t.opcua.node_id.format(**fmt)})
            modbus = t.modbus and t.modbus.model_copy(update={"endpoint": t.modbus.endpoint.format(**fmt)})
            opcua = opcua and opcua.model_copy(update={"endpoint": opcua.endpoint.format(**fmt)})
            name = f"{owner}.{t.name}"
            tags[name] = Tag(
                name=name, owner=owner, short=t.name, description=t.description, uom=t.uom,
                eng_range=t.eng_range, alert_low=t.alert_low, alert_high=t.alert_high,
                action_low=t.action_low, action_high=action_high, controllable=t.controllable,
                controls=t.controls and f"{owner}.{t.controls}", par=t.par, max_step=t.max_step,
                min_interval_h=t.min_interval_h, opcua=opcua, modbus=modbus,
                annex1=t.annex1 if grade is not None else None, priority=t.priority, deadband=t.deadband,
                on_delay_s=t.on_delay_s, off_delay_s=t.off_delay_s, roc_per_min=t.roc_per_min, stale_s=t.stale_s,
            )
    return tags


def parse_site(text: str, source: str = "<site>") -> Site:
    """Parse and validate site TOML text; raise SiteError naming source, key and value."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(f"{source}: not valid TOML: {exc}") from None
    try:
        sf = SiteFile.model_validate(doc)
    except ValidationError as exc:
        raise SiteError(_format_validation(source, doc, exc)) from None
    problems = _cross_check(sf)
    if problems:
        raise SiteError("\n".join(f"{source}: {k}: {m} (value: {_shown(v)})" for k, m, v in problems))
    return Site(
        source=source, info=sf.site, areas={a.id: a for a in sf.areas}, rooms={r.id: r for r in sf.rooms},
        units={u.id: u for u in sf.units}, endpoints={e.id: e for e in sf.endpoints},
        recipes={r.id: r for r in sf.recipes}, tags=_resolve_tags(sf),
    )


def load_site(path: str | Path) -> Site:
    """Load and validate a site file; errors name the file, the key and the bad value."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteError(f"{p}: cannot read site file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise SiteError(f"{p}: not a UTF-8 text file: byte {exc.object[exc.start]:#04x} at line {line} "
                        f"({exc.reason})") from None
    return parse_site(text, source=str(p))


def demo_site_text() -> str:
    """The TOML text of the demo site that ships with cellwatch."""
    return resources.files("plant").joinpath("sites/demo.toml").read_text(encoding="utf-8")


def load_demo_site() -> Site:
    """The demo site shipped with cellwatch (embedded defaults)."""
    return parse_site(demo_site_text(), source="demo.toml")


def load_site_or_demo(path: str | Path | None) -> Site:
    """The site file at `path`, or the demo site when no path is given (what every `--site` option means)."""
    return load_demo_site() if path is None else load_site(path)

