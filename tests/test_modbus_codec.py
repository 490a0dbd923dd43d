"""Modbus decoding against known register vectors, register-map validation and block planning."""

from __future__ import annotations

import math

import pytest

from connectors.modbus_map import RegisterMapError, RegisterTag, device_tags, per_tag_blocks, plan_blocks
from plant.modbus_codec import CodecError, decode, encode, registers_to_raw
from plant.site import ModbusAddress, demo_site_text, load_demo_site, parse_site


def spec(type_: str, byte_order: str = "big", word_order: str = "big", **kw) -> ModbusAddress:
    return ModbusAddress(endpoint="dev", function=3, address=0, type=type_, byte_order=byte_order,
                         word_order=word_order, **kw)


# (type, byte order, word order, registers as the device sends them, value). Registers are written out
# by hand from the IEEE/two's-complement bytes: ABCD = big/big, CDAB = word-swapped, BADC, DCBA.
VECTORS = [
    ("int16", "big", "big", [0xFFFE], -2),
    ("int16", "little", "big", [0xFEFF], -2),
    ("uint16", "big", "big", [0x1234], 0x1234),
    ("uint16", "little", "big", [0x3412], 0x1234),
    ("int32", "big", "big", [0xF8A4, 0x32EB], -123456789),
    ("int32", "big", "little", [0x32EB, 0xF8A4], -123456789),
    ("int32", "little", "big", [0xA4F8, 0xEB32], -123456789),
    ("int32", "little", "little", [0xEB32, 0xA4F8], -123456789),
    ("uint32", "big", "big", [0x1234, 0x5678], 0x12345678),
    ("uint32", "big", "little", [0x5678, 0x1234], 0x12345678),
    ("uint32", "little", "big", [0x3412, 0x7856], 0x12345678),
    ("uint32", "little", "little", [0x7856, 0x3412], 0x12345678),
    ("float32", "big", "big", [0x4214, 0x0000], 37.0),
    ("float32", "big", "little", [0xE666, 0xC2F6], -123.45),  # Vaisala test register 7938: low word first
    ("float32", "little", "big", [0xF6C2, 0x66E6], -123.45),
    ("float32", "little", "little", [0x66E6, 0xF6C2], -123.45),
    ("float64", "big", "big", [0xC004, 0, 0, 0], -2.5),
    ("float64", "big", "little", [0xFAAD, 0x6D5C, 0x4A45, 0x4093], 1234.5678),
    ("float64", "little", "big", [0x9340, 0x454A, 0x5C6D, 0xADFA], 1234.5678),
    ("float64", "little", "little", [0xADFA, 0x5C6D, 0x454A, 0x9340], 1234.5678),
]


@pytest.mark.parametrize(("type_", "bo", "wo", "regs", "value"), VECTORS,
                         ids=[f"{v[0]}-{v[1][0]}{v[2][0]}-{v[4]}" for v in VECTORS])
def test_known_vectors_decode_and_encode(type_, bo, wo, regs, value):
    s = spec(type_, bo, wo)
    got = decode(regs, s)
    assert got.status == ""
    assert got.value == pytest.approx(value, rel=1e-7) if type_ == "float32" else got.value == value
    assert encode(value, s) == regs


def test_scale_offset_and_particle_counts():
    s = spec("uint32", scale=35.3107)  # 1-minute counts at 1 cfm -> particles per m3
    assert decode([0x0000, 0x0064], s).value == pytest.approx(3531.07)
    assert encode(3531.07, s) == [0, 100]
    t = spec("int16", scale=0.1, offset=-40.0)
    assert decode([0x0190], t).value == pytest.approx(0.0)  # 400 * 0.1 - 40


