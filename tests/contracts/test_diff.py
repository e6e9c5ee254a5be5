import pytest

from millrace.contracts.diff import diff_contracts
from millrace.contracts.loader import load_contract
from tests.conftest import GOLDEN

BASE = GOLDEN / "contracts" / "ratings-1.0.0.yaml"

# golden file -> (breaking changes expected, run fails)
CASES = {
    "ratings-1.0.0.yaml": (0, False),
    "ratings-1.1.0-compatible.yaml": (0, False),
    "ratings-1.2.0-range-tightened.yaml": (1, True),
    "ratings-1.2.0-field-removed.yaml": (1, True),
    "ratings-1.2.0-type-changed.yaml": (1, True),
    "ratings-1.2.0-enum-value-removed.yaml": (1, True),
    "ratings-1.2.0-optional-to-required.yaml": (1, True),
    "ratings-1.2.0-key-changed.yaml": (1, True),
    "ratings-2.0.0-range-tightened.yaml": (1, False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_versions_are_classified(name):
    report = diff_contracts(load_contract(BASE), load_contract(GOLDEN / "contracts" / name))
    breaking, fails = CASES[name]
    assert len(report.breaking) == breaking, [c.what for c in report.changes]
    assert report.fails is fails
    assert ("FAIL" in report.verdict) is fails


def test_compatible_changes_are_listed():
    report = diff_contracts(load_contract(BASE), load_contract(GOLDEN / "contracts" / "ratings-1.1.0-compatible.yaml"))
    whats = " | ".join(f"{c.where}: {c.what}" for c in report.changes)
    assert "field device: added (optional)" in whats
    assert "maximum 5.0 -> 10.0 (widened)" in whats
    assert "description changed" in whats


def test_enum_value_added_is_compatible_and_removed_is_breaking():
    old = load_contract(GOLDEN / "contracts" / "ratings-1.2.0-enum-value-removed.yaml")
    new = load_contract(BASE)
    back = diff_contracts(old, new)
    assert [c.breaking for c in back.changes if "enum" in c.what] == [False]
    forward = diff_contracts(new, old)
    assert [c.breaking for c in forward.changes if "enum" in c.what] == [True]


def test_required_to_optional_is_compatible():
    old = load_contract(GOLDEN / "contracts" / "ratings-1.2.0-optional-to-required.yaml")
    new = load_contract(GOLDEN / "contracts" / "ratings-1.1.0-compatible.yaml")
    report = diff_contracts(old, new)
    assert any(c.what == "required -> optional" and not c.breaking for c in report.changes)
