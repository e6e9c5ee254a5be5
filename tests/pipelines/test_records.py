"""The typed records of ingest: one golden file per record and format version, parsed and written
back byte for byte; corrupt records are one clear error."""
import json

import pytest

from millrace.pipelines import records
from millrace.pipelines.errors import CorruptFile
from tests.conftest import GOLDEN

FOLDER = GOLDEN / "pipelines"


def _golden(stem: str, cls) -> str:
    version = cls.model_fields["format_version"].default
    path = FOLDER / f"{stem}.v{version}.json"
    assert path.is_file(), f"{path} is missing: every record format version needs its golden file"
    return path.read_text()


@pytest.mark.parametrize("stem", sorted(records.FORMATS))
def test_golden_file_round_trips_unchanged(stem):
    cls = records.FORMATS[stem]
    text = _golden(stem, cls)
    record = cls.from_json(text)
    assert record.to_json() + "\n" == text
    assert cls.from_json(record.to_json()) == record


def test_every_golden_file_belongs_to_a_known_format():
    known = {f"{stem}.v{cls.model_fields['format_version'].default}.json" for stem, cls in records.FORMATS.items()}
    assert {p.name for p in FOLDER.glob("*.json")} == known


def test_a_changed_field_is_noticed():
    text = _golden("partition-manifest", records.PartitionManifest)
    changed = json.loads(text)
    changed["rows"] = "many"
    with pytest.raises(CorruptFile, match=r"rows"):
        records.PartitionManifest.from_json(json.dumps(changed), "m.json")
    changed = json.loads(text)
    changed["row_count"] = 1                    # an unknown key is a different format, not ignored
    with pytest.raises(CorruptFile, match=r"row_count"):
        records.PartitionManifest.from_json(json.dumps(changed), "m.json")


@pytest.mark.parametrize("text", ["", "   \n", '{"source": "ratings", "partition": {"key": "mo', "[]", "null"])
def test_truncated_or_empty_records_are_one_line_errors(text):
    with pytest.raises(CorruptFile) as info:
        records.PartitionManifest.from_json(text, "/lake/ratings/month=2015-01/_manifest.json")
    message = str(info.value)
    assert message.startswith("/lake/ratings/month=2015-01/_manifest.json: not a valid PartitionManifest")
    assert "\n" not in message and "(fix: " in message
    assert info.value.exit_code == 2 and not info.value.retryable


def test_a_newer_format_version_is_refused():
    changed = json.loads(_golden("partition-manifest", records.PartitionManifest))
    changed["format_version"] = 2
    with pytest.raises(CorruptFile, match="format_version"):
        records.PartitionManifest.from_json(json.dumps(changed))


def test_records_are_frozen_and_read_by_attribute_only():
    m = records.PartitionManifest.from_json(_golden("partition-manifest", records.PartitionManifest))
    with pytest.raises(Exception):
        m.rows = 1
    assert m.rows == 59
    with pytest.raises(TypeError):
        m["rows"]  # a schema, not key spellings
