"""Typed records that cross a stage boundary (bundle manifest, training lineage): one JSON round
trip each, and a golden file per format version under tests/golden/training/. A change to a
record's JSON fails here: bump its format_version and add a golden file, do not edit the old one."""
from __future__ import annotations

import dataclasses
import json

import pytest

from millrace.contracts.errors import MillraceError
from millrace.training import bundle, lineage
from millrace.training.bundle import InputInfo, Manifest, Part, Signature, Tensor
from millrace.training.lineage import ContractRef, ExamplesLineage, FeatureViewLineage, Lineage, PartitionRef
from millrace.training.records import from_json, to_json
from tests.conftest import GOLDEN

GOLDEN_TRAINING = GOLDEN / "training"
def manifest_v1() -> Manifest:
    inputs = (Tensor("userId", "INT64", ("batch",)), Tensor("user_activity__recent_movies", "INT64",
                                                            ("batch", "user_activity__recent_movies_length")))
    part = Part(files={"fp32": "user_encoder.onnx", "int8": "user_encoder.int8.onnx"},
                sha256={"user_encoder.onnx": "a" * 64, "user_encoder.int8.onnx": "b" * 64},
                served="int8", output="embedding",
                signature=Signature(inputs, (Tensor("embedding", "FLOAT", ("batch", 8)),)),
                inputs=(InputInfo("userId", "categorical", "int64", 0.0, 1.0, 40),
                        InputInfo("user_activity__recent_movies", "multi", "int64", 0.0, 1.0, 60)))
    return Manifest(model="retrieval", registered_name="movielens.retrieval", family="two_tower",
                    task="classification", primary="recall_at_10", metrics={"recall_at_10": 0.25, "ndcg_at_10": 0.125},
                    run_id="0123456789abcdef", split_at="2020-04-07 12:00:00+00:00", time_column="timestamp",
                    created_at="2026-12-02T01:00:00+00:00", parts={"user_encoder": part})


def lineage_v1() -> Lineage:
    ref = ContractRef("ratings", "1.0.0")
    return Lineage(
        examples=ExamplesLineage("ratings", "file:///lake/ratings", 2400, "c" * 64, ref,
                                 (PartitionRef("2020-01-01", "run-1", 20, "1.0.0"),
                                  PartitionRef("2020-01-02", "run-1", 21, None))),
        contracts={"ratings": ref, "movies": ContractRef("movies", "2.1.0")},
        feature_views={"user_activity": FeatureViewLineage("file:///offline/user_activity/data.parquet", "d" * 64,
                                                           "build-7", 40, "2026-12-01T00:00:00+00:00", "e" * 64)},
        git_sha="0123abc+dirty")


RECORDS = [(Manifest, bundle.FORMAT_VERSION, "bundle_manifest", manifest_v1),
           (Lineage, lineage.FORMAT_VERSION, "lineage", lineage_v1)]


@pytest.mark.parametrize("cls, version, stem, make", RECORDS, ids=[r[2] for r in RECORDS])
def test_golden_file_per_format_version(cls, version, stem, make):
    path = GOLDEN_TRAINING / f"{stem}.v{version}.json"
    assert path.is_file(), f"{path} is missing: a new format version needs its golden file"
    record = make()
    assert record.format_version == version
    assert to_json(record) == path.read_text()
    assert from_json(cls, path.read_text(), str(path)) == record


@pytest.mark.parametrize("cls, version, stem, make", RECORDS, ids=[r[2] for r in RECORDS])
def test_round_trip_and_frozen(cls, version, stem, make):
    record = make()
    again = from_json(cls, to_json(record), "x.json")
    assert again == record and to_json(again) == to_json(record)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.format_version = 99


def _edit(data, path, value):
    *head, last = path
    for key in head:
        data = data[key]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()
BAD = [  # (record, path to edit, new value, words the one-line error must contain)
    ("manifest", ("format_version",), 2, "format_version: 2 is not one of [1]"),
    ("manifest", ("parts", "user_encoder", "served"), "fp16", "parts.user_encoder.served"),
    ("manifest", ("parts", "user_encoder", "sha256"), ["a"], "parts.user_encoder.sha256: is list, not object"),
    ("manifest", ("metrics", "recall_at_10"), "high", "metrics.recall_at_10: is str, not float"),
    ("manifest", ("run_id",), _DELETE, "run_id: is missing"),
    ("manifest", ("surprise",), 1, "surprise: unknown field"),
    ("manifest", ("parts", "user_encoder", "inputs"), [{"name": "x"}], "parts.user_encoder.inputs[0].kind: is missing"),
    ("lineage", ("examples", "rows"), True, "examples.rows: is bool, not int"),
    ("lineage", ("examples", "partitions", 0, "rows"), "20", "examples.partitions[0].rows"),
    ("lineage", ("contracts",), [], "contracts: is list, not object"),
    ("lineage", ("examples",), _DELETE, "examples: is missing"),
]


@pytest.mark.parametrize("which, path, value, words", BAD, ids=[".".join(map(str, b[1])) for b in BAD])
def test_a_wrong_field_is_one_line_naming_it(which, path, value, words):
    cls, make = (Manifest, manifest_v1) if which == "manifest" else (Lineage, lineage_v1)
    data = json.loads(to_json(make()))
    _edit(data, path, value)
    with pytest.raises(MillraceError) as exc:
        from_json(cls, json.dumps(data), "rec.json")
    message = str(exc.value)
    assert message.startswith("rec.json: ") and words in message and "\n" not in message and "(fix:" in message


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"x"', b"\xff\xfe"], ids=["empty", "truncated", "list",
                                                                                 "null", "string", "not-utf8"])
def test_corrupt_json_is_one_line(text):
    with pytest.raises(MillraceError) as exc:
        from_json(Lineage, text, "lineage.json")
    assert str(exc.value).startswith("lineage.json: ") and "\n" not in str(exc.value)