def test_nan_float_and_sentinel_give_no_value_with_reason():
    th = spec("float32", word_order="little")
    nan_regs = encode(None, th)
    assert nan_regs == [0x0000, 0x7FC0]  # quiet NaN, low word first
    assert decode(nan_regs, th).value is None and "NaN" in decode(nan_regs, th).status
    s = spec("uint16", nan_sentinel=65535)
    assert decode([0xFFFF], s).value is None and "sentinel 65535" in decode([0xFFFF], s).status
    assert decode([0xFFFE], s).value == 65534
    assert encode(None, s) == [0xFFFF]
    f = spec("float32", nan_sentinel=-9999.0)
    assert decode(encode(-9999.0, f), f).value is None
    inf = decode([0x7F80, 0x0000], spec("float32"))
    assert inf.value is None and "not finite" in inf.status


def test_garbage_registers_are_refused_with_reason():
    with pytest.raises(CodecError, match="needs 2 register"):
        registers_to_raw([1], "float32")
    with pytest.raises(CodecError, match="0..65535"):
        registers_to_raw([70000], "uint16")
    with pytest.raises(CodecError, match="does not fit uint16"):
        encode(70000, spec("uint16"))
    with pytest.raises(CodecError, match="without nan_sentinel"):
        encode(None, spec("int32"))


def _site_with(old: str, new: str):
    text = demo_site_text()
    assert old in text
    return parse_site(text.replace(old, new, 1), source="plant.toml")


def test_sentinel_outside_the_type_names_file_device_and_tag():
    site = _site_with('address = 2, type = "uint16" }', 'address = 2, type = "uint16", nan_sentinel = 70000 }')
    with pytest.raises(RegisterMapError) as err:
        device_tags(site, site.endpoints["CR-A1-DP"])
    msg = str(err.value)
    assert "plant.toml" in msg and "CR-A1-DP" in msg and "CR-A1.PSTAT" in msg and "70000" in msg


def test_overlapping_tags_name_both():
    site = _site_with('modbus = { endpoint = "{owner}-PC", function = 4, address = 16, type = "uint32"',
                      'modbus = { endpoint = "{owner}-PC", function = 4, address = 11, type = "uint32"')
    with pytest.raises(RegisterMapError) as err:
        device_tags(site, site.endpoints["CR-A1-PC"])
    assert "CR-A1.P50" in str(err.value) and "CR-A1.P05" in str(err.value) and "overlaps" in str(err.value)


def test_a_bad_map_in_the_site_file_names_the_tag():
    bad = demo_site_text().replace('address = 10, type = "uint32"', 'address = 10, type = "int64"', 1)
    with pytest.raises(ValueError) as err:
        parse_site(bad, source="plant.toml")
    assert "plant.toml" in str(err.value) and "P05" in str(err.value) and "modbus.type" in str(err.value)


def test_blocks_are_the_fewest_reads_within_125_registers():
    site = load_demo_site()
    pc = device_tags(site, site.endpoints["CR-B1-PC"])
    blocks = plan_blocks(pc, max_block=125, max_gap=8)
    assert [(b.function, b.start, b.count) for b in blocks] == [(4, 10, 8), (4, 80, 1)]  # gap 62 > 8: two reads
    one = plan_blocks(pc, max_block=125, max_gap=100)
    assert [(b.start, b.count) for b in one] == [(10, 71)]
    th = plan_blocks(device_tags(site, site.endpoints["CR-B1-TH"]))
    assert [(b.function, b.start, b.count) for b in th] == [(3, 0, 4)]
    assert len(per_tag_blocks(pc)) == 3


def test_large_maps_split_at_125_registers():
    rts = [RegisterTag(f"T{i}", ModbusAddress(endpoint="d", function=3, address=2 * i, type="float32"))
           for i in range(200)]
    blocks = plan_blocks(rts, max_block=125, max_gap=0)
    assert all(b.count <= 125 for b in blocks)
    assert sum(len(b.tags) for b in blocks) == 200 and len(blocks) == math.ceil(400 / 124)
    regs = list(range(blocks[1].start, blocks[1].start + blocks[1].count))
    first = blocks[1].tags[0]
    assert blocks[1].slice(regs, first) == [first.first, first.first + 1]

