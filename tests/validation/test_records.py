"""Records validation writes for later readers: one golden file per format version, parsed and
written back unchanged; corrupt ones are one clear line."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from millrace.contracts.errors import CorruptRecord
from millrace.contracts.loader import load_contract
from millrace.validation import quarantine as Q
from millrace.validation import records
from tests.conftest import EXAMPLE, GOLDEN

FOLDER = GOLDEN / "validation"


def _golden(stem: str) -> str:
    cls = records.FORMATS[stem]
    path = FOLDER / f"{stem}.v{cls.model_fields['format_version'].default}.json"
    assert path.is_file(), f"{path} is missing: every record format version needs its golden file"
    return path.read_text()


@pytest.mark.parametrize("stem", sorted(records.FORMATS))
def test_golden_file_round_trips_unchanged(stem):
    cls, text = records.FORMATS[stem], _golden(stem)
    record = cls.from_json(text)
    assert record.to_json() + "\n" == text
    assert cls.from_json(record.to_json()) == record


def test_every_golden_file_belongs_to_a_known_format():
    known = {f"{stem}.v{cls.model_fields['format_version'].default}.json" for stem, cls in records.FORMATS.items()}
    known.add(f"quarantine.v{Q.FORMAT_VERSION}.parquet")
    assert {p.name for p in FOLDER.iterdir()} == known


@pytest.mark.parametrize("change,where", [({"success": "maybe"}, "success"), ({"passed": 1}, "passed"),
                                          ({"format_version": 2}, "format_version")])
def test_another_shape_or_version_is_refused(change, where):
    data = json.loads(_golden("expectations-report")) | change
    with pytest.raises(CorruptRecord, match=where):
        records.ExpectationsReport.from_json(json.dumps(data), "r.json")


@pytest.mark.parametrize("text", ["", "  \n", '{"format_version": 1, "suite": "mov', "[]", "null"])
def test_truncated_or_empty_report_is_one_line(text):
    with pytest.raises(CorruptRecord) as info:
        records.ExpectationsReport.from_json(text, "/lake/movies/dt=2016-10-03/_expectations-r.json")
    message = str(info.value)
    assert message.startswith("/lake/movies/dt=2016-10-03/_expectations-r.json: not a valid ExpectationsReport")
    assert "\n" not in message and "(fix: " in message and info.value.exit_code == 2


def test_a_suite_run_writes_a_report_that_reads_back():
    from millrace.validation.expectations import SuiteRunner

    runner = SuiteRunner(load_contract(EXAMPLE / "contracts" / "movies.yaml"))
    table = pa.table({"movieId": [1, 2, 2], "title": ["Heat (1995)", None, "Up (2009)"], "year": [1995, 2009, 2009],
                      "genres": ["Action|Crime", "Animation", "not|a genre!"]})
    result = runner.validate(table)
    report = records.ExpectationsReport.from_json(result.to_json())
    assert report == result.report and report.suite == "movies-1.0.0" and not result.success
    assert report.failed_blocking == ("expect_column_values_to_be_unique(column=movieId)",
                                      "expect_column_values_to_match_regex(column=genres)")
    assert report.failed_warnings == ("expect_column_values_to_not_be_null(column=title)",)
    assert report.evaluated == len(report.great_expectations["results"])


def _golden_quarantine() -> pa.Table:
    return Q.records("movies", "2016-10-03", "landing/movies/2016-10-03/movies.csv", [3, 7],
                     pa.array(["type_mismatch", "malformed_record"]), pa.array(["year", None], pa.string()),
                     pa.array([b"3,Heat,nineteen,Action", b'7,"broken'], pa.large_binary()), "20161003T000000-abc")


def test_quarantine_golden_matches_the_writer():
    golden = pq.read_table(FOLDER / f"quarantine.v{Q.FORMAT_VERSION}.parquet")
    assert golden.schema.equals(Q.SCHEMA, check_metadata=True), golden.schema
    assert golden.equals(_golden_quarantine())
    assert Q.counts_by_reason(golden) == {"type_mismatch": 1, "malformed_record": 1}
    assert Q.empty().schema.equals(Q.SCHEMA, check_metadata=True) and Q.counts_by_reason(Q.empty()) == {}
