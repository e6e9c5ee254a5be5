"""Typed records that cross a stage boundary (bundle manifest, training lineage): one JSON round
trip each, and a golden file per format version under tests/golden/training/. A change to a
record's JSON fails here: bump its format_version and add a golden file, do not edit the old one."""
from __future__ import annotations

import json
import math

import pydantic
import pytest

from millrace.contracts.errors import MillraceError
from millrace.training import bundle, lineage
from millrace.training.bundle import InputInfo, Manifest, Part, Signature, Tensor
from millrace.training.lineage import ContractRef, ExamplesLineage, FeatureViewLineage, Lineage, PartitionRef
from tests.conftest import GOLDEN

GOLDEN_TRAINING = GOLDEN / "training"


def manifest_v2() -> Manifest:
    inputs = (Tensor(name="userId", datatype="INT64", shape=("batch",)),
              Tensor(name="user_activity__recent_movies", datatype="INT64",
                     shape=("batch", "user_activity__recent_movies_length")))
    part = Part(files={"fp32": "user_encoder.onnx", "int8": "user_encoder.int8.onnx"},
                sha256={"user_encoder.onnx": "a" * 64, "user_encoder.int8.onnx": "b" * 64},
                served="int8", output="embedding",
                signature=Signature(inputs=inputs, outputs=(Tensor(name="embedding", datatype="FLOAT",
                                                                   shape=("batch", 8)),)),
                inputs=(InputInfo(name="userId", kind="categorical", dtype="int64", mean=0.0, std=1.0, vocabulary=40,
                                  source="key:userId"),
                        InputInfo(name="user_activity__recent_movies", kind="multi", dtype="int64", mean=0.0, std=1.0,
                                  vocabulary=60, source="user_activity:recent_movies")))
    return Manifest(model="retrieval", registered_name="movielens.retrieval", family="two_tower",
                    task="classification", primary="recall_at_10", metrics={"recall_at_10": 0.25, "ndcg_at_10": 0.125},
                    run_id="0123456789abcdef", split_at="2020-04-07 12:00:00+00:00", time_column="timestamp",
                    created_at="2026-12-02T01:00:00+00:00", parts={"user_encoder": part})


def lineage_v2() -> Lineage:
    ref = ContractRef(id="ratings", version="1.0.0")
    partitions = (PartitionRef(value="2020-01-01", run_id="run-1", rows=20, contract_version="1.0.0"),
                  PartitionRef(value="2020-01-02", run_id="run-1", rows=21, contract_version=None))
    view = FeatureViewLineage(uri="file:///offline/user_activity/data.parquet", sha256="d" * 64, run_id="build-7",
                              rows=40, built_at="2026-12-01T00:00:00+00:00", features_yaml_sha256="e" * 64)
    return Lineage(examples=ExamplesLineage(source="ratings", uri="file:///lake/ratings", rows=2400, digest="c" * 64,
                                            contract=ref, partitions=partitions, snapshot=7),
                   contracts={"ratings": ref, "movies": ContractRef(id="movies", version="2.1.0")},
                   feature_views={"user_activity": view}, git_sha="0123abc+dirty")


RECORDS = [(Manifest, bundle.FORMAT_VERSION, "bundle_manifest", manifest_v2),
           (Lineage, lineage.FORMAT_VERSION, "lineage", lineage_v2)]


def test_a_v1_lineage_still_reads_without_a_snapshot():
    path = GOLDEN_TRAINING / "lineage.v1.json"
    old = Lineage.from_json(path.read_text(), str(path))
    assert old.format_version == 1 and old.examples.snapshot is None
    assert old.examples == lineage_v2().examples.model_copy(update={"snapshot": None})


@pytest.mark.parametrize("cls, version, stem, make", RECORDS, ids=[r[2] for r in RECORDS])
def test_golden_file_per_format_version(cls, version, stem, make):
    path = GOLDEN_TRAINING / f"{stem}.v{version}.json"
    assert path.is_file(), f"{path} is missing: a new format version needs its golden file"
    record = make()
    assert record.format_version == version
    assert record.to_json() == path.read_text()
    assert cls.from_json(path.read_text(), str(path)) == record


def test_a_v1_bundle_manifest_still_reads_with_unknown_input_sources():
    path = GOLDEN_TRAINING / "bundle_manifest.v1.json"
    old = Manifest.from_json(path.read_text(), str(path))
    assert old.format_version == 1
    assert [i.source for i in old.parts["user_encoder"].inputs] == ["", ""]
    assert old.parts == {k: v.model_copy(update={"inputs": tuple(i.model_copy(update={"source": ""})
                                                                 for i in v.inputs)})
                         for k, v in manifest_v2().parts.items()}


@pytest.mark.parametrize("cls, version, stem, make", RECORDS, ids=[r[2] for r in RECORDS])
def test_round_trip_and_frozen(cls, version, stem, make):
    record = make()
    again = cls.from_json(record.to_json(), "x.json")
    assert again == record and again.to_json() == record.to_json()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        record.format_version = 99


def test_an_undefined_metric_round_trips():
    """AUC of a one-class holdout is NaN; it must come back NaN, not null or an error."""
    record = manifest_v2().model_copy(update={"metrics": {"auc": math.nan}})
    assert math.isnan(Manifest.from_json(record.to_json(), "m.json").metrics["auc"])


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
    ("manifest", ("format_version",), 3, "format_version: input should be 1 or 2"),
    ("manifest", ("parts", "user_encoder", "served"), "fp16", "parts.user_encoder.served"),
    ("manifest", ("parts", "user_encoder", "sha256"), ["a"], "parts.user_encoder.sha256: input should be an object"),
    ("manifest", ("metrics", "recall_at_10"), "high", "metrics.recall_at_10: input should be a valid number"),
    ("manifest", ("run_id",), _DELETE, "run_id: field required"),
    ("manifest", ("surprise",), 1, "surprise: extra inputs are not permitted"),
    ("manifest", ("parts", "user_encoder", "inputs"), [{"name": "x"}], "parts.user_encoder.inputs.0.kind: field required"),
    ("lineage", ("examples", "rows"), "many", "examples.rows: input should be a valid integer"),
    ("lineage", ("examples", "partitions", 0, "rows"), [20], "examples.partitions.0.rows"),
    ("lineage", ("contracts",), [], "contracts: input should be an object"),
    ("lineage", ("examples",), _DELETE, "examples: field required"),
]


@pytest.mark.parametrize("which, path, value, words", BAD, ids=[".".join(map(str, b[1])) for b in BAD])
def test_a_wrong_field_is_one_line_naming_it(which, path, value, words):
    cls, make = (Manifest, manifest_v2) if which == "manifest" else (Lineage, lineage_v2)
    data = json.loads(make().to_json())
    _edit(data, path, value)
    with pytest.raises(MillraceError) as exc:
        cls.from_json(json.dumps(data), "rec.json")
    message = str(exc.value)
    assert message.startswith("rec.json: ") and words in message and "\n" not in message and "(fix:" in message
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"x"', b"\xff\xfe"], ids=["empty", "truncated", "list",
                                                                                 "null", "string", "not-utf8"])
def test_corrupt_json_is_one_line(text):
    with pytest.raises(MillraceError) as exc:
        Lineage.from_json(text, "lineage.json")
    assert str(exc.value).startswith("lineage.json: ") and "\n" not in str(exc.value)
