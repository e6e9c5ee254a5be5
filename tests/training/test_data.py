"""data.split: labels, dropped rows, and a time split in which no holdout row precedes a training row."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from millrace.training.data import label_column, split
from millrace.training.errors import EmptyTrainingSet, TrainingError
from millrace.training.spec import Label, ModelSpec

T0 = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
TS = pa.timestamp("us", tz="UTC")


def _spec(holdout=0.25, label=None):
    return ModelSpec(family="tabular", examples={"source": "ratings"}, features=["v:f"], split={"holdout": holdout},
                     label=label or {"column": "rating", "op": ">=", "value": 4})


def _table(ratings, hours=None):
    hours = list(range(len(ratings))) if hours is None else hours
    times = [None if h is None else T0 + dt.timedelta(hours=h) for h in hours]
    return pa.table({"rating": pa.array(ratings, pa.float64()), "timestamp": pa.array(times, TS)})


def test_the_latest_share_is_held_out_by_time():
    table = _table([5, 1, 4, 2, 5, 3, 4, 1])
    out = split(table, _spec(0.25), "timestamp", "m")
    assert (out.train.num_rows, out.holdout.num_rows) == (6, 2)
    assert out.cut == T0 + dt.timedelta(hours=6)
    assert pc.max(out.train.column("timestamp")).as_py() < out.cut <= pc.min(out.holdout.column("timestamp")).as_py()
    assert out.train.column("label").to_pylist() == [True, False, True, False, True, False]
    assert out.dropped_unlabelled == 0


def test_rows_at_the_cut_instant_all_go_to_the_holdout():
    out = split(_table([5, 4, 1, 5, 2], hours=[0, 1, 2, 2, 2]), _spec(0.2), "timestamp", "m")
    assert out.holdout.num_rows == 3 and out.train.num_rows == 2  # never split one instant across both sides


def test_rows_without_label_or_time_are_dropped_and_counted():
    out = split(_table([5, None, 4, 1, 5, 2], hours=[0, 1, None, 3, 4, 5]), _spec(0.25), "timestamp", "m")
    assert out.dropped_unlabelled == 2 and out.train.num_rows + out.holdout.num_rows == 4


def test_a_regression_label_is_the_value():
    spec = _spec(label={"column": "rating"})
    assert label_column(_table([1.5, 4.0]), spec.label).to_pylist() == [1.5, 4.0]
    assert label_column(_table([4.0, 3.5]), Label(column="rating", op="==", value=4)).to_pylist() == [True, False]


@pytest.mark.parametrize("table, words", [
    (_table([]), "no committed rows"),
    (_table([None, None], hours=[0, 1]), "lacks its label"),
    (_table([5, 4, 1], hours=[3, 3, 3]), "period is empty"),
    (_table([1, 2, 3, 5], hours=[0, 1, 2, 3]), "no training example has rating >= 4"),
])
def test_empty_periods_are_refused(table, words):
    with pytest.raises(EmptyTrainingSet, match=words):
        split(table, _spec(0.25), "timestamp", "m")


def test_no_label_column():
    with pytest.raises(TrainingError, match="no label column 'rating'"):
        split(_table([5, 1]).drop_columns(["rating"]), _spec(), "timestamp", "m")
