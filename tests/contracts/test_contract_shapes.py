"""Every wrong shape of a contract file gets one ContractError line naming the file, the field and
the fix; the CLI turns it into exit 2 and one line on stderr."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from millrace.contracts.errors import ContractError
from millrace.contracts.loader import load_contract
from tests.conftest import EXAMPLE

RATINGS = yaml.safe_load((EXAMPLE / "contracts" / "ratings.yaml").read_text())
MOVIES = yaml.safe_load((EXAMPLE / "contracts" / "movies.yaml").read_text())
DROP = object()
P = "schema.0.properties"
CUSTOM = "schema.0.customProperties"


def edit(path: str, value, base: dict = RATINGS) -> dict:
    """A copy of ``base`` with the value at a dotted path (list indexes as numbers) replaced or dropped."""
    data = copy.deepcopy(base)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = data
    for key in keys[:-1]:
        node = node[key]
    if value is DROP:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


# case -> (contract document, the field the line must name, what the line must say)
SHAPES = {
    # a list or scalar where a map belongs, and the reverse
    "schema a map": (edit("schema", {"ratings": {}}), "schema:", "is a mapping, where a list belongs"),
    "schema a scalar": (edit("schema", 5), "schema:", "is the number 5, where a list belongs"),
    "schema object a scalar": (edit("schema", ["ratings"]), "schema[0]:", "where a mapping belongs"),
    "properties a map": (edit(f"{P}", {"userId": {}}), "schema[0].properties:", "where a list belongs"),
    "property a scalar": (edit(f"{P}.0", "userId"), "schema[0].properties[0]:", "where a mapping belongs"),
    "property a list": (edit(f"{P}.0", ["userId"]), "schema[0].properties[0]:", "is a list, where a mapping"),
    "logicalTypeOptions a list": (edit(f"{P}.0.logicalTypeOptions", [1]), "properties[0].logicalTypeOptions:",
                                  "is a list, where a mapping belongs"),
    "customProperties a map": (edit(CUSTOM, {"eventTime": "timestamp"}), "schema[0].customProperties:",
                               "is a mapping, where a list belongs"),
    "customProperty a scalar": (edit(CUSTOM, ["eventTime"]), "customProperties[0]:", "where a mapping belongs"),
    "quality a map": (edit("schema.0.quality", {"metric": "rowCount"}), "schema[0].quality:", "where a list"),
    "quality arguments a list": (edit(f"{P}.2.quality", [{"metric": "invalidValues", "mustBe": 0, "arguments": [1]}]),
                                 "quality[0].arguments:", "is a list, where a mapping belongs"),
    "description a scalar": (edit("description", 5), "description:", "where a mapping belongs"),
    "id a list": (edit("id", ["a"]), "id:", "is a list, where text belongs"),
    "version a number": (edit("version", 1.0), "version:", "is the number 1.0, where text belongs"),
    "required as text": (edit(f"{P}.0.required", "yes"), "properties[0].required:", "where true or false"),
    "top level a list": ([RATINGS], "(top level):", "is a list, where a mapping belongs"),
    "top level a scalar": ("a contract", "(top level):", "is the text 'a contract'"),
    # fields without names, or with names the platform cannot carry
    "field without name": (edit(f"{P}.0.name", DROP), "schema[0].properties[0]:", "'name' is a required property"),
    "field name empty": (edit(f"{P}.0.name", None), "properties[0].name:", "is empty, where text belongs"),
    "field name a number": (edit(f"{P}.0.name", 7), "properties[0].name:", "is the number 7"),
    "field name with a space": (edit(f"{P}.0.name", "user id"), "properties[0].name:", "'user id' is not a valid name"),
    "field name with a dot": (edit(f"{P}.0.name", "user.id"), "properties[0].name:", "is not a valid name"),
    "field name as code": (edit(f"{P}.0.name", "x'];__import__('os')#"), "properties[0].name:", "is not a valid name"),
    "field name too long": (edit(f"{P}.0.name", "a" * 64), "properties[0].name:", "is not a valid name"),
    # enum entries of the wrong shape or type
    "enum a scalar": (edit(f"{P}.2.enum", 5), "properties[2].enum:", "where a list belongs"),
    "enum entries bare": (edit(f"{P}.2.enum", [0.5, 1.0]), "properties[2].enum[0]:", "where a mapping belongs"),
    "enum entry without value": (edit(f"{P}.2.enum", [{"val": 1}]), "enum[0]:", "'value' is a required property"),
    "enum entry a map value": (edit(f"{P}.2.enum", [{"value": {"a": 1}}]), "enum[0].value:", "is a mapping"),
    "enum entry wrong type": (edit(f"{P}.2.enum", [{"value": "high"}]), "(rating).enum[0]:", "'high' is not a number"),
    "enum entry text on string": (edit(f"{P}.1.enum", [{"value": 3}], MOVIES), "(title).enum[0]:", "is not text"),
    "enum on a timestamp": (edit(f"{P}.3.enum", [{"value": "2020-01-01"}]), "(timestamp).enum[0]:", "not supported"),
    "enum entry beyond int64": (edit(f"{P}.0.enum", [{"value": 2**64}]), "(userId).enum[0]:", "64-bit integer"),
    "validValues a scalar": (edit(f"{P}.2.quality", [{"metric": "invalidValues", "mustBe": 0,
                                                       "arguments": {"validValues": 5}}]),
                             "quality[0].arguments.validValues:", "where a list of values belongs"),
    "validValues wrong type": (edit(f"{P}.2.quality", [{"metric": "invalidValues", "mustBe": 0,
                                                         "arguments": {"validValues": ["x"]}}]),
                               "validValues[0]:", "'x' is not a number"),
    # huge, infinite, or otherwise unusable numbers
    "minimum beyond float": (edit(f"{P}.2.logicalTypeOptions.minimum", 10**400), "(rating).logicalTypeOptions.minimum:",
                             "too large for a 64-bit float"),
    "minimum infinite": (edit(f"{P}.2.logicalTypeOptions.minimum", float("inf")), "logicalTypeOptions.minimum:",
                         "not a finite number"),
    "maximum nan": (edit(f"{P}.2.logicalTypeOptions.maximum", float("nan")), "logicalTypeOptions.maximum:",
                    "not a finite number"),
    "maxLength huge": (edit(f"{P}.1.logicalTypeOptions.maxLength", 10**30, MOVIES), "(title).logicalTypeOptions.maxLength:",
                       "is not a whole number in [0, 2147483647]"),
    "minLength above maxLength": (edit(f"{P}.1.logicalTypeOptions", {"minLength": 9, "maxLength": 3}, MOVIES),
                                  "(title).logicalTypeOptions:", "minLength 9 is above maxLength 3"),
    "tolerance huge": (edit(f"{CUSTOM}.4.value", 10**30), "customProperties.futureToleranceSeconds:", "whole number in"),
    "tolerance a boolean": (edit(f"{CUSTOM}.4.value", True), "futureToleranceSeconds:", "whole number"),
    "threshold a boolean": (edit(f"{CUSTOM}.3.value", True), "quarantineThreshold:", "the boolean true is not a share"),
    "primary key position zero": (edit(f"{P}.0.primaryKeyPosition", 0), "(userId).primaryKeyPosition:", "[1, 1000]"),
    "row count beyond int64": (edit("schema.0.quality.0.mustBeGreaterThan", 2**70), "quality[0].mustBeGreaterThan:",
                               "64-bit integer"),
    "row count fractional": (edit("schema.0.quality.0.mustBeGreaterThan", 0.5), "quality[0].mustBeGreaterThan:",
                             "not a whole number"),
    "percent over 100": (edit(f"{P}.1.quality.0.mustBeLessThan", 150, MOVIES), "quality[0].mustBeLessThan:",
                         "not a percentage"),
    "null share without an upper bound": (edit(f"{P}.1.quality.0", {"metric": "nullValues", "mustBeGreaterThan": 1}, MOVIES),
                                          "quality[0].mustBeGreaterThan:", "needs an upper bound"),
    "mustNotBe on a row count": (edit("schema.0.quality.0", {"metric": "rowCount", "mustNotBe": 0}),
                                 "quality[0].mustNotBe:", "not supported"),
    "unknown unit": (edit(f"{P}.1.quality.0.unit", "parsecs", MOVIES), "quality[0].unit:", "'parsecs'"),
    # other values the data path could not use
    "timestamp bound not a time": (edit(f"{P}.3.logicalTypeOptions", {"minimum": "last tuesday"}),
                                   "(timestamp).logicalTypeOptions.minimum:", "not an ISO 8601 timestamp"),
    "non-UTC default zone": (edit(f"{P}.3.logicalTypeOptions", {"defaultTimezone": "Europe/Paris"}),
                             "logicalTypeOptions.defaultTimezone:", "not supported"),
    "multipleOf ignored": (edit(f"{P}.0.logicalTypeOptions.multipleOf", 2), "(userId).logicalTypeOptions.multipleOf:",
                           "not enforced"),
    "pattern on a number": (edit(f"{P}.2.quality", [{"metric": "invalidValues", "mustBe": 0,
                                                      "arguments": {"pattern": "^1"}}]),
                            "quality[0].arguments.pattern:", "does not apply to number fields"),
    "pattern not text": (edit(f"{P}.1.quality", [{"metric": "invalidValues", "mustBe": 0,
                                                   "arguments": {"pattern": 5}}], MOVIES),
                         "(title).quality[0].arguments.pattern:", "where a regular expression belongs"),
    "eventTime a list": (edit(f"{CUSTOM}.0.value", ["timestamp"]), "customProperties.eventTime:", "names unknown field a list"),
    "granularity a map": (edit(f"{CUSTOM}.1.value", {"m": 1}), "customProperties.partitionGranularity:", "a mapping"),
    "partitionKey a number": (edit(f"{CUSTOM}.2.value", 5), "customProperties.partitionKey:", "the number 5"),
    "logicalType a list": (edit(f"{P}.0.logicalType", ["integer"]), "properties[0].logicalType:", "is a list"),
    "one quality operator missing": (edit("schema.0.quality.0", {"metric": "rowCount"}), "schema[0].quality[0]:",
                                     "needs one of: mustBe, mustNotBe"),
}


@pytest.mark.parametrize("case", sorted(SHAPES))
def test_wrong_shape_gets_one_line_naming_file_field_and_fix(tmp_path, case):
    document, field, problem = SHAPES[case]
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    with pytest.raises(ContractError) as info:
        load_contract(path)
    message, error = str(info.value), info.value
    assert "\n" not in message, message
    assert message.startswith(f"{path}: {error.field}: "), message  # the line names file, then field
    assert field.rstrip(":") in error.field, message
    assert problem in error.problem, message
    assert error.fix and message.endswith(f"(fix: {error.fix})"), message


# Files that are not a YAML mapping at all: (bytes, field, problem)
RAW = {
    "empty file": (b"", "(file)", "is empty"),
    "only a comment": (b"# nothing yet\n", "(file)", "is empty"),
    "not UTF-8": (b"id: \xff\xfe caf\xe9\n", "(file)", "is not UTF-8 text"),
    "NUL byte": (b"id: a\x00b\n", "(yaml)", "invalid YAML"),
    "tab indentation": (b"schema:\n\t- name: x\n", "line 2", "invalid YAML"),
    "a key twice": (b"id: a\nversion: 1.0.0\nid: b\n", "line 3", "key 'id' appears twice"),
    "an integer too long to read": (b"id: " + b"9" * 5000 + b"\n", "line 1", "integer too long"),
    "a list as a key": (b"? [a, b]\n: 1\n", "line 1", "mapping key is a list"),
}


@pytest.mark.parametrize("case", sorted(RAW))
def test_unreadable_file_gets_one_line(tmp_path, case):
    data, field, problem = RAW[case]
    path = tmp_path / "contract.yaml"
    path.write_bytes(data)
    with pytest.raises(ContractError) as info:
        load_contract(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: {field}: "), message
    assert problem in message and "(fix: " in message, message


def test_a_folder_is_not_a_contract(tmp_path):
    with pytest.raises(ContractError, match=r": \(file\): is not a file \(fix: "):
        load_contract(tmp_path)


def test_checked_values_come_back_in_the_form_rules_compare_with(tmp_path):
    from datetime import datetime, timezone

    doc = edit(f"{P}.3.logicalTypeOptions", {"minimum": "1995-01-01", "exclusiveMaximum": "2030-01-01T01:00:00+01:00"})
    doc = edit(f"{P}.0.logicalTypeOptions.minimum", 0.5, doc)
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(doc))
    contract = load_contract(path)
    ts = contract.field("timestamp")
    assert ts.minimum == datetime(1995, 1, 1, tzinfo=timezone.utc)
    assert ts.exclusive_maximum == datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert contract.field("userId").minimum == 0.5  # a fractional bound on an integer field is meaningful


MILLRACE = [sys.executable, "-m", "millrace.pipelines.cli"]
CLI_CASES = ("field name with a dot", "enum entry wrong type", "minimum beyond float")


@pytest.mark.slow
def test_cli_lint_exits_2_with_one_line_per_bad_file(tmp_path):
    paths = []
    for i, case in enumerate(CLI_CASES):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump(SHAPES[case][0]))
        paths.append(path)
    for path, case in zip(paths, CLI_CASES):
        proc = subprocess.run([*MILLRACE, "contracts", "lint", str(path)], capture_output=True, text=True, timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert str(path) in lines[0] and SHAPES[case][1] in lines[0] and "(fix: " in lines[0], lines[0]
    good = EXAMPLE / "contracts" / "movies.yaml"
    both = subprocess.run([*MILLRACE, "contracts", "lint", str(good), str(paths[0])], capture_output=True, text=True,
                          timeout=120)
    assert both.returncode == 2 and both.stdout.startswith("ok") and len(both.stderr.strip().splitlines()) == 1
    folder = subprocess.run([*MILLRACE, "contracts", "lint", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert folder.returncode == 2 and "is not a file" in folder.stderr and "Traceback" not in folder.stderr
