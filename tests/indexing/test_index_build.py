"""``pipelines.index`` on the tiny trained project: build, gate and manifest; the MLflow record;
the index answers as exact search over the encoders' own outputs; an index is bound to its
encoder version; bad input is one line."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from millrace.contracts.errors import exit_code
from millrace.indexing import manifest as manifests
from millrace.indexing.embed import Encoder
from millrace.indexing.errors import CatalogueError, EncoderMismatch, RecallGateFailed
from millrace.indexing.release import ModelRef, served_encoder
from millrace.pipelines import index as pipeline_index
from millrace.training import registry
from millrace.training.bundle import read_manifest
from millrace.training.errors import UnknownModel


def _index(tiny, name="retrieval", **kwargs):
    return pipeline_index.index_model(tiny.project, tiny.features, tiny.models(), name, tiny.ratings, "timestamp",
                                      **kwargs)


def _bundle(tiny, version, tmp_path):
    client = registry.connect(tiny.project)
    reg = registry.registered_name(tiny.project, "retrieval")
    folder = registry.download(client, reg, version, str(tmp_path / f"bundle-v{version}"))
    return folder, read_manifest(folder)


def _served(tiny, version, tmp_path):
    folder, bundle = _bundle(tiny, version, tmp_path)
    reg = registry.registered_name(tiny.project, "retrieval")
    ref = ModelRef(model="retrieval", registered_name=reg, version=version, run_id="", family="two_tower",
                   role="retrieval", bundle="", bundle_sha256="")
    return served_encoder(ref, bundle)


def test_build_gate_and_manifest_on_the_tiny_project(tiny_trained, tmp_path):
    phases = set()
    out = _index(tiny_trained, progress=lambda phase, done, total: phases.add(phase))
    m = out.manifest
    assert "embed" in phases and "add" in phases
    assert (m.encoder.version, m.encoder.registered_name) == ("1", "movielens.retrieval")
    served = _served(tiny_trained, "1", tmp_path)
    assert (m.encoder.item_sha256, m.encoder.user_sha256, m.encoder.variant) == \
        (served.item_sha256, served.user_sha256, served.variant) == (served.item_sha256, served.user_sha256, "int8")
    assert m.factory == "Flat" and m.dim == 8 and m.items == 60 and m.key_type == "int64"
    assert m.metric == "inner_product"  # the towers do not normalize their outputs: measured, not assumed
    assert m.recall.achieved >= m.recall.min == 0.95 and m.recall.k == 10 and m.recall.queries > 0
    assert m.device == "cpu" and m.faiss_version
    ids = pq.read_table(os.path.join(out.folder, m.ids_file)).column(0).to_pylist()
    assert ids == list(range(1, 61))  # every movie of the synthetic catalogue, FAISS row i -> key ids[i]
    assert pipeline_index.latest_index(tiny_trained.project, "movielens.retrieval", "1") == out.folder

    client = registry.connect(tiny_trained.project)
    mv = registry.get_version(client, "movielens.retrieval", "1")
    assert mv.tags[pipeline_index.INDEX_TAG] == m.build_id
    logged = {os.path.basename(a.path) for a in client.list_artifacts(mv.run_id, f"index/{m.build_id}")}
    assert logged == {"index.faiss", "ids.parquet", "index.json"}


def test_the_index_answers_as_exact_search_over_the_encoders(tiny_trained, tmp_path):
    out = _index(tiny_trained)
    loaded = manifests.load(out.folder, _served(tiny_trained, "1", tmp_path))
    folder, bundle = _bundle(tiny_trained, "1", tmp_path)
    t = tiny_trained
    spec = t.models().get("retrieval")
    catalogue = pipeline_index.catalogue_table(t.project, t.features, spec, t.ratings, "timestamp",
                                               pipeline_index._as_of(t.project, t.ratings, "timestamp"))
    items = Encoder(folder, bundle, "item_encoder").embed(catalogue)
    users = Encoder(folder, bundle, "user_encoder").embed(
        pipeline_index.query_table(t.project, t.features, spec, t.ratings, "timestamp", "retrieval"))
    scores, rows = loaded.index.search(users, 5)
    expected = np.sort(users @ items.T, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert loaded.ids.take(rows[0]).to_pylist() == catalogue.column("movieId").take(rows[0]).to_pylist()


def test_an_index_of_encoder_v1_is_refused_next_to_encoder_v2(tiny_trained, tmp_path):
    v1 = _index(tiny_trained)
    tiny_trained.train("retrieval", force=True)  # version 2: new encoder files
    served_v2 = _served(tiny_trained, "2", tmp_path)
    with pytest.raises(EncoderMismatch) as err:
        manifests.load(v1.folder, served_v2)
    message = str(err.value)
    assert "version 1" in message and "version 2" in message and "millrace index --model retrieval --version 2" in message
    assert "\n" not in message and exit_code(err.value) == 2
    v2 = _index(tiny_trained, version="2")
    assert manifests.load(v2.folder, served_v2).manifest.encoder.version == "2"


def test_a_gate_that_cannot_pass_is_refused_with_the_figures_and_stores_nothing(tiny_trained):
    def coarse(models):
        models["retrieval"]["index"] = {"factory": "IVF2,PQ1x4", "recall": {"min": 0.999}}

    tiny_trained.models(coarse)
    with pytest.raises(RecallGateFailed) as err:
        _index(tiny_trained)
    assert "recall@10 reaches at most" in str(err.value) and "under the gate 0.999" in str(err.value)
    assert exit_code(err.value) == 1
    assert pipeline_index.latest_index(tiny_trained.project, "movielens.retrieval", "1") is None


@pytest.mark.parametrize("case", ["tabular", "unknown model", "unknown version", "unknown alias", "empty catalogue",
                                  "bad factory"])
def test_bad_input_is_one_line_with_the_fix(tiny_trained, case):
    kwargs, name = {}, "retrieval"
    examples = tiny_trained.ratings
    if case == "tabular":
        name = "likes"
    elif case == "unknown model":
        name = "nope"
    elif case == "unknown version":
        kwargs["version"] = "9"
    elif case == "unknown alias":
        kwargs["alias"] = "staging"
    elif case == "empty catalogue":
        tiny_trained.models(lambda m: m["retrieval"]["item"].update(features=[]))
        examples = examples.slice(0, 0)
    elif case == "bad factory":
        tiny_trained.models(lambda m: m["retrieval"].update(index={"factory": "IVF4,PQ3"}))  # 3 does not divide 8
    with pytest.raises((CatalogueError, UnknownModel)) as err:
        pipeline_index.index_model(tiny_trained.project, tiny_trained.features, tiny_trained.models(), name, examples,
                                   "timestamp", **kwargs)
    message = str(err.value)
    assert "\n" not in message and "fix:" in message and exit_code(err.value) == 2, message
    expected = {"tabular": "no item encoder", "unknown model": "unknown model 'nope'", "unknown version": "no version 9",
                "unknown alias": "alias 'staging'", "empty catalogue": "catalogue is empty",
                "bad factory": "FAISS cannot build 'IVF4,PQ3'"}[case]
    assert expected in message, message


def test_the_manifest_is_json_a_reader_without_millrace_can_check(tiny_trained):
    out = _index(tiny_trained)
    import hashlib

    with open(os.path.join(out.folder, "index.json")) as f:
        data = json.load(f)
    with open(os.path.join(out.folder, data["index_file"]), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == data["index_sha256"]
    import faiss

    index = faiss.read_index(os.path.join(out.folder, data["index_file"]))
    assert (index.ntotal, index.d) == (data["items"], data["dim"])
