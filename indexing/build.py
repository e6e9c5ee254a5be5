"""Train and fill a FAISS index (on every GPU FAISS sees, else the CPU), then tune its search
settings to the smallest that passes the recall gate.

GPU: when ``faiss.get_num_gpus() > 0`` the empty index is cloned to all GPUs
(``index_cpu_to_all_gpus``), trained and filled there, and copied back, so the stored index is
always a CPU index any machine can load. An index type the GPU build of FAISS cannot hold (HNSW,
a Refine wrapper) is built on the CPU, and the build says so.

Recall@k counts a returned item as found when its exact score reaches the k-th best exact score
of the query: items with equal vectors (cold items with the same features) are interchangeable,
so a tie is not counted as a miss.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from millrace.indexing import factory as factories
from millrace.indexing.errors import RecallGateFailed

Progress = Callable[[str, int, int], None]  # (phase, done, total)
ADD_BATCH = 65_536
TIE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Built:
    index: object                 # a CPU faiss.Index
    factory: str
    device: str                   # cpu | gpu
    gpus: int
    train_rows: int
    train_seconds: float
    add_seconds: float
    note: str = ""                # why a GPU was not used, when one was there


@dataclass(frozen=True)
class Gate:
    k: int
    min_recall: float
    recall: float
    params: dict[str, int]
    queries: int
    seconds: float
    tried: list[dict] = field(default_factory=list)  # {"params": {...}, "recall": r} in the order tried


def build(vectors: np.ndarray, factory: str, train_rows: int, *, seed: int = 0, where: str = "index",
          progress: Progress | None = None) -> Built:
    import faiss

    n, dim = vectors.shape
    cpu_index = factories.make(dim, factory, where)
    gpus = faiss.get_num_gpus()
    work, note = cpu_index, ""
    if gpus > 0:
        try:
            work = faiss.index_cpu_to_all_gpus(cpu_index)
        except (RuntimeError, AttributeError) as exc:
            work, note = cpu_index, f"built on the CPU: {factory} cannot run on the GPU ({str(exc).splitlines()[-1][:120]})"
    started = time.perf_counter()
    rows = 0
    if not work.is_trained:
        rows = min(n, train_rows)
        sample = vectors if rows == n else vectors[np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))]
        if progress:
            progress("train", 0, rows)
        work.train(np.ascontiguousarray(sample))
        if progress:
            progress("train", rows, rows)
    trained = time.perf_counter()
    for start in range(0, n, ADD_BATCH):
        work.add(vectors[start:start + ADD_BATCH])
        if progress:
            progress("add", min(n, start + ADD_BATCH), n)
    added = time.perf_counter()
    on_gpu = work is not cpu_index
    index = faiss.index_gpu_to_cpu(work) if on_gpu else work
    return Built(index, factory, "gpu" if on_gpu else "cpu", gpus, rows, trained - started, added - trained, note)


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Scores of each query's exact k best items (inner product), [queries, k], best first."""
    import faiss

    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    scores, _ = flat.search(queries, k)
    return scores


def recall_at(index, base: np.ndarray, queries: np.ndarray, kth: np.ndarray, k: int) -> float:
    """Share of the k returned items whose exact score reaches the query's k-th exact score."""
    _, found = index.search(queries, k)
    valid = found >= 0
    exact = np.einsum("qd,qkd->qk", queries, base[np.where(valid, found, 0)])
    tolerance = TIE_TOLERANCE * np.maximum(1.0, np.abs(kth))[:, None]
    hits = (exact >= kth[:, None] - tolerance) & valid
    return float(hits.sum() / (len(queries) * k)) if len(queries) else 1.0


def tune(index, base: np.ndarray, queries: np.ndarray, k: int, min_recall: float, *, what: str = "index") -> Gate:
    """The smallest search settings that reach ``min_recall``: the probe depth (nprobe / efSearch)
    first, with any re-ranking depth at its largest; then the smallest re-ranking depth
    (k_factor) at that probe depth. Raises RecallGateFailed with the figures when none reaches it."""
    started = time.perf_counter()
    k = min(k, len(base))
    kth = exact_top(base, queries, k)[:, k - 1] if len(queries) else np.zeros(0, np.float32)
    options = factories.ladder(index, k)
    tried: list[dict] = []

    def attempt(params: dict[str, int]) -> float:
        factories.apply(index, params)
        r = recall_at(index, base, queries, kth, k)
        tried.append({"params": dict(params), "recall": round(r, 6)})
        return r

    probe = next((p for p in ("nprobe", "efSearch") if p in options), None)
    chosen = {name: values[-1] for name, values in options.items()}
    if probe:
        for value in options[probe]:
            chosen[probe] = value
            if attempt(chosen) >= min_recall:
                break
    if "k_factor" in options:
        for value in options["k_factor"]:
            chosen["k_factor"] = value
            if attempt(chosen) >= min_recall:
                break
    recall = attempt(chosen) if not tried or tried[-1]["params"] != chosen else tried[-1]["recall"]
    seconds = time.perf_counter() - started
    if recall < min_recall:
        best = max(tried, key=lambda t: t["recall"])
        raise RecallGateFailed(f"{what}: recall@{k} reaches at most {best['recall']:.4f} ({_text(best['params'])}) "
                               f"on {len(queries)} holdout users, under the gate {min_recall:g}; nothing was stored "
                               f"(fix: choose a finer index.factory in models.yaml, e.g. IVF-Flat or Flat, or lower "
                               f"index.recall.min)")
    factories.apply(index, chosen)
    return Gate(k, min_recall, float(recall), dict(chosen), len(queries), seconds, tried)


def _text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "exact search"
