"""SuiteRunner.validate_many: partitions validated together get the verdict each would get alone."""
import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millrace.contracts.loader import load_contract
from tests.conftest import EXAMPLE

pytest.importorskip("great_expectations")
from millrace.validation.expectations import SuiteRunner  # noqa: E402

RATINGS = load_contract(EXAMPLE / "contracts" / "ratings.yaml")
TS = pa.timestamp("us", tz="UTC")


def _contract(tmp_path_factory, rows_over: int, rating_nulls_percent: float):
    """The ratings contract with a stricter row count and a warning-level share of null ratings
    (a ``mostly`` below 1: never decided on the stacked rows)."""
    spec = yaml.safe_load((EXAMPLE / "contracts" / "ratings.yaml").read_text())
    schema = spec["schema"][0]
    schema["quality"][0]["mustBeGreaterThan"] = rows_over
    if rating_nulls_percent is not None:
        rating = next(p for p in schema["properties"] if p["name"] == "rating")
        rating["quality"] = [{"name": "few_null_ratings", "metric": "nullValues", "mustBeLessThan": rating_nulls_percent,
                              "unit": "percent", "severity": "warning"}]
    path = tmp_path_factory.mktemp("contract") / "ratings.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_contract(path)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return SuiteRunner(_contract(tmp_path_factory, rows_over=1, rating_nulls_percent=30))


def _table(rows):
    users, movies, ratings, times = zip(*rows) if rows else ((), (), (), ())
    return pa.table({"userId": pa.array(users, pa.int64()), "movieId": pa.array(movies, pa.int64()),
                     "rating": pa.array(ratings, pa.float64()), "timestamp": pa.array(times, pa.int64()).cast(TS)})


def _verdict(result):
    return result.success, result.failed_blocking, result.failed_warnings, result.report.evaluated


_row = st.tuples(st.sampled_from([1, 2, 0, None]), st.sampled_from([1, 2, 3]),
                 st.sampled_from([0.5, 4.0, 7.0, None]), st.integers(1_260_000_000, 1_260_000_003))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.lists(_row, max_size=6), min_size=2, max_size=4))
def test_each_partition_gets_the_verdict_it_gets_alone(runner, parts):
    tables = {f"2009-{i + 1:02d}": _table(rows) for i, rows in enumerate(parts)}
    together = runner.validate_many(tables)
    assert together.whole is not None
    for partition, table in tables.items():
        result = together.partitions[partition]
        assert _verdict(result) == _verdict(runner.validate(table))
        assert result.report.evaluated == len(result.report.great_expectations["results"])


def test_a_key_repeated_across_partitions_is_not_a_duplicate(runner):
    a = _table([(1, 1, 4.0, 1_260_000_000), (1, 2, 4.0, 1_260_000_000)])
    b = _table([(1, 1, 4.0, 1_262_000_000), (2, 2, 4.0, 1_262_000_000)])
    together = runner.validate_many({"2009-12": a, "2010-01": b})
    assert not together.whole.success  # the stacked rows repeat (1, 1) ...
    assert all(r.success for r in together.partitions.values())  # ... but no partition does


def test_only_the_failing_partition_fails_and_with_its_own_figures(runner):
    ok = _table([(1, 1, 4.0, 1_260_000_000), (1, 2, 4.0, 1_260_000_000)])
    dup = _table([(1, 1, 4.0, 1_262_000_000), (1, 1, 4.5, 1_262_000_001)])
    lone = _table([(3, 3, None, 1_264_000_000)])
    together = runner.validate_many({"2009-12": ok, "2010-01": dup, "2010-02": lone})
    assert together.partitions["2009-12"].success
    assert together.partitions["2010-01"].failed_blocking == ("expect_compound_columns_to_be_unique(column_list=['userId', 'movieId'])",)
    lone_result = together.partitions["2010-02"]
    assert sorted(f.split("(")[0] for f in lone_result.failed_blocking) == ["expect_column_values_to_not_be_null",
                                                                             "expect_table_row_count_to_be_between"]
    assert _verdict(lone_result) == _verdict(runner.validate(lone))  # listed as when validated alone
    assert lone_result.failed_warnings == ("expect_column_values_to_not_be_null(column=rating)",)
    results = {r["expectation_config"]["type"] + str(r["expectation_config"]["kwargs"].get("column")): r
               for r in lone_result.report.great_expectations["results"]}
    assert results["expect_table_row_count_to_be_betweenNone"]["result"]["observed_value"] == 1  # its own rows
    # What held on the stacked rows is reported as such.
    assert results["expect_table_columns_to_match_setNone"]["meta"]["millrace"]["validated_on"] == "stacked partitions"


def test_a_single_partition_is_validated_alone(runner):
    table = _table([(1, 1, 4.0, 1_260_000_000), (1, 2, 4.0, 1_260_000_000)])
    together = runner.validate_many({"2009-12": table})
    assert together.whole is None
    assert _verdict(together.partitions["2009-12"]) == _verdict(runner.validate(table))


def test_row_counts_alone_are_validated_per_partition_with_their_own_counts(tmp_path_factory):
    """Only the row count is left to each partition (as for the example's contract)."""
    runner = SuiteRunner(_contract(tmp_path_factory, rows_over=1, rating_nulls_percent=None))
    tables = {"2009-11": _table([]), "2009-12": _table([(1, 1, 4.0, 1_260_000_000)]),
              "2010-01": _table([(1, 1, 4.0, 1_262_000_000), (2, 2, 4.0, 1_262_000_000)])}
    together = runner.validate_many(tables)
    for partition, table in tables.items():
        assert _verdict(together.partitions[partition]) == _verdict(runner.validate(table))
    assert [together.partitions[p].success for p in tables] == [False, False, True]
    counts = [next(r["result"]["observed_value"] for r in together.partitions[p].report.great_expectations["results"]
                   if r["expectation_config"]["type"] == "expect_table_row_count_to_be_between") for p in tables]
    assert counts == [0, 1, 2]
