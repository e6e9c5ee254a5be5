"""Coercion of text cells to a field's type: never raises for a cell, good + failed + empty = rows,
and each cell's outcome does not depend on the other cells of its column."""
from __future__ import annotations

import math
import time
from datetime import date, datetime, timezone

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millrace.contracts.arrow import TIMESTAMP, coerce
from millrace.contracts.model import Field

FIELDS = {
    "string": Field("c", "string"),
    "integer": Field("c", "integer"),
    "number": Field("c", "number"),
    "boolean": Field("c", "boolean"),
    "date": Field("c", "date"),
    "iso8601": Field("c", "timestamp", "iso8601"),
    "epoch_seconds": Field("c", "timestamp", "epoch_seconds"),
    "epoch_millis": Field("c", "timestamp", "epoch_millis"),
}

_pad = st.sampled_from(["", "", " ", "\t", "  "])
_sign = st.sampled_from(["", "", "+", "-", "--", "+-"])
_big = st.one_of(st.integers(-10**6, 10**6), st.integers(-2**64, 2**64), st.integers(-10**30, 10**30),
                 st.sampled_from([2**63 - 1, 2**63, -2**63, -2**63 - 1, 0, 253402300799, 253402300800,
                                  -62135596800, -62135596801]))
_integers = st.builds(lambda p, s, zeros, n, q: f"{p}{s}{'0' * zeros}{abs(n)}{q}", _pad, _sign,
                      st.integers(0, 3), _big, _pad)
_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.builds(lambda s, m, e: f"{s}{m}e{e}", _sign, st.sampled_from(["1", "1.5", ".5", "5.", "9.99"]),
              st.integers(-500, 500)),
    st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e400", "-1e400", "1e-400", ".", "1_000", "1,5", "0x10"]),
)
_two = lambda lo, hi: st.integers(lo, hi).map(lambda v: f"{v:02d}")  # noqa: E731
_dates = st.builds(lambda y, m, d: f"{y:04d}-{m}-{d}", st.integers(0, 10000), _two(0, 13), _two(0, 32))
_zones = st.one_of(st.sampled_from(["", "", "Z", "z", "+00:00", "-00:00", "+05:30", "+0530", "+05", "-14:00",
                                    "+14:00", "+25:00", "+99:99", "+5", " UTC", "+05:30:00"]),
                   st.builds(lambda s, h, m: f"{s}{h:02d}:{m:02d}", st.sampled_from("+-"), st.integers(0, 30),
                             st.integers(0, 70)))
_times = st.builds(lambda d, sep, h, m, sec, frac, z: f"{d}{sep}{h}{m}{sec}{frac}{z}", _dates,
                   st.sampled_from(["T", " ", "t"]), _two(0, 25), st.sampled_from(["", ":00", ":59", ":60", ":7"]),
                   st.sampled_from(["", ":00", ":59", ":60"]),
                   st.one_of(st.just(""), st.integers(0, 12).map(lambda k: "." + "123456789012"[:k])), _zones)
_booleans = st.sampled_from(["true", "FALSE", "Yes", "n", "1", "0", "t", "maybe", "on", "2"])
_noise = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", None, "\u00a0", "١٢", "٣.٥", "\ufeff1"]))
CELL = st.one_of(_integers, _floats, _dates, _times, _booleans, _noise, st.none())


def _outcome(values: pa.Array, failed: pa.Array) -> list[tuple]:
    return list(zip(values.to_pylist(), failed.to_pylist()))


def _empty(cell) -> bool:
    return cell is None or cell.strip() == ""


