"""Building and tuning an index: IVF-Flat trained and filled on the CPU, the smallest nprobe that
passes the recall gate, an unreachable gate refused with its figures, ties not counted as misses,
and the GPU branch (FAISS's GPU calls replaced by recorders) with its CPU fallback."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from millrace.contracts.errors import EXIT_FAILED, exit_code
from millrace.indexing import build, factory
from millrace.indexing.errors import RecallGateFailed

DIM = 32


def clustered(n: int, clusters: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit item vectors around ``clusters`` centres, and queries drawn near the same centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM)).astype(np.float32)

    def around(rows: int) -> np.ndarray:
        v = centres[rng.integers(0, clusters, rows)] + 0.3 * rng.normal(size=(rows, DIM)).astype(np.float32)
        return np.ascontiguousarray(v / np.linalg.norm(v, axis=1, keepdims=True), dtype=np.float32)

    return around(n), around(200)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(4_000)


def test_ivf_flat_is_trained_on_the_cpu_and_holds_every_vector(data, monkeypatch):
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)  # the CPU path, on a GPU machine too
    items, _ = data
    seen = []
    built = build.build(items, "IVF32,Flat", 2_000, progress=lambda *event: seen.append(event))
    assert built.device == "cpu" and built.gpus == 0 and built.note == ""
    assert built.index.is_trained and built.index.ntotal == len(items)
    assert isinstance(faiss.downcast_index(built.index), faiss.IndexIVFFlat)
    assert built.train_rows == 2_000 and built.factory == "IVF32,Flat"
    assert ("train", 2_000, 2_000) in seen and seen[-1] == ("add", len(items), len(items))
    # every item is stored under its row number: probing every list, an item finds itself first
    factory.apply(built.index, {"nprobe": 32})
    _, found = built.index.search(items[:50], 1)
    assert (found[:, 0] == np.arange(50)).all()


def test_a_flat_index_needs_no_training():
    items, _ = clustered(500)
    built = build.build(items, "Flat", 100)
    assert built.train_rows == 0 and built.index.ntotal == 500


def test_tune_picks_the_smallest_nprobe_that_passes(data):
    items, queries = data
    built = build.build(items, "IVF64,Flat", 4_000)
    gate = build.tune(built.index, items, queries, 10, 0.9)
    ladder = factory.ladder(built.index, 10)["nprobe"]
    tried = [t["params"]["nprobe"] for t in gate.tried]
    assert tried == ladder[:len(tried)], "the ladder is walked in order, smallest first"
    assert gate.params == {"nprobe": tried[-1]}
    assert gate.recall >= 0.9 and gate.tried[-1]["recall"] >= 0.9
    if len(gate.tried) > 1:
        assert gate.tried[-2]["recall"] < 0.9, "a smaller nprobe passed already"
    assert 1 < gate.params["nprobe"] < 64, "the data is clustered: neither one list nor all of them"
    assert faiss.extract_index_ivf(built.index).nprobe == gate.params["nprobe"], "the chosen setting is applied"
    assert (gate.k, gate.min_recall, gate.queries) == (10, 0.9, len(queries))


def test_tune_of_a_refine_index_keeps_the_smallest_k_factor(data):
    items, queries = data
    built = build.build(items, "IVF16,PQ8x4,Refine(Flat)", 4_000)
    gate = build.tune(built.index, items, queries, 10, 0.9)
    assert gate.recall >= 0.9 and set(gate.params) == {"nprobe", "k_factor"}
    k_tried = [t for t in gate.tried if t["params"]["nprobe"] == gate.params["nprobe"]
               and t["params"]["k_factor"] < gate.params["k_factor"]]
    assert k_tried and all(t["recall"] < 0.9 for t in k_tried), "a smaller k_factor passed already"
    assert [t["params"]["k_factor"] for t in k_tried] == [1, 2, 4, 8, 16, 32][:len(k_tried)]
    assert faiss.downcast_index(built.index).k_factor == gate.params["k_factor"]


def test_flat_passes_the_gate_by_construction(data):
    items, queries = data
    gate = build.tune(build.build(items, "Flat", 0).index, items, queries, 10, 0.999)
    assert gate.recall == 1.0 and gate.params == {}


def test_an_unreachable_gate_raises_with_the_best_figure_and_stores_nothing():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(3_000, DIM)).astype(np.float32)
    queries = rng.normal(size=(100, DIM)).astype(np.float32)
    built = build.build(items, "IVF16,PQ2x4", 3_000)
    with pytest.raises(RecallGateFailed) as caught:
        build.tune(built.index, items, queries, 10, 0.999, what="retrieval v3")
    text = str(caught.value)
    best = max(build.recall_at(_with(built.index, nprobe=p), items, queries,
                               build.exact_top(items, queries, 10)[:, 9], 10) for p in (1, 2, 4, 8, 16))
    assert f"at most {best:.4f}" in text
    assert text.startswith("retrieval v3: recall@10") and "nothing was stored" in text and "0.999" in text
    assert "fix:" in text and "\n" not in text
    assert exit_code(caught.value) == EXIT_FAILED == 1


def _with(index, **params):
    factory.apply(index, params)
    return index


def test_identical_item_vectors_are_ties_not_misses():
    rng = np.random.default_rng(2)
    same = rng.normal(size=DIM).astype(np.float32)
    items = np.vstack([np.tile(same, (300, 1)), rng.normal(size=(200, DIM)).astype(np.float32) * 0.1])
    queries = np.tile(same, (20, 1)) + 0.01 * rng.normal(size=(20, DIM)).astype(np.float32)
    kth = build.exact_top(items, queries, 10)[:, 9]
    flat = faiss.IndexFlatIP(DIM)
    flat.add(items)
    assert build.recall_at(flat, items, queries, kth, 10) == 1.0
    # Another index returning other copies of the same vector is not wrong either
    assert build.recall_at(_Returns(np.arange(290, 300)), items, queries, kth, 10) == 1.0
    # ...but other vectors are misses, and so are empty slots (-1)
    assert build.recall_at(_Returns(np.arange(300, 310)), items, queries, kth, 10) == 0.0
    assert build.recall_at(_Returns(np.array([0, 1, 2, 3, 4] + [-1] * 5)), items, queries, kth, 10) == 0.5


class _Returns:
    """An index stand-in whose every query returns the same ids."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids

    def search(self, queries, k):
        ids = np.tile(self.ids[:k], (len(queries), 1))
        return np.zeros(ids.shape, np.float32), ids


