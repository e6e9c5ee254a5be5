"""physicalType states the stored type; a timestamp's landing encoding is the property's
customProperty ``landingEncoding``. The older spelling (the encoding, or Arrow's ``float64``, in
physicalType) still loads, to the same compiled contract, with one warning per field."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from millrace.contracts.diff import diff_contracts
from millrace.contracts.loader import load_contract
from millrace.contracts.model import STORED_TYPES
from tests.conftest import EXAMPLE, GOLDEN

OLD = GOLDEN / "contracts" / "ratings-1.0.0.yaml"
NEW = GOLDEN / "contracts" / "ratings-1.0.0-stored-types.yaml"
OLD_GOLDEN = sorted(p for p in (GOLDEN / "contracts").glob("ratings-*.yaml") if p != NEW)


def _old_spellings(text: str) -> int:
    return sum(text.count(f"physicalType: {s}") for s in ("float64", "epoch_seconds", "epoch_millis", "iso8601"))


@pytest.mark.parametrize("name", ["ratings", "movies"])
def test_example_contracts_state_stored_types_and_load_without_warnings(name):
    path = EXAMPLE / "contracts" / f"{name}.yaml"
    contract = load_contract(path)
    assert contract.warnings == ()
    for prop in yaml.safe_load(path.read_text())["schema"][0]["properties"]:
        assert prop["physicalType"] in STORED_TYPES[prop["logicalType"]], prop["name"]


def test_example_ratings_time_keeps_its_landing_encoding():
    field = load_contract(EXAMPLE / "contracts" / "ratings.yaml").field("timestamp")
    assert field.landing_encoding == field.encoding == field.physical_type == "epoch_seconds"


@pytest.mark.parametrize("path", OLD_GOLDEN, ids=lambda p: p.name)
def test_golden_contracts_in_the_old_spelling_load_with_one_warning_per_field(path):
    contract = load_contract(path)
    assert len(contract.warnings) == _old_spellings(path.read_text()) > 0
    for warning in contract.warnings:
        line = str(warning)
        assert "\n" not in line and line.startswith(str(path)) and ".physicalType:" in line and "(fix: write " in line
    if contract.event_time:
        assert contract.field("timestamp").encoding == "epoch_seconds"


def test_old_and_new_spelling_compile_to_the_same_contract_and_diff_as_no_change():
    old, new = load_contract(OLD), load_contract(NEW)
    assert [str(w).split(": ", 1)[1] for w in old.warnings] == [
        "schema[0].properties[2] (rating).physicalType: 'float64' is a deprecated spelling that stock ODCS tools "
        "do not read (fix: write physicalType: double)",
        "schema[0].properties[3] (timestamp).physicalType: 'epoch_seconds' is a landing encoding, a deprecated "
        "spelling (stock ODCS tools read physicalType as the stored type) (fix: write physicalType: timestamp and "
        "customProperties: [{property: landingEncoding, value: epoch_seconds}])",
    ]
    assert new.warnings == ()
    assert dataclasses.replace(old, path=new.path) == new
    report = diff_contracts(old, new)
    assert report.changes == () and not report.fails


def _with_time(tmp_path, physical: str | None, encoding: str | None, name: str = "ratings.yaml"):
    data = yaml.safe_load(NEW.read_text())
    prop = next(p for p in data["schema"][0]["properties"] if p["name"] == "timestamp")
    prop.pop("physicalType")
    prop.pop("customProperties")
    if physical is not None:
        prop["physicalType"] = physical
    if encoding is not None:
        prop["customProperties"] = [{"property": "landingEncoding", "value": encoding}]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_contract(path)


def test_a_changed_encoding_is_breaking_whichever_spelling_states_it(tmp_path):
    old = _with_time(tmp_path, "epoch_seconds", None, "old.yaml")
    new = _with_time(tmp_path, "timestamp", "epoch_millis", "new.yaml")
    report = diff_contracts(old, new)
    assert [(c.what, c.breaking) for c in report.changes] == [
        ("type timestamp (epoch_seconds) -> timestamp (epoch_millis)", True)]


def test_no_encoding_means_iso8601_in_either_spelling(tmp_path):
    absent = _with_time(tmp_path, None, None, "a.yaml")
    stated = _with_time(tmp_path, "TIMESTAMP", "iso8601", "b.yaml")
    old = _with_time(tmp_path, "iso8601", None, "c.yaml")
    assert absent.field("timestamp").encoding == stated.field("timestamp").encoding == "iso8601"
    assert absent.warnings == stated.warnings == () and len(old.warnings) == 1
    assert diff_contracts(absent, stated).changes == diff_contracts(stated, old).changes == ()


def test_the_same_encoding_in_both_places_warns_to_drop_the_old_one(tmp_path):
    contract = _with_time(tmp_path, "epoch_seconds", "epoch_seconds")
    assert contract.field("timestamp").encoding == "epoch_seconds"
    (warning,) = contract.warnings
    assert warning.field.endswith("(timestamp).physicalType") and warning.fix == "write physicalType: timestamp"


def test_example_lake_servers_name_the_lake_of_the_default_state_folder():
    """Stock tools read the lake through each contract's `lake` server: it must name the folder that
    millrace writes for that source under the example's default state folder
    (`<state>/lake/<source>/<key>=<value>/part-*.parquet`, pipelines/lake.py)."""
    project = yaml.safe_load((EXAMPLE / "millrace.yaml").read_text())
    for source, spec in project["sources"].items():
        (server,) = yaml.safe_load((EXAMPLE / spec["contract"]).read_text())["servers"]
        assert (server["server"], server["type"], server["format"]) == ("lake", "local", "parquet")
        assert server["path"] == f"{project['storage']['state_dir']}/lake/{source}/*/part-*.parquet"


def test_contracts_lint_prints_one_warning_line_per_old_spelling_and_exits_0():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "millrace.pipelines.cli", "contracts", "lint", str(OLD), str(NEW)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ok    ") == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("warning ")]
    assert [line.removeprefix("warning ") for line in lines] == [str(w) for w in load_contract(OLD).warnings]
    assert len(lines) == 2 and all(str(OLD) in line and "(fix: write physicalType: " in line for line in lines)
