"""The composite ``recommender``: through the stock client its answers equal the path computed here
directly (online features -> the user encoder in onnxruntime -> FAISS on the index file -> seen
items dropped -> the ranking model in onnxruntime -> top k); every fallback answers, is flagged and
counted: unknown user and online store down (popularity), ranker late, failing or overloaded
(retrieval order)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from millrace.indexing import release as releases
from millrace.serving.errors import Overloaded
from tests.serving.conftest import configure, materialize_tiny, release_tiny, start_server, stock_client

pytestmark = pytest.mark.slow
K = 5


@pytest.fixture
def ready(tiny_trained):
    t = tiny_trained
    materialize_tiny(t)
    release_tiny(t)
    configure(t.root, {"recommender": {"ranking": "likes", "k": K}})
    return t


def _column(reader, source: str, keys) -> pa.Array:
    view, feature = source.split(":", 1)
    return reader.read(view, keys, [feature]).column(feature).combine_chunks()


def _direct(t, user_id: int, k: int, rank: bool = True) -> tuple[list[int], np.ndarray]:
    """The path by hand: onnxruntime and FAISS called directly on the release's files."""
    import faiss
    import onnxruntime as ort
    import pyarrow.parquet as pq

    from millrace.features.online import OnlineReader
    from millrace.training.bundle import load_part
    from millrace.training.feeds import raw_inputs

    checked = releases.verify(releases.release_root(os.environ["MILLRACE_STATE_DIR"]))
    reader = OnlineReader(t.project, t.features)

    def run(model: str, part: str, table: pa.Table) -> np.ndarray:
        folder, manifest = checked.bundles[model]
        session = ort.InferenceSession(load_part(folder, manifest, part, "fp32"), providers=["CPUExecutionProvider"])
        return session.run(None, raw_inputs(table, manifest.parts[part].inputs))[0]

    def table(inputs, keys: dict[str, pa.Array], rows: int, item_ids=None) -> pa.Table:
        out = {}
        for i in inputs:
            if i.source.startswith("key:"):
                out[i.name] = keys[i.source[4:]]
            elif t.features.join_key(i.source.split(":")[0]) == "movieId":
                out[i.name] = _column(reader, i.source, item_ids)
            else:
                out[i.name] = _column(reader, i.source, [user_id]).take(pa.array(np.zeros(rows, np.int64)))
        return pa.table(out)

    _, retrieval = checked.bundles["retrieval"]
    vector = run("retrieval", "user_encoder", table(retrieval.parts["user_encoder"].inputs,
                                                     {"userId": pa.array([user_id])}, 1))
    index = checked.indexes["retrieval"]
    faiss_index = faiss.read_index(os.path.join(index.folder, index.manifest.index_file))
    ids = pq.read_table(os.path.join(index.folder, index.manifest.ids_file)).column(0).to_pylist()
    seen = set(_column(reader, "user_activity:recent_movies", [user_id])[0].as_py() or [])
    scores, rows = faiss_index.search(vector.astype(np.float32), min(len(ids), k * 4 + len(seen)))
    pairs = [(ids[r], s) for r, s in zip(rows[0], scores[0]) if r >= 0 and ids[r] not in seen]
    items, scores = [p[0] for p in pairs], np.array([p[1] for p in pairs], np.float32)
    if rank:
        _, likes = checked.bundles["likes"]
        n = len(items)
        ranked = run("likes", next(iter(likes.parts)), table(
            likes.parts[next(iter(likes.parts))].inputs,
            {"userId": pa.array([user_id] * n), "movieId": pa.array(items)}, n, pa.array(items)))
        scores = np.asarray(ranked, np.float32).reshape(n, -1)[:, -1]
    order = np.argsort(-scores, kind="stable")[:k]
    return [items[i] for i in order], scores[order]


def _popular(t, k: int) -> list[int]:
    from millrace.features.offline import read_view

    frame = read_view(t.project.offline, "movie_popularity").to_pandas()
    newest = frame.sort_values(["movieId", "event_timestamp"]).groupby("movieId").last().reset_index()
    return newest.sort_values("rating_count_all", ascending=False, kind="stable")["movieId"].head(k).tolist()


