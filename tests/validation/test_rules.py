import pyarrow as pa
import pytest

from millrace.contracts.loader import load_contract
from tests.conftest import EXAMPLE
from millrace.validation import reasons as R
from millrace.validation.rules import Verdicts, apply_field_rules, flag_future_event_times

RATINGS = load_contract(EXAMPLE / "contracts" / "ratings.yaml")
MOVIES = load_contract(EXAMPLE / "contracts" / "movies.yaml")
TS = pa.timestamp("us", tz="UTC")


def _ratings(rows):
    users, movies, ratings, times = zip(*rows)
    return pa.table({"userId": pa.array(users, pa.int64()), "movieId": pa.array(movies, pa.int64()),
                     "rating": pa.array(ratings, pa.float64()), "timestamp": pa.array(times, TS)})


def test_first_failing_rule_names_the_reason():
    table = _ratings([(1, 1, 4.0, 0), (None, 1, 9.0, 0), (1, 0, 4.0, 0), (1, 1, 3.3, 0), (1, 1, 0.0, 0)])
    v = Verdicts.empty(table.num_rows)
    apply_field_rules(RATINGS, table, v)
    assert v.reason.to_pylist() == [None, R.MISSING_REQUIRED, R.OUT_OF_RANGE, R.NOT_IN_ENUM, R.OUT_OF_RANGE]
    assert v.field.to_pylist() == [None, "userId", "movieId", "rating", "rating"]


def test_flag_never_overwrites_an_earlier_reason():
    v = Verdicts.empty(2)
    v.flag(pa.array([True, False]), "first", "a")
    v.flag(pa.array([True, True]), "second", "b")
    assert v.reason.to_pylist() == ["first", "second"]
    assert v.ok.to_pylist() == [False, False]


def test_future_event_time_uses_tolerance():
    now = 1_000_000_000_000_000
    day = 86_400_000_000
    table = _ratings([(1, 1, 4.0, now + day // 2), (1, 1, 4.0, now + 2 * day)])
    v = Verdicts.empty(2)
    flag_future_event_times(RATINGS, table, now, v)
    assert v.reason.to_pylist() == [None, R.FUTURE_EVENT_TIME]


@pytest.mark.parametrize("genres,ok", [("Comedy|Drama", True), ("(no genres listed)", True), ("Sci-Fi", True),
                                       ("Comedy;Drama", False), ("", False)])
def test_pattern(genres, ok):
    table = pa.table({"movieId": [1], "title": ["t"], "year": pa.array([1999], pa.int64()), "genres": [genres]})
    v = Verdicts.empty(1)
    apply_field_rules(MOVIES, table, v)
    assert (v.reason[0].as_py() is None) is ok


def test_suite_is_generated_from_the_contract():
    from millrace.validation.expectations import SuiteRunner

    suite = SuiteRunner(RATINGS).suite
    kinds = sorted(e.expectation_type for e in suite.expectations)
    assert kinds == sorted([
        "expect_table_columns_to_match_set", "expect_column_values_to_not_be_null",
        "expect_column_values_to_not_be_null", "expect_column_values_to_not_be_null",
        "expect_column_values_to_not_be_null", "expect_column_values_to_be_between",
        "expect_column_values_to_be_between", "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set", "expect_compound_columns_to_be_unique",
        "expect_table_row_count_to_be_between"])
