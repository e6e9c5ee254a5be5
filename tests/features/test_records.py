"""The typed records of the feature platform: one golden file per record and format version, parsed
and written back byte for byte; a changed, truncated or newer record is one clear error."""
import json

import pytest

from millrace.features import records
from millrace.features.errors import CorruptTable
from tests.conftest import GOLDEN

FOLDER = GOLDEN / "features"


CURRENT = {f"{stem}.v{cls.model_fields['format_version'].default}.json": cls for stem, cls in records.FORMATS.items()}


def test_one_golden_file_per_format_version_and_no_other():
    assert sorted(p.name for p in FOLDER.glob("*.json")) == sorted(CURRENT)


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_golden_file_parses_and_writes_back_byte_for_byte(name):
    text = (FOLDER / name).read_text()
    record = CURRENT[name].from_json(text)
    assert (record.to_json() + "\n", CURRENT[name].from_json(record.to_json())) == (text, record)


def _golden(stem: str) -> str:
    return next((FOLDER / n).read_text() for n, cls in CURRENT.items() if cls is records.FORMATS[stem])


@pytest.mark.parametrize("change,needle", [
    (lambda d: d.update(rows="many"), "rows"),
    (lambda d: d.update(row_count=1), "row_count"),         # an unknown key is another format, not ignored
    (lambda d: d.update(format_version=2), "format_version"),
    (lambda d: d.pop("sha256"), "sha256"),
    (lambda d: d["inputs"][0].pop("run_id"), "inputs.0.run_id"),
])
def test_a_changed_record_is_refused(change, needle):
    data = json.loads(_golden("offline-manifest"))
    change(data)
    with pytest.raises(CorruptTable, match=needle):
        records.OfflineManifest.from_json(json.dumps(data), "m.json")


@pytest.mark.parametrize("text", ["", "  \n", '{"view": "user_activity", "rows": 12', "[]", "null"])
def test_truncated_or_empty_records_are_one_line_errors(text):
    with pytest.raises(CorruptTable) as info:
        records.OfflineManifest.from_json(text, "/offline/user_activity/_manifest.json", "rebuild the view")
    message = str(info.value)
    assert message.startswith("/offline/user_activity/_manifest.json: not a valid OfflineManifest")
    assert message.endswith("(fix: rebuild the view)") and "\n" not in message
    assert info.value.exit_code == 2 and not info.value.retryable


def test_records_are_frozen_and_read_by_attribute_only():
    report = records.MaterializeReport.from_json(_golden("materialize-report"))
    with pytest.raises(Exception):
        report.written = 0
    assert report.written == 12
    with pytest.raises(TypeError):
        report["written"]  # a schema, not key spellings
