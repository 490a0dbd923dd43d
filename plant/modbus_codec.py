"""Modbus register codec: engineering values <-> 16-bit registers, per a tag's ModbusAddress.

Shared by the connectors (decode) and the twin's device servers (encode), so both follow one spec:
``byte_order`` orders the two bytes inside each register, ``word_order`` orders the registers of a
32/64-bit value ("big" = most significant first). Engineering value = raw * scale + offset.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from plant.site import ModbusAddress, ModbusType

_FORMAT: dict[str, str] = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}
REGISTERS: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}
INT_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
}


class CodecError(ValueError):
    """Registers or a value that cannot be converted; the message names what and why."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded register value: the engineering value, or None with the reason in status."""

    value: float | None
    status: str = ""


def is_float(type_: ModbusType) -> bool:
    return type_ in ("float32", "float64")


def registers_to_raw(regs: Sequence[int], type_: ModbusType, byte_order: str = "big",
                     word_order: str = "big") -> float:
    """The raw number held in registers (no scaling)."""
    n = REGISTERS[type_]
    if len(regs) != n:
        raise CodecError(f"{type_} needs {n} register(s), got {len(regs)}")
    words = list(regs) if word_order == "big" else list(reversed(regs))
    try:
        data = b"".join(w.to_bytes(2, "big" if byte_order == "big" else "little") for w in words)
    except (OverflowError, AttributeError, TypeError):
        raise CodecError(f"registers must be integers 0..65535, got {list(regs)!r}") from None
    return struct.unpack(">" + _FORMAT[type_], data)[0]


def raw_to_registers(raw: float, type_: ModbusType, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Registers holding a raw number (integers must already be whole and in range)."""
    try:
        data = struct.pack(">" + _FORMAT[type_], int(raw) if not is_float(type_) else float(raw))
    except (struct.error, OverflowError) as exc:
        raise CodecError(f"{raw!r} does not fit {type_}: {exc}") from None
    words = [int.from_bytes(data[i:i + 2], "big" if byte_order == "big" else "little")
             for i in range(0, len(data), 2)]
    return words if word_order == "big" else list(reversed(words))


def decode(regs: Sequence[int], spec: ModbusAddress) -> Decoded:
    """Engineering value of a tag from its registers; NaN, Inf or the NaN sentinel give no value."""
    raw = registers_to_raw(regs, spec.type, spec.byte_order, spec.word_order)
    if spec.nan_sentinel is not None and raw == spec.nan_sentinel:
        return Decoded(None, f"unavailable (sentinel {spec.nan_sentinel:g})")
    if isinstance(raw, float) and not math.isfinite(raw):
        return Decoded(None, "unavailable (NaN)" if math.isnan(raw) else f"not finite ({raw})")
    return Decoded(raw * spec.scale + spec.offset)


def encode(value: float | None, spec: ModbusAddress) -> list[int]:
    """Registers for an engineering value; None/NaN becomes NaN (floats) or the NaN sentinel (integers)."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if missing:
        if spec.nan_sentinel is not None:
            return raw_to_registers(spec.nan_sentinel, spec.type, spec.byte_order, spec.word_order)
        if is_float(spec.type):
            return raw_to_registers(math.nan, spec.type, spec.byte_order, spec.word_order)
        raise CodecError(f"no value for an {spec.type} register without nan_sentinel")
    raw = (float(value) - spec.offset) / spec.scale  # type: ignore[arg-type]
    if not is_float(spec.type):
        lo, hi = INT_RANGE[spec.type]
        raw = round(raw)
        if not lo <= raw <= hi:
            raise CodecError(f"{value!r} (raw {raw}) does not fit {spec.type} ({lo}..{hi})")
    return raw_to_registers(raw, spec.type, spec.byte_order, spec.word_order)