class _FakeGpus:
    """faiss.get_num_gpus / index_cpu_to_all_gpus / index_gpu_to_cpu, recording their calls."""

    def __init__(self, monkeypatch, refuse: str | None = None):
        self.to_gpu_args, self.to_gpu_out, self.to_cpu_args, self.to_cpu_out = [], [], [], []
        self.refuse = refuse
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", self.to_gpu)
        monkeypatch.setattr(faiss, "index_gpu_to_cpu", self.to_cpu, raising=False)  # CPU builds lack it

    def to_gpu(self, index, *args, **kwargs):
        self.to_gpu_args.append(index)
        if self.refuse:
            raise RuntimeError(self.refuse)
        self.to_gpu_out.append(faiss.clone_index(index))
        return self.to_gpu_out[-1]

    def to_cpu(self, index):
        self.to_cpu_args.append(index)
        self.to_cpu_out.append(faiss.clone_index(index))
        return self.to_cpu_out[-1]


def test_on_a_gpu_the_index_is_built_there_and_copied_back(data, monkeypatch):
    items, _ = data
    gpus = _FakeGpus(monkeypatch)
    built = build.build(items, "IVF32,Flat", 2_000)
    assert built.device == "gpu" and built.gpus == 1 and built.note == ""
    assert len(gpus.to_gpu_args) == 1 and gpus.to_gpu_args[0].ntotal == 0, "the CPU original stays empty"
    assert not gpus.to_gpu_args[0].is_trained
    on_gpu = gpus.to_gpu_out[0]
    assert gpus.to_cpu_args == [on_gpu], "trained and filled on the object the GPU call returned"
    assert on_gpu.is_trained and on_gpu.ntotal == len(items)
    assert built.index is gpus.to_cpu_out[0], "the stored index is the CPU copy"
    assert built.index.ntotal == len(items)


def test_an_index_the_gpu_cannot_hold_falls_back_to_the_cpu_with_a_note(data, monkeypatch):
    items, _ = data
    gpus = _FakeGpus(monkeypatch, refuse="Error in index_cpu_to_gpu\nthis index type is not implemented on GPU")
    built = build.build(items, "HNSW16", 0)
    assert built.device == "cpu" and built.gpus == 1
    assert built.note.startswith("built on the CPU: HNSW16 cannot run on the GPU")
    assert "not implemented on GPU" in built.note and "\n" not in built.note
    assert gpus.to_cpu_args == [], "nothing to copy back"
    assert built.index.ntotal == len(items)