@pytest.mark.parametrize("kind", sorted(FIELDS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells=st.lists(CELL, max_size=24))
def test_coercion_never_raises_and_accounts_for_every_row(kind, cells):
    field = FIELDS[kind]
    values, failed = coerce(field, pa.array(cells, pa.string()))
    assert len(values) == len(failed) == len(cells)
    assert failed.null_count == 0
    good = [v is not None for v in values.to_pylist()]
    bad = failed.to_pylist()
    empty = [_empty(c) for c in cells]
    for cell, g, b, e in zip(cells, good, bad, empty):
        assert g + b + e == 1, (kind, cell, g, b, e)  # exactly one: a value, a failure or an empty cell
    assert sum(good) + sum(bad) + sum(empty) == len(cells)
    # A cell's outcome does not depend on its neighbours (the fast whole-column paths agree with
    # the exact per-cell ones).
    alone = [_outcome(*coerce(field, pa.array([c], pa.string())))[0] for c in cells]
    assert _outcome(values, failed) == alone


@settings(max_examples=300, deadline=None)
@given(cell=_integers)
def test_integers_read_as_python_reads_them_within_int64(cell):
    (value, failed), = _outcome(*coerce(FIELDS["integer"], pa.array([cell])))
    try:
        expected = int(cell.strip())
    except ValueError:
        expected = None
    if expected is not None and "_" not in cell and -2**63 <= expected < 2**63:
        assert (value, failed) == (expected, False), cell
    else:
        assert (value, failed) == (None, True), cell


@settings(max_examples=300, deadline=None)
@given(cell=_floats)
def test_numbers_read_as_python_reads_them_when_finite(cell):
    (value, failed), = _outcome(*coerce(FIELDS["number"], pa.array([cell])))
    try:
        expected = float(cell)
    except ValueError:
        expected = None
    spelled = not any(w in cell.lower() for w in ("nan", "inf", "_", "x"))
    if expected is not None and math.isfinite(expected) and spelled:
        assert failed is False and value == pytest.approx(expected, rel=1e-15, abs=0), cell
    else:
        assert (value, failed) == (None, True), cell


@settings(max_examples=300, deadline=None)
@given(cell=_dates)
def test_dates_are_real_calendar_days(cell):
    (value, failed), = _outcome(*coerce(FIELDS["date"], pa.array([cell])))
    try:
        expected = date.fromisoformat(cell)
    except ValueError:
        expected = None
    assert (value, failed) == ((expected, False) if expected else (None, True)), cell


# cell -> (kind, expected value; None with failed=True means type_mismatch)
CASES = [
    ("integer", "+5", 5), ("integer", " +0005 ", 5), ("integer", "-0", 0), ("integer", "9223372036854775807", 2**63 - 1),
    ("integer", "9223372036854775808", None), ("integer", "-9223372036854775809", None),
    ("integer", "99999999999999999999999999", None), ("integer", "0x10", None), ("integer", "1e3", None),
    ("integer", "5.0", None), ("integer", "+", None), ("integer", "١٢", None),
    ("number", "+5", 5.0), ("number", "1e400", None), ("number", "-1e400", None), ("number", "1e-400", 0.0),
    ("number", "NaN", None), ("number", "inf", None), ("number", "+.5e+3", 500.0),
    ("date", "2020-02-29", date(2020, 2, 29)), ("date", "2021-02-29", None), ("date", "0000-01-01", None),
    ("date", "0001-01-01", date(1, 1, 1)), ("date", "9999-12-31", date(9999, 12, 31)), ("date", "2020-1-1", None),
    ("iso8601", "2020-01-01T00:00:00+05:30", datetime(2019, 12, 31, 18, 30, tzinfo=timezone.utc)),
    ("iso8601", "2020-01-01T10:00-05", datetime(2020, 1, 1, 15, tzinfo=timezone.utc)),
    ("iso8601", "2020-01-01T00:00:00-00:00", datetime(2020, 1, 1, tzinfo=timezone.utc)),
    ("iso8601", "2020-01-01T00:00:00+14:00", datetime(2019, 12, 31, 10, tzinfo=timezone.utc)),
    ("iso8601", "2020-01-01T00:00:00+25:00", None), ("iso8601", "2020-01-01T00:00:00+05:30:00", None),
    ("iso8601", "2020-01-01T00:00:60", None), ("iso8601", "2020-01-01T24:00:00", None),
    ("iso8601", "2020-02-30T00:00:00Z", None), ("iso8601", "0001-01-01T00:00:00+01:00", None),
    ("iso8601", "2020-01-01T00:00:00.123456789Z", datetime(2020, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)),
    ("iso8601", "2020-01-01", datetime(2020, 1, 1, tzinfo=timezone.utc)), ("iso8601", "2020-01-01-05", None),
    ("epoch_seconds", "+5", datetime(1970, 1, 1, 0, 0, 5, tzinfo=timezone.utc)),
    ("epoch_seconds", "253402300799", datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)),
    ("epoch_seconds", "253402300800", None), ("epoch_seconds", "9223372036854775807", None),
    ("epoch_seconds", "0x10", None), ("epoch_millis", "-5", datetime(1969, 12, 31, 23, 59, 59, 995000, tzinfo=timezone.utc)),
]


