"""Pieces of the simulated areaDetector that need no IOC: file templates, the data root,
NDAttributes XML."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from sim_iocs.ad_common import TemplateError, format_file_template
from sim_iocs.ad_plugins import confined_directory
from sim_iocs.ndattributes import NDAttributeError, attributes_xml, evaluate, parse_attributes


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("%s%s_%6.6d.h5", "/d/scan_000007.h5"),  # stock ophyd
        ("%s%s.h5", "/d/scan.h5"),  # ophyd-async: C ignores the unused number
        ("%s%s_%3.3d.h5", "/d/scan_007.h5"),  # areaDetector's default
        ("%s%s_%d_100%%.h5", "/d/scan_7_100%.h5"),
        ("%sfixed.h5", "/d/fixed.h5"),
    ],
)
def test_file_template_formats_like_snprintf(template, expected):
    assert format_file_template(template, "/d/", "scan", 7) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("%d%s.h5", "given a string"),
        ("%s%s%d%d.h5", "more than 3"),
        ("%s%d.h5", "given a string"),
        ("%s%s_%f.h5", "unsupported conversion"),
        ("%s%s%s.h5", "given the file number"),
    ],
)
def test_bad_file_templates_are_errors(template, message):
    with pytest.raises(TemplateError, match=message):
        format_file_template(template, "/d/", "scan", 7)


def test_file_path_stays_inside_the_data_root(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    ok, why = confined_directory(f"{root}/a/", root, 0)
    assert ok == root / "a" and why == ""
    for bad, reason in [(f"{root}/../outside/", "outside the data root"),
                        (f"{root}/link/", "outside the data root"),
                        (str(outside), "outside the data root"),
                        ("relative/dir/", "relative"),
                        ("", "empty"),
                        (f"{root}/missing/", "does not exist")]:
        d, why = confined_directory(bad, root, 0)
        assert d is None and reason in why, (bad, why)
    assert not (root / "missing").exists()


@pytest.mark.parametrize(("depth", "created"), [(-1, False), (-2, True), (0, False),
                                              ("first-missing", False), ("above", True)])
def test_create_directory_depth(tmp_path, depth, created):
    """CreateDirectory -n: up to n missing trailing levels; +n: missing levels deeper than n."""
    root = tmp_path / "r"
    root.mkdir()
    target = root / "x" / "y"  # two missing levels, the first at depth len(parts) - 1
    first_missing = len((root / "x").parts) - 1
    n = {"first-missing": first_missing, "above": first_missing - 1}.get(depth, depth)
    d, why = confined_directory(f"{target}/", root, n)
    assert (d is not None) == created, why
    assert target.is_dir() == created


class _Channel:
    def __init__(self, value):
        self.value = value


def test_ndattributes_xml_roundtrip_and_fill():
    pvs = {"P:mon:I0": _Channel(5.0e10), "P:cam1:AcquireTime_RBV": _Channel(0.25),
           "P:name": _Channel("sample-1")}
    xml = attributes_xml([("I0", "P:mon:I0", "photons"), ("Gone", "Q:elsewhere", "")])
    xml = xml.replace("</Attributes>",
                      '<Attribute name="AcqTime" type="PARAM" source="ACQ_TIME" '
                      'datatype="DOUBLE"/><Attribute name="Name" type="EPICS_PV" '
                      'source="P:name" dbrtype="DBR_STRING"/></Attributes>')
    specs, problems = parse_attributes(xml, "P:", pvs.get)
    assert [s.name for s in specs] == ["I0", "Gone", "AcqTime", "Name"]
    assert any("Q:elsewhere" in p and "not served" in p for p in problems)
    values = evaluate(specs, "P:", pvs.get)
    assert values["I0"][:2] == (5.0e10, "<f8")
    assert math.isnan(values["Gone"][0])
    assert values["AcqTime"][0] == 0.25
    assert values["Name"][0] == b"sample-1" and np.dtype(values["Name"][1]) == np.dtype("S40")


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<Attributes><Attribute name='a'", "syntax error"),
        ("<Other/>", "not <Attributes>"),
        ('<!DOCTYPE x [<!ENTITY e "x">]><Attributes/>', "DOCTYPE/ENTITY"),
        ("<Attributes><Attribute name='a' source='P:x' dbrtype='DBR_DOUBLE'/>"
         "<Attribute name='a' source='P:y' dbrtype='DBR_DOUBLE'/></Attributes>",
         "more than once"),
    ],
)
def test_bad_ndattributes_xml_is_refused(xml, message):
    with pytest.raises(NDAttributeError, match=message):
        parse_attributes(xml, "P:", lambda name: None)


def test_ndattribute_problems_are_reported_not_dropped():
    xml = ("<Attributes><Attribute name='f' type='FUNCTION' source='x'/>"
           "<Attribute name='p' type='PARAM' source='NOPE' datatype='INT'/>"
           "<Attribute name='d' source='P:x' dbrtype='DBR_WEIRD'/>"
           "<Attribute source='P:x'/></Attributes>")
    specs, problems = parse_attributes(xml, "P:", lambda name: None)
    assert [s.name for s in specs] == ["p"]
    assert len(problems) == 4
    assert any("FUNCTION" in p for p in problems) and any("NOPE" in p for p in problems)
