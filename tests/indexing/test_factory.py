"""Which FAISS index a catalogue gets (by size, or as configured), the metric measured on the
vectors, a bad factory string as one line, and the search settings the recall gate walks."""
from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from millrace.contracts.errors import EXIT_BAD_INPUT, exit_code
from millrace.indexing import factory
from millrace.indexing.errors import CatalogueError
from millrace.training.spec import IndexSpec

SPEC = IndexSpec(exact_up_to=1_000, compress_above=100_000)


def test_small_catalogues_get_an_exact_index():
    assert factory.choose(1, 64, SPEC) == "Flat"
    assert factory.choose(1_000, 64, SPEC) == "Flat"


def test_middle_catalogues_get_ivf_flat_with_nlist_from_the_size():
    n = 50_000
    assert factory.choose(n, 64, SPEC) == f"IVF{factory.nlist_for(n)},Flat"
    assert factory.choose(1_001, 64, SPEC).startswith("IVF") and factory.choose(1_001, 64, SPEC).endswith(",Flat")
    assert factory.choose(100_000, 64, SPEC).endswith(",Flat")


def test_large_catalogues_get_ivf_pq_re_scored_by_refine():
    n, dim = 200_000, 128
    assert factory.choose(n, dim, SPEC) == f"IVF{factory.nlist_for(n)},PQ32np,Refine(SQ8)"
    assert factory.choose(100_001, 100, SPEC) == f"IVF{factory.nlist_for(100_001)},PQ25np,Refine(SQ8)"


def test_the_default_thresholds_are_100k_and_5m():
    spec = IndexSpec()
    assert factory.choose(100_000, 32, spec) == "Flat"
    assert factory.choose(100_001, 32, spec).endswith(",Flat")
    assert factory.choose(5_000_001, 32, spec).endswith(",Refine(SQ8)")


def test_an_explicit_factory_is_used_whatever_the_size():
    for n in (10, 50_000, 10_000_000):
        assert factory.choose(n, 64, IndexSpec(factory="HNSW32")) == "HNSW32"


@pytest.mark.parametrize("n", [40, 1_000, 10_000, 50_000, 1_000_000, 10_000_000])
def test_nlist_is_about_four_sqrt_n_with_forty_training_vectors_per_list(n):
    nlist = factory.nlist_for(n)
    assert 1 <= nlist <= round(4 * math.sqrt(n))
    assert n / nlist >= 40
    if n // 40 >= 4 * math.sqrt(n):  # not held down by the 40-per-list floor
        assert nlist == round(4 * math.sqrt(n))


def test_nlist_of_a_tiny_catalogue_is_one():
    assert factory.nlist_for(10) == 1


def test_train_rows_never_under_forty_per_list():
    spec = IndexSpec(train_sample=1_000)
    assert factory.train_rows(1_000_000, "IVF500,Flat", spec) == 20_000
    assert factory.train_rows(10_000, "IVF500,Flat", spec) == 10_000  # never more than the catalogue
    assert factory.train_rows(1_000_000, "Flat", spec) == 1_000


@pytest.mark.parametrize("dim", [1, 2, 3, 7, 8, 30, 64, 100, 128, 257, 384, 768])
def test_pq_subquantizers_divides_the_dimension(dim):
    m = factory.pq_subquantizers(dim)
    assert dim % m == 0
    assert 1 <= m <= max(1, dim // 4)
    faiss.index_factory(dim, f"PQ{m}", faiss.METRIC_INNER_PRODUCT)  # FAISS accepts it


def test_pq_subquantizers_is_a_quarter_when_that_divides():
    assert factory.pq_subquantizers(128) == 32
    assert factory.pq_subquantizers(64) == 16


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_metric_is_cosine_only_when_both_sides_are_unit_vectors():
    items, queries = _unit(200, 16, 1), _unit(50, 16, 2)
    assert factory.metric(items, queries) == factory.COSINE
    assert factory.metric(items * 2, queries) == factory.IP
    assert factory.metric(items, queries * 0.5) == factory.IP
    one_off = items.copy()
    one_off[17] *= 1.1
    assert factory.metric(one_off, queries) == factory.IP


def test_metric_tolerates_float_rounding():
    items = _unit(100, 16, 3) * np.float32(1 + 1e-5)
    assert factory.metric(items, _unit(10, 16, 4)) == factory.COSINE


def test_chosen_factories_build():
    for n, dim in ((10, 8), (50_000, 64), (200_000, 100)):
        index = factory.make(dim, factory.choose(n, dim, SPEC), "models.yaml")
        assert index.d == dim and index.metric_type == faiss.METRIC_INNER_PRODUCT


@pytest.mark.parametrize("bad", ["Bogus", "IVF,Flat", "", "IVF16,PQ7"])
def test_a_factory_faiss_refuses_is_one_line_naming_the_fix(bad):
    with pytest.raises(CatalogueError) as caught:
        factory.make(32, bad, "models.yaml")
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("models.yaml: index.factory:") and repr(bad) in text
    assert "fix:" in text and "'IVF1024,Flat'" in text
    assert exit_code(caught.value) == EXIT_BAD_INPUT == 2


def test_ivf_ladder_walks_nprobe_up_to_nlist():
    index = factory.make(16, "IVF100,Flat", "m")
    assert factory.ladder(index, 10) == {"nprobe": [1, 2, 4, 8, 16, 32, 64, 100]}
    factory.apply(index, {"nprobe": 8})
    assert faiss.extract_index_ivf(index).nprobe == 8


def test_hnsw_ladder_walks_ef_search_from_k():
    index = factory.make(16, "HNSW32", "m")
    assert factory.ladder(index, 10)["efSearch"][0] == 16
    assert factory.ladder(index, 100)["efSearch"] == [128, 256, 512, 1024, 2048, 4096]
    factory.apply(index, {"efSearch": 96})
    assert faiss.downcast_index(index).hnsw.efSearch == 96


def test_refine_ladder_adds_k_factor_and_reaches_the_wrapped_ivf():
    index = factory.make(32, "IVF16,PQ8,Refine(SQ8)", "m")
    assert factory.ladder(index, 10) == {"nprobe": [1, 2, 4, 8, 16], "k_factor": [1, 2, 4, 8, 16, 32, 64]}
    factory.apply(index, {"nprobe": 4, "k_factor": 8})
    assert faiss.extract_index_ivf(index).nprobe == 4
    assert faiss.downcast_index(index).k_factor == 8.0


def test_flat_has_nothing_to_tune():
    assert factory.ladder(factory.make(16, "Flat", "m"), 10) == {}


def test_an_unknown_search_parameter_is_refused():
    with pytest.raises(CatalogueError, match="unknown search parameter 'nlist'"):
        factory.apply(factory.make(16, "IVF4,Flat", "m"), {"nlist": 3})
