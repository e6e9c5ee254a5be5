"""The record base and the contract diff report as JSON (golden file per format version)."""
import json
import subprocess
import sys
from typing import Literal

import pytest

from millrace.contracts.diff import DiffRecord, diff_contracts
from millrace.contracts.errors import CorruptRecord, MillraceError
from millrace.contracts.loader import load_contract
from millrace.contracts.records import Record
from tests.conftest import GOLDEN

OLD = GOLDEN / "contracts" / "ratings-1.0.0.yaml"
NEW = GOLDEN / "contracts" / "ratings-1.2.0-range-tightened.yaml"
DIFF_GOLDEN = GOLDEN / "contracts" / f"diff-report.v{DiffRecord.model_fields['format_version'].default}.json"


def test_diff_report_matches_its_golden_file_and_round_trips():
    text = DIFF_GOLDEN.read_text()
    record = diff_contracts(load_contract(OLD), load_contract(NEW)).record()
    assert record.to_json() + "\n" == text
    assert DiffRecord.from_json(text) == record
    assert record.fails and record.breaking == 1 and record.changes[0].where == "field rating"


def test_cli_diff_json_prints_the_record_and_exits_1_on_a_failing_diff():
    proc = subprocess.run([sys.executable, "-m", "millrace.pipelines.cli", "contracts", "diff", "--json", str(OLD), str(NEW)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert DiffRecord.from_json(proc.stdout) == DiffRecord.from_json(DIFF_GOLDEN.read_text())


def test_a_diff_record_of_another_version_is_refused():
    data = json.loads(DIFF_GOLDEN.read_text()) | {"format_version": 2}
    with pytest.raises(CorruptRecord, match="format_version"):
        DiffRecord.from_json(json.dumps(data), "d.json")


class _Sample(Record):
    format_version: Literal[1] = 1
    name: str


class _OwnError(MillraceError):
    def __init__(self, file, problem, fix):
        super().__init__(f"{file}|{problem}|{fix}")


class _Owned(_Sample):
    corrupt = _OwnError


def test_record_is_frozen_and_strict():
    record = _Sample(name="a")
    with pytest.raises(Exception):
        record.name = "b"
    with pytest.raises(CorruptRecord, match=r"x.json: not a valid _Sample \(extra: extra inputs are not permitted\)"):
        _Sample.from_json('{"format_version": 1, "name": "a", "extra": 1}', "x.json")
    with pytest.raises(CorruptRecord, match=r"empty file"):
        _Sample.from_json(b"", "x.json")


def test_a_package_names_its_own_corrupt_error():
    with pytest.raises(_OwnError, match=r"^y.json\|not a valid _Owned \(truncated or not JSON"):
        _Owned.from_json('{"name": ', "y.json", fix="run it again")