def test_answers_equal_the_path_called_directly(ready):
    t = ready
    proc, address, _ = start_server(t.root, Path(os.environ["MILLRACE_STATE_DIR"]), "--variant", "fp32")
    try:
        users = [1, 2, 3, 7, 11]
        steps = [{"do": "infer", "model": "recommender", "inputs": {"user_id": ["INT64", [u]]}} for u in users]
        steps += [{"do": "infer", "model": "recommender", "inputs": {"user_id": ["INT64", [2]], "k": ["INT32", [3]]}},
                  {"do": "infer", "model": "recommender", "inputs": {"user_id": ["INT64", [10**9]]}},
                  {"do": "infer", "model": "recommender", "inputs": {"user_id": ["INT64", [2]], "k": ["INT32", [0]]}},
                  {"do": "metadata", "model": "recommender"}]
        *answers, with_k, unknown, bad_k, meta = stock_client(address, *steps)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for user, answer in zip(users, answers):
        assert answer["parameters"]["ranked"] == "true" and "fallback" not in answer["parameters"], answer
        items, scores = _direct(t, user, K)
        assert answer["outputs"]["item_ids"] == [items, [K]]
        np.testing.assert_allclose(answer["outputs"]["scores"][0], scores, rtol=1e-5, atol=1e-6)
    assert with_k["outputs"]["item_ids"][0] == _direct(t, 2, 3)[0]
    assert unknown["parameters"]["fallback"] == "unknown_user"
    assert unknown["outputs"]["item_ids"][0] == _popular(t, K)
    assert bad_k["error"] == "StatusCode.INVALID_ARGUMENT" and "'k'" in bad_k["message"]
    assert [i["name"] for i in meta["inputs"]] == ["user_id", "k"]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("item_ids", "INT64"), ("scores", "FP32")]


def _load(t, metrics, **recommender):
    from millrace.contracts.project import load_project
    from millrace.serving import repository

    project = load_project(t.root)
    config = project.config.serving
    config = config.model_copy(update={"recommender": config.recommender.model_copy(update=recommender)})
    return repository.load(releases.release_root(project.state_dir), None, "fp32", project=project, config=config,
                           metrics=metrics)


class _Raising:
    def __init__(self, error: Exception):
        self.error = error

    def run_batched(self, feed, deadline=None):
        raise self.error


def test_each_ranker_fallback_answers_in_retrieval_order_and_is_counted(ready):
    from millrace.serving.metrics import Metrics

    t, metrics = ready, Metrics()
    retrieval_order = _direct(t, 3, K, rank=False)[0]
    late = _load(t, metrics, ranking_budget_ms=1e-9)
    repository = _load(t, metrics)
    try:
        answers = {"late": late.models["recommender"].recommend(3, K)}
        recommender = repository.models["recommender"]
        ranker = recommender.ranker
        for reason, error in (("failed", RuntimeError("boom")), ("overloaded", Overloaded("queue full"))):
            recommender.ranker = dataclasses.replace(ranker, model=_Raising(error))
            answers[reason] = recommender.recommend(3, K)
        recommender.ranker = ranker
        answers["ok"] = recommender.recommend(3, K)
    finally:
        late.close()
        repository.close()
    for reason in ("late", "failed", "overloaded"):
        assert answers[reason].fallback == f"ranker_{reason}" and not answers[reason].ranked
        assert answers[reason].item_ids.tolist() == retrieval_order
    assert answers["ok"].ranked and answers["ok"].fallback == ""
    text = metrics.text()
    for reason in ("ranker_late", "ranker_failed", "ranker_overloaded"):
        assert f'millrace_serving_fallbacks_total{{reason="{reason}"}} 1.0' in text


def test_an_unreachable_online_store_answers_the_popularity_list(ready, monkeypatch):
    from millrace.serving.metrics import Metrics

    t, metrics = ready, Metrics()
    monkeypatch.setenv("MILLRACE_ONLINE_STORE", "redis://127.0.0.1:1/0")  # nothing listens there
    repository = _load(t, metrics)
    try:
        answer = repository.models["recommender"].recommend(3, K)
    finally:
        repository.close()
    assert answer.fallback == "online_store_down" and answer.item_ids.tolist() == _popular(t, K)
    assert 'millrace_serving_fallbacks_total{reason="online_store_down"} 1.0' in metrics.text()


def test_a_view_both_models_read_is_read_for_every_feature_of_either():
    from types import SimpleNamespace as Input

    from millrace.serving.recommender import _views_of

    encoder = [Input(source="user_activity:mean_365d"), Input(source="user_activity:recent"), Input(source="key:userId")]
    ranker = [Input(source="user_activity:count_all"), Input(source="movie:year"), Input(source="request:hour")]
    assert _views_of(encoder, ranker) == {"user_activity": {"mean_365d", "recent", "count_all"}, "movie": {"year"}}