@pytest.mark.parametrize("kind,cell,expected", CASES)
def test_edge_cells(kind, cell, expected):
    # Alone, and among clean cells (which would take the fast whole-column path by themselves).
    clean = {"integer": "1", "number": "1.5", "date": "2020-01-01", "iso8601": "2020-01-01T00:00:00Z",
             "epoch_seconds": "1", "epoch_millis": "1"}[kind]
    for column in ([cell], [clean, cell, clean]):
        values, failed = coerce(FIELDS[kind], pa.array(column))
        at = column.index(cell)
        assert values[at].as_py() == expected, (cell, column)
        assert failed[at].as_py() is (expected is None), (cell, column)


@pytest.mark.parametrize("kind", sorted(FIELDS))
def test_empty_cells_are_nulls_not_failures(kind):
    values, failed = coerce(FIELDS[kind], pa.array(["", "  ", None, "\t"], pa.string()))
    assert values.null_count == 4 and not any(failed.to_pylist())


def test_chunked_input_and_empty_column():
    chunked = pa.chunked_array([pa.array(["1", "+2"]), pa.array(["x"])])
    values, failed = coerce(FIELDS["integer"], chunked)
    assert values.to_pylist() == [1, 2, None] and failed.to_pylist() == [False, False, True]
    for field in FIELDS.values():
        values, failed = coerce(field, pa.array([], pa.string()))
        assert len(values) == len(failed) == 0


def test_timestamps_are_the_lake_type():
    for kind in ("iso8601", "epoch_seconds", "epoch_millis"):
        values, _ = coerce(FIELDS[kind], pa.array(["1", "2020-01-01T00:00:00Z", ""]))
        assert values.type == TIMESTAMP


def test_a_few_impossible_cells_do_not_make_the_column_slow():
    # 200k times, one impossible day: the exact path bisects instead of parsing per row in Python.
    cells = ["2016-05-01T12:00:00Z"] * 200_000
    cells[123] = "2016-02-30T00:00:00Z"
    start = time.perf_counter()
    values, failed = coerce(FIELDS["iso8601"], pa.array(cells))
    elapsed = time.perf_counter() - start
    assert failed.to_pylist().count(True) == 1 and values.null_count == 1
    assert elapsed < 5, f"{elapsed:.1f} s"  # measured ~0.4 s here; the per-row fallback took ~8 s


def test_one_bad_cell_in_a_file_quarantines_its_row_not_the_file():
    from millrace.contracts.loader import load_contract
    from millrace.pipelines.decode import LandingFile, decode_file
    from tests.conftest import EXAMPLE

    ratings = load_contract(EXAMPLE / "contracts" / "ratings.yaml")
    ts = 1_260_759_144  # 2009-12-14
    rows = [f"1,{i},4.5,{ts}" for i in range(1, 6)]
    rows[1] = f"+1,2,4.5,{ts}"                # a valid spelling: kept
    rows[2] = f"1,3,4.5,+{ts}"                # a signed epoch: kept
    rows[3] = f"1,4,4.5,1e400"                # not an epoch: that row only
    rows[4] = f"1,99999999999999999999,4.5,{ts}"  # beyond int64: that row only
    data = ("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n").encode()
    landing = LandingFile("landing/ratings/2009-12-14/x.csv", "2009-12-14", "2009-12")
    decoded = decode_file(ratings, "ratings", landing, data, int(time.time() * 1e6), "run")
    assert decoded.good.num_rows == 3
    assert decoded.quarantine.column("reason").to_pylist() == ["type_mismatch", "type_mismatch"]
    assert decoded.quarantine.column("field").to_pylist() == ["timestamp", "movieId"]
