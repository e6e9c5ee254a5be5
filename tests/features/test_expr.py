"""Row-level expressions: typed at load time, evaluated with Arrow, SQL's null semantics, and
nothing outside the small language accepted."""
import datetime as dt

import pyarrow as pa
import pytest

from millrace.features.expr import ExpressionError, derive, parse

UTC = dt.timezone.utc
ROWS = pa.table({
    "delay": pa.array([20, None, 5, 0, -7], pa.int64()),
    "distance": [100.0, 200.0, 50.0, 10.0, 0.0],
    "air": pa.array([60, 0, 30, None, 10], pa.int64()),
    "origin": ["JFK", "LAX", None, "SFO", "JFK"],
    "cancelled": [False, True, False, None, False],
    "at": pa.array([dt.datetime(2024, 1, 1, 7, 5, tzinfo=UTC), dt.datetime(2024, 1, 6, 23, 59, tzinfo=UTC),
                    dt.datetime(2024, 2, 29, 0, 0, tzinfo=UTC), None, dt.datetime(2023, 12, 31, 12, tzinfo=UTC)],
                   pa.timestamp("us", tz="UTC")),
})
SCHEMA = {f.name: f.type for f in ROWS.schema}


def values(text: str):
    expression = parse(text, SCHEMA)
    out = expression.evaluate(ROWS)
    assert out.type == expression.type and len(out) == ROWS.num_rows
    return out.to_pylist()


@pytest.mark.parametrize("text, dtype, expected", [
    ("delay > 15", pa.bool_(), [True, None, False, False, False]),
    ("delay + 1", pa.int64(), [21, None, 6, 1, -6]),
    ("delay * 2 - 1", pa.int64(), [39, None, 9, -1, -15]),
    ("distance / (air / 60)", pa.float64(), [100.0, None, 100.0, None, 0.0]),   # / 0 and null: null
    ("delay % 3", pa.int64(), [2, None, 2, 0, 2]),                               # Python's sign rule
    ("delay / 0", pa.float64(), [None] * 5),
    ("coalesce(delay, 0)", pa.int64(), [20, 0, 5, 0, -7]),
    ("coalesce(delay, distance)", pa.float64(), [20.0, 200.0, 5.0, 0.0, -7.0]),
    ("hour(at)", pa.int64(), [7, 23, 0, None, 12]),
    ("day_of_week(at)", pa.int64(), [0, 5, 3, None, 6]),                         # Monday 0
    ("month(at) + year(at) * 100", pa.int64(), [202401, 202401, 202402, None, 202312]),
    ("concat(origin, '-', delay)", pa.string(), ["JFK-20", None, None, "SFO-0", "JFK--7"]),
    ("delay > 15 and origin == 'JFK'", pa.bool_(), [True, False, False, False, False]),  # Kleene: false and null
    ("delay > 15 or cancelled", pa.bool_(), [True, True, False, None, False]),
    ("not cancelled", pa.bool_(), [True, False, True, None, True]),
    ("is_null(delay)", pa.bool_(), [False, True, False, False, False]),
    ("if_else(delay > 10, 'late', 'ok')", pa.string(), ["late", None, "ok", "ok", "ok"]),
    ("0 <= delay < 10", pa.bool_(), [False, None, True, True, False]),
    ("abs(delay)", pa.int64(), [20, None, 5, 0, 7]),
    ("delay == null", pa.bool_(), [None] * 5),
    ("1.5", pa.float64(), [1.5] * 5),
])
def test_values_and_types(text, dtype, expected):
    assert parse(text, SCHEMA).type == dtype
    assert values(text) == expected


@pytest.mark.parametrize("text, words", [
    ("delay > 'a'", "compares int64 with string"),
    ("origin + 1", "applies `+` to string"),
    ("nope > 1", "unknown column 'nope'"),
    ("hour(delay)", "hour() takes one timestamp column"),
    ("not delay", "not a condition"),
    ("__import__('os').system('x')", "unknown function"),
    ("origin.upper()", "unknown function"),
    ("ROWS.delay", "uses `Attribute`"),
    ("open('f')", "unknown function 'open'"),
    ("(lambda: 1)()", "unknown function"),
    ("origin[0]", "uses `Subscript`"),
    ("[1, 2]", "uses `List`"),
    ("delay if cancelled else 0", "uses `IfExp`"),
    ("delay >", "does not parse"),
    ("", "is empty"),
    ("null", "is always null"),
    ("x" * 501, "longer than 500"),
    ("coalesce(delay, origin)", "mixes types"),
    ("2 ** 70", "operator other than"),
])
def test_what_is_refused_says_why(text, words):
    with pytest.raises(ExpressionError, match=None) as exc:
        parse(text, SCHEMA)
    assert words in str(exc.value)


def test_derive_appends_in_order_and_later_columns_read_earlier_ones():
    schema = dict(SCHEMA)
    late = parse("delay > 15", schema)
    schema["late"] = late.type
    flag = parse("late and not cancelled", schema)
    out = derive(ROWS, {"late": late, "late_flying": flag})
    assert out.column_names == ROWS.column_names + ["late", "late_flying"]
    assert out.column("late_flying").to_pylist() == [True, False, False, False, False]


def test_large_strings_from_parquet_are_text():
    table = ROWS.set_column(3, "origin", ROWS.column("origin").cast(pa.large_string()))
    expression = parse("concat(origin, '!')", {f.name: f.type for f in table.schema})
    assert expression.evaluate(table).to_pylist()[:2] == ["JFK!", "LAX!"]
