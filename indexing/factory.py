"""Which FAISS index a catalogue gets, and the search settings the recall gate tunes.

``auto`` (models.yaml ``index.factory``) follows the catalogue size:

    n <= exact_up_to (100k)          Flat                         exact; the gate passes by construction
    n <= compress_above (5M)         IVF{nlist},Flat              full vectors, nlist ~ 4*sqrt(n)
    n >  compress_above              IVF{nlist},PQ{m}np,Refine(SQ8)  PQ codes probed, the top k*k_factor
                                                                    re-scored on 8-bit vectors

(``np``: no polysemous training. FAISS trains it for every plain ``PQ{m}`` although only its
polysemous search mode uses it; it cost 4x the training time at 100k vectors here.)

docs/indexing.md says why and how to override it. Any factory string FAISS accepts may be given.
"""
from __future__ import annotations

import math

import numpy as np

from millrace.indexing.errors import CatalogueError

NORM_TOLERANCE = 1e-3
IP, COSINE = "inner_product", "cosine"


def nlist_for(n: int) -> int:
    """About 4*sqrt(n) inverted lists, and at least 40 training vectors per list."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 40))


def pq_subquantizers(dim: int) -> int:
    """A quarter of the dimension in 8-bit codes (32 bytes for 128 dims), a divisor of ``dim``."""
    m = max(1, dim // 4)
    while dim % m:
        m -= 1
    return m


def choose(n: int, dim: int, spec) -> str:
    """The factory string for ``n`` vectors of ``dim`` (``spec``: models.yaml's ``index`` block)."""
    if spec.factory != "auto":
        return spec.factory
    if n <= spec.exact_up_to:
        return "Flat"
    nlist = nlist_for(n)
    if n <= spec.compress_above:
        return f"IVF{nlist},Flat"
    return f"IVF{nlist},PQ{pq_subquantizers(dim)}np,Refine(SQ8)"


def train_rows(n: int, factory: str, spec) -> int:
    """Vectors to train on: the configured sample, but never under 40 per inverted list."""
    nlist = _number_after(factory, "IVF")
    return min(n, max(spec.train_sample, 40 * nlist if nlist else 0))


def metric(items: np.ndarray, queries: np.ndarray) -> str:
    """``cosine`` when the encoders return unit vectors (inner product is then cosine), else raw
    ``inner_product``. Measured on the vectors, not assumed from the model family."""
    unit = [bool(np.all(np.abs(np.linalg.norm(v, axis=1) - 1) <= NORM_TOLERANCE)) for v in (items, queries) if len(v)]
    return COSINE if unit and all(unit) else IP


def make(dim: int, factory: str, where: str):
    """An empty FAISS index (inner product); a string FAISS refuses is a one-line error."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1][:200]
        raise CatalogueError(f"{where}: index.factory: FAISS cannot build {factory!r} for dimension {dim} ({reason}) "
                             f"(fix: use a factory string such as 'Flat', 'IVF1024,Flat', 'IVF1024,PQ16' or "
                             f"'HNSW32'; PQ's m must divide the dimension)") from None


def ladder(index, k: int) -> dict[str, list[int]]:
    """The search parameters of ``index`` and the values the gate tries, smallest (fastest) first."""
    import faiss

    out: dict[str, list[int]] = {}
    ivf = _ivf(index)
    if ivf is not None:
        out["nprobe"] = _powers(1, ivf.nlist)
    elif _hnsw(index) is not None:
        out["efSearch"] = _powers(max(16, k), 4096)
    if isinstance(faiss.downcast_index(index), faiss.IndexRefine):
        out["k_factor"] = _powers(1, 64)
    return out


def apply(index, params: dict[str, int]) -> None:
    """Set search parameters on ``index`` (and on the index it wraps)."""
    import faiss

    for name, value in params.items():
        if name == "k_factor":
            faiss.downcast_index(index).k_factor = float(value)
        elif name == "nprobe":
            _ivf(index).nprobe = int(value)
        elif name == "efSearch":
            _hnsw(index).hnsw.efSearch = int(value)
        else:
            raise CatalogueError(f"unknown search parameter {name!r} (fix: use nprobe, efSearch or k_factor)")


def _ivf(index):
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw(index):
    import faiss

    for candidate in (index, getattr(faiss.downcast_index(index), "base_index", None)):
        if candidate is not None and hasattr(faiss.downcast_index(candidate), "hnsw"):
            return faiss.downcast_index(candidate)
    return None


def _powers(low: int, high: int) -> list[int]:
    values, v = [], 1
    while v < low:
        v *= 2
    while v < high:
        values.append(v)
        v *= 2
    return values + [high] if high >= low else values


def _number_after(factory: str, prefix: str) -> int:
    for token in factory.split(","):
        token = token.strip()
        if token.startswith(prefix) and token[len(prefix):].isdigit():
            return int(token[len(prefix):])
    return 0
