"""The declarative site model: the demo site, malformed site files and the Site helpers.

Malformed variants are made from the demo text by one targeted edit, written into tmp_path and
loaded with load_site(path), so every error must name that file, the key path and the bad value.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import plant
from plant.site import (
    ANNEX1_PARTICLE_LIMITS,
    Site,
    SiteError,
    Tag,
    demo_site_text,
    load_demo_site,
    load_site,
    parse_site,
)

DEMO = demo_site_text()
UNITS = [f"BR{i:02d}" for i in range(1, 9)]
ROCKING = UNITS[:5]
STIRRED = UNITS[5:]
ROOM_GRADES = {"CR-A1": "A", "CR-B1": "B", "CR-C1": "C", "CR-C2": "C", "CR-D1": "D"}
PROCESS_TAGS = ("TEMP", "PH", "DO", "AGIT")


# ---------------------------------------------------------------- helpers


def edit(old: str, new: str, count: int = 1, text: str = DEMO) -> str:
    """The demo text with the first `count` occurrences of `old` replaced (which must be there)."""
    assert text.count(old) >= count, f"demo.toml no longer contains {old!r}; update the test"
    return text.replace(old, new, count)


def line_of(fragment: str, text: str = DEMO) -> int:
    """1-based line number of the first occurrence of fragment."""
    return text[: text.index(fragment)].count("\n") + 1


def assert_clean(exc: BaseException) -> None:
    """The SiteError stands alone: no chained OSError/TOMLDecodeError/ValidationError traceback."""
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


def load_error(tmp_path: Path, text: str | bytes, name: str = "bad_site.toml") -> tuple[Path, str]:
    """Write text to tmp_path/name, load it and return (path, error message); it must fail with SiteError."""
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(SiteError) as info:
        load_site(path)
    # A clean error, not a chained traceback from tomllib/pydantic.
    assert_clean(info.value)
    msg = str(info.value)
    for line in msg.splitlines():
        assert line.startswith(f"{path}: "), f"error line does not name the file: {line!r}"
    return path, msg


def error_line(msg: str, path: Path, key: str, value: object) -> str:
    """The one error line naming file, exact key path (optionally followed by the entry id) and value."""
    pattern = re.compile(
        rf"^{re.escape(str(path))}: {re.escape(key)}( \([^)]*\))?: .*\(value: {re.escape(repr(value))}\)$")
    hits = [line for line in msg.splitlines() if pattern.match(line)]
    assert hits, f"no error line for key {key!r} with value {value!r} in:\n{msg}"
    return hits[0]


# ---------------------------------------------------------------- 1. the demo site


@pytest.fixture(scope="module")
def site() -> Site:
    return load_demo_site()


def test_demo_text_is_the_packaged_file():
    packaged = Path(plant.__file__).parent / "sites" / "demo.toml"
    assert packaged.read_text(encoding="utf-8") == DEMO


def test_demo_loads_from_file_with_the_same_content(site, tmp_path):
    path = tmp_path / "demo.toml"
    path.write_text(DEMO, encoding="utf-8")
    from_file = load_site(path)
    assert from_file.source == str(path)
    assert site.source == "demo.toml"
    assert from_file.tags == site.tags
    assert from_file.units == site.units and from_file.rooms == site.rooms


def test_demo_units(site):
    assert list(site.units) == UNITS
    assert {u: site.units[u].kind for u in UNITS} == {
        **{u: "rocking_bag" for u in ROCKING}, **{u: "stirred_tank" for u in STIRRED}}
    for u in site.units.values():
        assert u.room in site.rooms
        assert 0 < u.initial_volume_l <= u.working_volume_l


def test_demo_rooms_and_grades(site):
    assert {r.id: r.grade for r in site.rooms.values()} == ROOM_GRADES
    assert {r.grade for r in site.rooms.values()} == {"A", "B", "C", "D"}
    for r in site.rooms.values():
        assert r.area in site.areas
        assert r.type == f"grade_{r.grade.lower()}"
    # Pressure cascade: the cleaner the grade, the higher the overpressure.
    dp = {r.grade: r.dp_setpoint_pa for r in site.rooms.values()}
    assert dp["A"] >= dp["B"] > dp["C"] > dp["D"] > 0


def test_demo_tag_count(site):
    # 5 rocking bags x 12 tags, 3 stirred tanks x 13 (with BASE), 5 rooms x 7.
    assert len(site.tags) == 5 * 12 + 3 * 13 + 5 * 7
    assert all(isinstance(t, Tag) for t in site.tags.values())
    assert all(name == f"{t.owner}.{t.short}" for name, t in site.tags.items())


@pytest.mark.parametrize("unit", UNITS)
def test_every_unit_has_process_values_and_setpoints(site, unit):
    tags = site.tags
    for pv in PROCESS_TAGS:
        measured, sp = tags[f"{unit}.{pv}"], tags[f"{unit}.{pv}_SP"]
        assert not measured.controllable and measured.par is None and measured.max_step is None
        assert sp.controllable
        assert sp.controls == f"{unit}.{pv}"
        assert sp.uom == measured.uom
        lo, hi = sp.eng_range
        assert lo <= sp.par[0] < sp.par[1] <= hi
    assert tags[f"{unit}.TEMP_SP"].par == (36.0, 38.0)
    assert tags[f"{unit}.PH_SP"].par == (6.95, 7.35)
    assert (f"{unit}.BASE" in tags) == (unit in STIRRED)


def test_controllable_tags_have_par_and_max_step(site):
    controllable = [t for t in site.tags.values() if t.controllable]
    assert len(controllable) == 8 * 5  # TEMP_SP, PH_SP, DO_SP, AGIT_SP, PERF_SP per unit
    for t in controllable:
        assert t.par is not None and t.max_step is not None and t.max_step > 0, t.name
        assert t.eng_range[0] <= t.par[0] < t.par[1] <= t.eng_range[1], t.name
        # A single recommended step never spans more than the whole PAR.
        assert t.max_step <= t.par[1] - t.par[0], t.name
        assert t.min_interval_h > 0, t.name
    for t in site.tags.values():
        if not t.controllable:
            assert t.par is None and t.max_step is None, t.name


def test_annex1_table():
    # EU GMP Annex 1 (2022), Table 5 (particles per m3, >= 0.5 um / >= 5.0 um).
    assert ANNEX1_PARTICLE_LIMITS == {
        "A": {"at_rest": (3520, 29), "in_operation": (3520, 29)},
        "B": {"at_rest": (3520, 29), "in_operation": (352_000, 2930)},
        "C": {"at_rest": (352_000, 2930), "in_operation": (3_520_000, 29_300)},
        "D": {"at_rest": (3_520_000, 29_300), "in_operation": (None, None)},
    }


@pytest.mark.parametrize("room,grade", sorted(ROOM_GRADES.items()))
def test_particle_action_limits_from_annex1_grade(site, room, grade):
    p05, p50 = site.tags[f"{room}.P05"], site.tags[f"{room}.P50"]
    expected05, expected50 = ANNEX1_PARTICLE_LIMITS[grade]["in_operation"]
    assert p05.action_high == expected05
    assert p50.action_high == expected50
    assert p05.uom == p50.uom == "/m3"
    for t in (p05, p50):
        assert t.alert_high is not None
        if t.action_high is not None:
            assert t.alert_high < t.action_high


def test_particle_action_limits_concrete_values(site):
    assert site.tags["CR-A1.P05"].action_high == 3520 and site.tags["CR-A1.P50"].action_high == 29
    assert site.tags["CR-B1.P05"].action_high == 352_000 and site.tags["CR-B1.P50"].action_high == 2930
    assert site.tags["CR-C2.P05"].action_high == 3_520_000 and site.tags["CR-C2.P50"].action_high == 29_300
    # Grade D in operation: not predetermined (set by risk assessment).
    assert site.tags["CR-D1.P05"].action_high is None and site.tags["CR-D1.P50"].action_high is None


@pytest.mark.parametrize("room", sorted(ROOM_GRADES))
def test_modbus_addresses_resolved_per_room(site, room):
    tags = site.unit_tags(room)
    assert [t.short for t in tags] == ["P05", "P50", "DP", "PSTAT", "TEMP", "RH", "OCC"]
    expected_ep = {"P05": "PC", "P50": "PC", "OCC": "PC", "DP": "DP", "PSTAT": "DP", "TEMP": "TH", "RH": "TH"}
    for t in tags:
        assert t.opcua is None and t.modbus is not None, t.name
        assert t.modbus.endpoint == f"{room}-{expected_ep[t.short]}", t.name
        ep = site.endpoints[t.modbus.endpoint]
        assert ep.protocol == "modbus" and ep.host and ep.port
        assert "{" not in t.modbus.endpoint


def test_modbus_address_details(site):
    p05 = site.tags["CR-C1.P05"].modbus
    assert (p05.endpoint, p05.function, p05.address, p05.type, p05.register_count) == ("CR-C1-PC", 4, 10, "uint32", 2)
    assert p05.scale == pytest.approx(35.3107)
    th = site.tags["CR-B1.RH"].modbus
    assert (th.endpoint, th.function, th.address, th.type, th.word_order) == ("CR-B1-TH", 3, 0, "float32", "little")
    # Each room's devices are distinct endpoints (own port).
    ports = {site.endpoints[f"{r}-PC"].port for r in ROOM_GRADES}
    assert len(ports) == len(ROOM_GRADES)


@pytest.mark.parametrize("unit", UNITS)
def test_opcua_browse_paths_resolved_per_unit(site, unit):
    for t in site.unit_tags(unit):
        assert t.modbus is None and t.opcua is not None, t.name
        assert t.opcua.endpoint == "twin-opcua"
        assert site.endpoints["twin-opcua"].protocol == "opcua"
        assert t.opcua.browse_path.startswith(f"{unit}/"), t.opcua.browse_path
        assert "{" not in t.opcua.browse_path
    assert site.tags[f"{unit}.TEMP"].opcua.browse_path == f"{unit}/Temperature"
    assert site.tags[f"{unit}.PH_SP"].opcua.browse_path == f"{unit}/pHSetpoint"


def test_demo_recipes_inside_par(site):
    assert set(site.recipes) == {"CART-RB-12D", "CART-STR-10D"}
    for rc in site.recipes.values():
        units = [u for u in site.units.values() if u.kind in rc.unit_kinds]
        assert units
        for u in units:
            for name, value in rc.setpoints.items():
                tag = site.tags[f"{u.id}.{name}"]
                assert tag.controllable and tag.par[0] <= value <= tag.par[1]


# ---------------------------------------------------------------- 2. malformed site files

# (id, old fragment of demo.toml, replacement, key path, bad value as it must appear, message fragment)
CASES = [
    ("unknown-key-typo", "dp_setpoint_pa = 30", "dp_setpont_pa = 30",
     "rooms[2].dp_setpont_pa", 30, "unknown key"),
    ("string-for-number", "dp_setpoint_pa = 30", 'dp_setpoint_pa = "30"',
     "rooms[2].dp_setpoint_pa", "30", "valid number"),
    ("word-for-number", "initial_volume_l = 0.5", 'initial_volume_l = "half"',
     "units[0].initial_volume_l", "half", "valid number"),
    ("bool-for-number", "max_step = 0.5", "max_step = true",
     "unit_types[0].tags[1].max_step", True, "valid number"),
    ("string-for-bool", "controllable = true", 'controllable = "yes"',
     "unit_types[0].tags[1].controllable", "yes", "valid boolean"),
    ("string-for-range", "eng_range = [0.0, 50.0]", 'eng_range = "0-50"',
     "unit_types[0].tags[0].eng_range", "0-50", "tuple"),
    ("nan-number", "dp_setpoint_pa = 30", "dp_setpoint_pa = nan",
     "rooms[2].dp_setpoint_pa", float("nan"), "finite"),
    ("inf-number", "working_volume_l = 1.0", "working_volume_l = inf",
     "units[0].working_volume_l", float("inf"), "finite"),
    ("grade-not-a-d", 'grade = "C"', 'grade = "E"',
     "rooms[2].grade", "E", "'A', 'B', 'C' or 'D'"),
    ("lowercase-grade", 'grade = "B"', 'grade = "b"',
     "rooms[1].grade", "b", "'A', 'B', 'C' or 'D'"),
    ("duplicate-unit-id", 'id = "BR02"', 'id = "BR01"',
     "units[1].id", "BR01", "duplicate id"),
    ("duplicate-endpoint-id", 'id = "CR-A1-TH"', 'id = "CR-A1-PC"',
     "endpoints[2].id", "CR-A1-PC", "duplicate id"),
    ("unit-in-unknown-room", 'room = "CR-C2"', 'room = "CR-C9"',
     "units[4].room", "CR-C9", "unknown room"),
    ("unit-unknown-type", 'type = "rocking_bag"', 'type = "rocking-bag"',
     "units[0].type", "rocking-bag", "unknown unit type"),
    ("room-unknown-area", 'area = "MFG"', 'area = "QC"',
     "rooms[0].area", "QC", "unknown area"),
    ("tag-endpoint-unknown", 'endpoint = "twin-opcua", browse_path = "{unit}/pH"',
     'endpoint = "twin-opc", browse_path = "{unit}/pH"',
     "unit_types[0].tags[2].opcua.endpoint", "twin-opc", "unknown endpoint"),
    ("tag-endpoint-wrong-protocol", 'endpoint = "twin-opcua", browse_path = "{unit}/pH"',
     'endpoint = "CR-C1-PC", browse_path = "{unit}/pH"',
     "unit_types[0].tags[2].opcua.endpoint", "CR-C1-PC", "opcua address on a modbus endpoint"),
    ("room-endpoint-unknown", 'endpoint = "{owner}-TH", function = 3, address = 0',
     'endpoint = "{owner}-RH", function = 3, address = 0',
     "room_types[0].tags[5].modbus.endpoint", "CR-A1-RH", "unknown endpoint"),
    ("unknown-placeholder", 'endpoint = "{owner}-PC", function = 4, address = 10',
     'endpoint = "{room}-PC", function = 4, address = 10',
     "room_types[0].tags[0].modbus.endpoint", "{room}-PC", "unknown placeholder {room}"),
    ("broken-template", 'browse_path = "{unit}/pH"', 'browse_path = "{unit/pH"',
     "unit_types[0].tags[2].opcua.browse_path", "{unit/pH", "template"),
    ("alert-below-action", "alert_low = 36.0", "alert_low = 34.0",
     "unit_types[0].tags[0].alert_low", 34.0, "below action_low"),
    ("alert-above-action", "alert_high = 38.3", "alert_high = 39.5",
     "unit_types[0].tags[0].alert_high", 39.5, "above action_high"),
    ("limit-outside-eng-range", "action_high = 39.0", "action_high = 55.0",
     "unit_types[0].tags[0].action_high", 55.0, "outside eng_range"),
    ("particle-alert-above-annex1", "alert_high = 1760\n", "alert_high = 5000\n",
     "room_types[0].tags[0].alert_high", 5000.0, "Annex 1 action limit"),
    ("particle-action-looser-than-annex1", "alert_high = 15\n", "alert_high = 15\naction_high = 100\n",
     "room_types[0].tags[1].action_high", 100.0, "Annex 1 action limit"),
    ("annex1-on-unit-tag", 'name = "WEIGHT"\n', 'name = "WEIGHT"\nannex1 = "0.5"\n',
     "unit_types[0].tags[9].annex1", "0.5", "room_types"),
    ("par-outside-eng-range", "par = [36.0, 38.0]", "par = [36.0, 41.0]",
     "unit_types[0].tags[1].par", [36.0, 41.0], "outside eng_range"),
    ("controllable-without-par", "par = [36.0, 38.0]\n", "",
     "unit_types[0].tags[1].controllable", True, "missing: par"),
    ("controllable-without-max-step", "max_step = 0.5\n", "",
     "unit_types[0].tags[1].controllable", True, "missing: max_step"),
    ("par-on-non-controllable", 'name = "AGIT"\n', 'name = "AGIT"\npar = [1.0, 2.0]\n',
     "unit_types[0].tags[6].par", [1.0, 2.0], "only for controllable"),
    ("max-step-on-non-controllable", 'name = "AGIT"\n', 'name = "AGIT"\nmax_step = 1.0\n',
     "unit_types[0].tags[6].max_step", 1.0, "only for controllable"),
    ("inverted-eng-range", "eng_range = [0.0, 50.0]", "eng_range = [50.0, 0.0]",
     "unit_types[0].tags[0].eng_range", [50.0, 0.0], "must be below"),
    ("inverted-par", "par = [36.0, 38.0]", "par = [38.0, 36.0]",
     "unit_types[0].tags[1].par", [38.0, 36.0], "must be below"),
    ("controls-unknown-tag", 'controls = "TEMP"', 'controls = "TEMPERATURE"',
     "unit_types[0].tags[1].controls", "TEMPERATURE", "unknown tag"),
    ("duplicate-tag-name", 'name = "WEIGHT"', 'name = "CO2"',
     "unit_types[0].tags[9].name", "CO2", "duplicate tag name"),
    ("modbus-address-out-of-range", 'address = 10, type = "uint32"', 'address = 70000, type = "uint32"',
     "room_types[0].tags[0].modbus.address", 70000, "65535"),
    ("modbus-address-negative", 'address = 10, type = "uint32"', 'address = -1, type = "uint32"',
     "room_types[0].tags[0].modbus.address", -1, "greater than or equal to 0"),
    ("modbus-value-runs-past-end", 'address = 10, type = "uint32"', 'address = 65535, type = "uint32"',
     "room_types[0].tags[0].modbus.address", 65535, "runs past register 65535"),
    ("modbus-bad-type-name", 'address = 10, type = "uint32"', 'address = 10, type = "uint23"',
     "room_types[0].tags[0].modbus.type", "uint23", "'float32'"),
    ("modbus-bad-function", "function = 4, address = 10", "function = 6, address = 10",
     "room_types[0].tags[0].modbus.function", 6, "3 or 4"),
    ("modbus-zero-scale", "scale = 35.3107", "scale = 0.0",
     "room_types[0].tags[0].modbus.scale", 0.0, "non-zero"),
    ("opcua-url-not-opc-tcp", 'url = "opc.tcp://127.0.0.1:4840/cellwatch"', 'url = "http://127.0.0.1:4840"',
     "endpoints[0].url", "http://127.0.0.1:4840", "opc.tcp://"),
    ("recipe-sets-non-controllable-tag", "PERF_SP = 1.0 }", "PERF_SP = 1.0, TEMP = 37.0 }",
     "recipes[0].setpoints.TEMP", "TEMP", "controllable"),
    ("recipe-setpoint-outside-par", "TEMP_SP = 37.0,", "TEMP_SP = 39.5,",
     "recipes[0].setpoints.TEMP_SP", 39.5, "outside the par"),
    ("recipe-harvest-before-feed", "feed_start_day = 3\nharvest_day = 12", "feed_start_day = 3\nharvest_day = 2",
     "recipes[0].harvest_day", 2, "not after feed_start_day"),
    ("recipe-feed-before-transduction", "transduction_day = 1\nfeed_start_day = 3",
     "transduction_day = 4\nfeed_start_day = 3",
     "recipes[0].feed_start_day", 3, "before transduction_day"),
    ("recipe-unknown-unit-kind", 'unit_kinds = ["rocking_bag"]', 'unit_kinds = ["wave"]',
     "recipes[0].unit_kinds[0]", "wave", "rocking_bag"),
    ("unit-id-pattern", 'id = "BR03"', 'id = "br03"',
     "units[2].id", "br03", "pattern"),
    ("working-below-initial-volume", "working_volume_l = 2.0", "working_volume_l = 0.4",
     "units[5].working_volume_l", 0.4, "below the initial volume"),
    ("site-code-pattern", 'code = "DEMO"', 'code = "demo plant"',
     "site.code", "demo plant", "pattern"),
]


@pytest.mark.parametrize("case_id,old,new,key,value,fragment", CASES, ids=[c[0] for c in CASES])
def test_malformed_site_file(tmp_path, case_id, old, new, key, value, fragment):
    path, msg = load_error(tmp_path, edit(old, new))
    line = error_line(msg, path, key, value)
    assert fragment in line


def test_case_list_covers_enough_kinds():
    assert len({c[0] for c in CASES}) == len(CASES) >= 10


def test_toml_syntax_error_names_file_and_line(tmp_path):
    text = edit('code = "DEMO"', 'code = "DEMO')  # unterminated string
    path, msg = load_error(tmp_path, text)
    assert msg.startswith(f"{path}: not valid TOML")
    assert f"line {line_of('code = ' + chr(34) + 'DEMO')}" in msg


def test_toml_syntax_error_far_down(tmp_path):
    text = edit("harvest_day = 10", "harvest_day = = 10")
    path, msg = load_error(tmp_path, text)
    assert f"line {line_of('harvest_day = 10')}" in msg


def test_unknown_section_typo(tmp_path):
    text = edit("[[recipes]]\n", "[[recipe]]\n", count=2)
    path, msg = load_error(tmp_path, text)
    error_line(msg, path, "recipes", "(missing)")
    line = next(line for line in msg.splitlines() if line.startswith(f"{path}: recipe:"))
    assert "unknown key" in line and "(value: [{'id': 'CART-RB-12D'" in line
    assert len(line) < 300  # a whole section is shortened, not dumped
    assert len(msg.splitlines()) == 2


@pytest.mark.parametrize("section", ["site", "recipes", "unit_types", "rooms"])
def test_missing_required_section(tmp_path, section):
    doc = DEMO
    if section == "site":
        start = doc.index("[site]\n")
        doc = doc[:start] + doc[doc.index("[[areas]]"):]
    else:
        header = f"[[{section}]]\n"
        # Drop every table of the section (each runs until the next table header of another section).
        blocks = re.split(r"(?m)^(?=\[)", doc)
        doc = "".join(b for b in blocks if not b.startswith((header, f"[[{section}.")))
        assert header not in doc
    path, msg = load_error(tmp_path, doc)
    line = error_line(msg, path, section, "(missing)")
    assert "Field required" in line


def test_missing_file_is_a_clear_error(tmp_path):
    path = tmp_path / "no_such_site.toml"
    with pytest.raises(SiteError) as info:
        load_site(path)
    assert str(path) in str(info.value)
    assert "cannot read site file" in str(info.value) and "No such file" in str(info.value)
    assert_clean(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(SiteError, match="cannot read site file") as info:
        load_site(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: ")


def test_non_utf8_file(tmp_path):
    raw = edit("Aseptic processing room", "Aseptic processing r\xe4um").encode("latin-1")
    path, msg = load_error(tmp_path, raw)
    assert "UTF-8" in msg and "0xe4" in msg
    assert f"line {line_of('Aseptic processing room')}" in msg


def test_parse_site_names_its_source():
    with pytest.raises(SiteError) as info:
        parse_site(edit('grade = "C"', 'grade = "Z"'), source="plant-x.toml")
    assert str(info.value).startswith("plant-x.toml: rooms[2].grade (CR-C1): ")
    assert isinstance(info.value, ValueError)


def test_room_type_too_loose_for_the_room_grade(tmp_path):
    # Grade B room given the grade C room type: its particle alert limits exceed the B action limits.
    text = edit('grade = "B"\ndp_setpoint_pa = 45\ntype = "grade_b"',
                'grade = "B"\ndp_setpoint_pa = 45\ntype = "grade_c"')
    path, msg = load_error(tmp_path, text)
    p05 = error_line(msg, path, "room_types[2].tags[0].alert_high", 1_760_000.0)
    p50 = error_line(msg, path, "room_types[2].tags[1].alert_high", 14_650.0)
    assert "CR-B1 (grade B)" in p05 and "352000" in p05
    assert "CR-B1 (grade B)" in p50 and "2930" in p50
    # The grade C rooms using the same type are fine.
    assert "CR-C1" not in msg and "CR-C2" not in msg


def test_endpoint_problem_reported_once_naming_all_units(tmp_path):
    text = edit('endpoint = "twin-opcua", browse_path = "{unit}/pH"',
                'endpoint = "opcua-twin", browse_path = "{unit}/pH"')
    path, msg = load_error(tmp_path, text)
    lines = msg.splitlines()
    assert len(lines) == 1
    assert lines[0] == error_line(msg, path, "unit_types[0].tags[2].opcua.endpoint", "opcua-twin")
    assert "tag PH of BR01, BR02, BR03, BR04, BR05 names an unknown endpoint" in lines[0]


def test_recipe_setpoint_not_controllable_on_its_unit_type(tmp_path):
    # BASE_SP only exists (controllable) on stirred tanks; the rocking-bag recipe may not set it.
    text = edit('name = "BASE"\ndescription = "Cumulative base (NaHCO3) added"\nuom = "mL"\n'
                'eng_range = [0.0, 2000.0]\n',
                'name = "BASE_SP"\ndescription = "Base dosing limit"\nuom = "mL"\neng_range = [0.0, 2000.0]\n'
                'controllable = true\npar = [0.0, 500.0]\nmax_step = 50.0\n')
    text = edit("AGIT_SP = 10.0, PERF_SP = 1.0 }", "AGIT_SP = 10.0, PERF_SP = 1.0, BASE_SP = 100.0 }", text=text)
    path, msg = load_error(tmp_path, text)
    line = error_line(msg, path, "recipes[0].setpoints.BASE_SP", "BASE_SP")
    assert "unit type rocking_bag does not declare" in line


# ---------------------------------------------------------------- 3. several errors at once


def test_several_validation_errors_are_all_reported(tmp_path):
    text = edit('grade = "C"', 'grade = "X"', count=2)                       # rooms[2], rooms[3]
    text = edit("initial_volume_l = 0.5", "initial_volum_l = 0.5", text=text)  # units[0] typo
    text = edit("harvest_day = 10", 'harvest_day = "ten"', text=text)        # recipes[1]
    text = edit("par = [36.0, 38.0]", "par = [38.0, 36.0]", text=text)        # unit_types[0].tags[1]
    path, msg = load_error(tmp_path, text)
    error_line(msg, path, "rooms[2].grade", "X")
    error_line(msg, path, "rooms[3].grade", "X")
    error_line(msg, path, "units[0].initial_volum_l", 0.5)
    error_line(msg, path, "units[0].initial_volume_l", "(missing)")
    error_line(msg, path, "recipes[1].harvest_day", "ten")
    error_line(msg, path, "unit_types[0].tags[1].par", [38.0, 36.0])
    assert len(msg.splitlines()) == 6


def test_several_cross_reference_errors_are_all_reported(tmp_path):
    text = edit('id = "BR02"', 'id = "BR01"')
    text = edit('room = "CR-C2"', 'room = "CR-X"', text=text)
    text = edit('area = "MFG"', 'area = "NOPE"', text=text)
    text = edit("PERF_SP = 1.0 }", "PERF_SP = 1.0, PH = 7.0 }", text=text)
    text = edit("PERF_SP = 2.0 }", "PERF_SP = 2.0, PH = 7.0 }", text=text)
    path, msg = load_error(tmp_path, text)
    error_line(msg, path, "units[1].id", "BR01")
    error_line(msg, path, "units[4].room", "CR-X")
    error_line(msg, path, "rooms[0].area", "NOPE")
    error_line(msg, path, "recipes[0].setpoints.PH", "PH")
    error_line(msg, path, "recipes[1].setpoints.PH", "PH")
    assert len(msg.splitlines()) == 5


# ---------------------------------------------------------------- 4. Site helpers


def test_unit_tags_in_declaration_order(site):
    rb = [t.short for t in site.unit_tags("BR01")]
    assert rb == ["TEMP", "TEMP_SP", "PH", "PH_SP", "DO", "DO_SP", "AGIT", "AGIT_SP", "CO2", "WEIGHT", "PERF",
                  "PERF_SP"]
    assert [t.short for t in site.unit_tags("BR08")] == [*rb, "BASE"]
    assert all(t.owner == "BR03" for t in site.unit_tags("BR03"))
    assert site.unit_tags("CR-D1")[0].name == "CR-D1.P05"
    assert site.unit_tags("BR99") == []


def test_units_in_room(site):
    assert [u.id for u in site.units_in_room("CR-C1")] == ["BR01", "BR02", "BR03", "BR04"]
    assert [u.id for u in site.units_in_room("CR-C2")] == ["BR05", "BR06", "BR07", "BR08"]
    for room in ("CR-A1", "CR-B1", "CR-D1", "NOWHERE"):
        assert site.units_in_room(room) == []
    assert sum(len(site.units_in_room(r)) for r in site.rooms) == len(site.units)


def test_controllable(site):
    names = ["TEMP_SP", "PH_SP", "DO_SP", "AGIT_SP", "PERF_SP"]
    for unit in UNITS:
        tags = site.controllable(unit)
        assert [t.short for t in tags] == names
        assert all(t.controllable and t.owner == unit for t in tags)
    assert site.controllable("CR-C1") == []
    assert site.controllable("BR99") == []
    # Kind-specific limits survive resolution.
    assert site.tags["BR01.AGIT_SP"].par == (6.0, 20.0)
    assert site.tags["BR06.AGIT_SP"].par == (80.0, 250.0)
