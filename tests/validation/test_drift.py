"""validation.drift: Evidently's verdict on Arrow tables: shifted inputs drift, a fresh sample of
the same distribution does not, lists are left out and named."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from millrace.validation.drift import comparable, drift_report


def _rows(n: int, seed: int, shift: float = 0.0, genre_bias: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    genres = rng.choice(["Drama", "Comedy", "Action"], n, p=[0.1, 0.1, 0.8] if genre_bias else [0.4, 0.4, 0.2])
    return pa.table({"u__mean": rng.normal(3.5 + shift, 0.5, n), "u__count": rng.poisson(20 + 40 * shift, n),
                     "m__genre": pa.array(genres), "m__year": rng.integers(1980, 2016, n),
                     "m__list": pa.array([["a"]] * n, pa.list_(pa.string()))})


COLUMNS = ["u__mean", "u__count", "m__genre", "m__year", "m__list"]


def test_a_sample_of_the_same_distribution_does_not_drift(tmp_path):
    snapshot, verdict = drift_report(_rows(5000, 1), _rows(1500, 2), COLUMNS, threshold=0.5)
    assert verdict.drifted == [] and verdict.share == 0.0 and not verdict.triggered
    assert [c.column for c in verdict.columns] == ["u__mean", "u__count", "m__genre", "m__year"]
    assert verdict.left_out == ["m__list"]
    assert {c.method for c in verdict.columns} <= {"Wasserstein distance (normed)", "Jensen-Shannon distance"}
    snapshot.save_html(str(tmp_path / "r.html"))
    assert (tmp_path / "r.html").stat().st_size > 10_000


def test_shifted_inputs_drift_and_trigger_past_the_share():
    _, verdict = drift_report(_rows(5000, 1), _rows(1500, 2, shift=1.0, genre_bias=True), COLUMNS, threshold=0.5)
    assert verdict.drifted == ["u__mean", "u__count", "m__genre"] and verdict.share == 0.75 and verdict.triggered
    _, strict = drift_report(_rows(5000, 1), _rows(1500, 2, shift=1.0, genre_bias=True), COLUMNS, threshold=0.8)
    assert strict.share == 0.75 and not strict.triggered  # the threshold is the model's to set


def test_small_references_get_p_value_tests():
    _, verdict = drift_report(_rows(800, 1), _rows(800, 2, shift=1.0), ["u__mean"], threshold=0.5)
    (column,) = verdict.columns
    assert "p_value" in column.method and column.drifted and column.score < column.threshold


def test_column_kinds():
    schema = _rows(1, 1).schema
    assert comparable(schema, COLUMNS) == (["u__mean", "u__count", "m__year"], ["m__genre"], ["m__list"])
