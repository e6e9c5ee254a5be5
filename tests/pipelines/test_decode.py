"""decode_file: any mix of good and bad records -> good + quarantined = input, each with the right reason."""
import json
import time

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millrace.contracts.loader import load_contract
from millrace.pipelines.decode import LandingFile, decode_file
from tests.conftest import EXAMPLE

RATINGS = load_contract(EXAMPLE / "contracts" / "ratings.yaml")
NOW_US = int(time.time() * 1_000_000)
DAY_TS = 1_260_759_144  # 2009-12-14
LANDING = LandingFile("landing/ratings/2009-12-14/x", "2009-12-14", "2009-12")

# kind -> (values for userId, movieId, rating, timestamp) or a raw line; expected reason (None = good)
KINDS = {
    "good": ((1, 2, 4.5, DAY_TS), None),
    "wrong_type": (("x1", 2, 4.5, DAY_TS), "type_mismatch"),
    "out_of_range": ((1, 2, 9.0, DAY_TS), "out_of_range"),
    "off_grid": ((1, 2, 3.3, DAY_TS), "not_in_enum"),
    "missing_key": ((None, 2, 4.0, DAY_TS), "missing_required"),
    "future": ((1, 2, 4.0, 4_000_000_000), "future_event_time"),
    "late": ((1, 2, 4.0, DAY_TS - 40 * 86400), "late_event"),
    "truncated": ("truncated", "malformed_record"),
    "bad_utf8": ("bad_utf8", "bad_encoding"),
}


def _line(kind: str, i: int, fmt: str) -> bytes:
    values, _ = KINDS[kind]
    if values == "truncated":
        return b"1,2" if fmt == "csv" else b'{"userId": 1, "movieId'
    if values == "bad_utf8":
        return b"1\xff,2,4.0,1260759144" if fmt == "csv" else b'{"userId": 1, "movieId": 2, "rat\xfeing": 4.0}'
    user, movie, rating, ts = values
    movie = movie + i  # unique keys: duplicates are resolved later, in WritePartitions
    if fmt == "csv":
        return ",".join("" if v is None else str(v) for v in (user, movie, rating, ts)).encode()
    return json.dumps({"userId": user, "movieId": movie, "rating": rating, "timestamp": ts}).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=st.lists(st.sampled_from(sorted(KINDS)), max_size=40),
       blanks=st.lists(st.integers(0, 40), max_size=3),
       fmt=st.sampled_from(["csv", "jsonl"]), crlf=st.booleans())
def test_good_plus_quarantined_equals_input(kinds, blanks, fmt, crlf):
    lines = [_line(k, i, fmt) for i, k in enumerate(kinds)]
    expected = [KINDS[k][1] for k in kinds]
    body = list(zip(lines, expected))
    for b in sorted(blanks, reverse=True):  # blank lines are not records
        body.insert(min(b, len(body)), (b"", "blank"))
    header = [b"userId,movieId,rating,timestamp"] if fmt == "csv" else []
    eol = b"\r\n" if crlf else b"\n"
    data = eol.join(header + [line for line, _ in body]) + (eol if body else b"")
    decoded = decode_file(RATINGS, "ratings", LandingFile(LANDING.path + "." + fmt, LANDING.landing_date, LANDING.partition),
                          data, NOW_US, "run")
    records = [e for _, e in body if e != "blank"]
    assert decoded.good.num_rows + decoded.quarantine.num_rows == len(records) == decoded.input.records
    assert decoded.good.num_rows == sum(e is None for e in records)
    q = decoded.quarantine.to_pydict()
    assert all(r is not None for r in q["reason"])
    # Each quarantined line carries the reason planted on that line, and its original bytes.
    first_line = len(header) + 1
    line_reason = {}
    n = first_line
    for line, e in body:
        line_reason[n] = (e, line)
        n += 1
    for line_no, reason, payload in zip(q["line"], q["reason"], q["payload"]):
        assert line_reason[line_no][0] == reason
        assert payload == line_reason[line_no][1]


def test_coerces_types_and_time_zone():
    data = b"userId,movieId,rating,timestamp\n 7 ,8,4.0,1260759144\n"
    good = decode_file(RATINGS, "ratings", LandingFile("a.csv", "2009-12-14", "2009-12"), data, NOW_US, "r", 3).good
    assert good.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    row = good.to_pylist()[0]
    assert (row["userId"], row["movieId"], row["rating"]) == (7, 8, 4.0)
    assert row["timestamp"].isoformat() == "2009-12-14T02:52:24+00:00"
    assert (row["_file"], row["_line"]) == (3, 2)  # file index within its partition, physical line


def test_file_missing_a_column_quarantines_every_row():
    data = b"userId,movieId,timestamp\n1,2,1260759144\n3,4,1260759144\n"
    d = decode_file(RATINGS, "ratings", LandingFile("a.csv", "2009-12-14", "2009-12"), data, NOW_US, "r")
    assert d.good.num_rows == 0
    assert d.quarantine.column("reason").to_pylist() == ["missing_column"] * 2
    assert d.quarantine.column("field").to_pylist() == ["rating"] * 2


def test_quoted_commas_in_csv(tmp_path):
    movies = load_contract(EXAMPLE / "contracts" / "movies.yaml")
    data = b'movieId,title,year,genres\n1,"Toy Story, Part 1",1995,Comedy|Animation\n2,"Unfinished\n'
    d = decode_file(movies, "movies", LandingFile("m.csv", "2016-10-16", "2016-10-16"), data, NOW_US, "r")
    assert d.good.column("title").to_pylist() == ["Toy Story, Part 1"]
    assert d.quarantine.column("reason").to_pylist() == ["malformed_record"]


def test_parquet_landing_file():
    import io

    import pyarrow.parquet as pq

    table = pa.table({"userId": [1, None], "movieId": [2, 3], "rating": [4.0, 4.0], "timestamp": [DAY_TS, DAY_TS]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    d = decode_file(RATINGS, "ratings", LandingFile("p.parquet", "2009-12-14", "2009-12"), sink.getvalue(), NOW_US, "r")
    assert d.good.num_rows == 1
    assert d.quarantine.column("reason").to_pylist() == ["missing_required"]
    assert json.loads(d.quarantine.column("payload")[0].as_py())["movieId"] == 3


@pytest.mark.parametrize("text,ok", [("2009-12-14T02:52:24Z", True), ("2009-12-14 02:52:24+01:00", True),
                                     ("2009-12-14", True), ("2009-13-40T00:00:00", False), ("yesterday", False)])
def test_iso_timestamps(text, ok):
    from millrace.contracts.arrow import coerce
    from millrace.contracts.model import Field

    values, failed = coerce(Field("t", "timestamp", "iso8601"), pa.array([text]))
    assert failed[0].as_py() is (not ok)
    if text.endswith("+01:00"):
        assert values[0].as_py().isoformat() == "2009-12-14T01:52:24+00:00"
