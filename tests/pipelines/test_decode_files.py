"""decode_files: a partition's landing files decoded together give exactly what decoding each file
alone gives (good rows with their file and line, quarantined rows with their reason and bytes)."""
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millrace.pipelines.decode import LandingFile, decode_file, decode_files
from tests.pipelines.test_decode import KINDS, NOW_US, RATINGS, _line

_file = st.tuples(st.lists(st.sampled_from(sorted(KINDS)), max_size=12), st.sampled_from(["csv", "jsonl"]))


def _data(kinds, fmt, offset):
    lines = [_line(k, offset + i, fmt) for i, k in enumerate(kinds)]
    header = [b"userId,movieId,rating,timestamp"] if fmt == "csv" else []
    return b"\n".join(header + lines) + (b"\n" if lines else b"")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(_file, min_size=1, max_size=5))
def test_files_decoded_together_equal_each_alone(files):
    landed = []
    for i, (kinds, fmt) in enumerate(files):
        day = f"2009-12-{10 + i:02d}"
        landed.append((LandingFile(f"landing/ratings/{day}/r.{fmt}", day, "2009-12"), _data(kinds, fmt, 100 * i)))
    together = decode_files(RATINGS, "ratings", "2009-12", landed, NOW_US, "run")
    alone = [decode_file(RATINGS, "ratings", f, d, NOW_US, "run", i) for i, (f, d) in enumerate(landed)]
    assert together.inputs == [d.input for d in alone]
    assert together.good.equals(pa.concat_tables([d.good for d in alone]))
    assert together.quarantine.equals(pa.concat_tables([d.quarantine for d in alone]))


def test_an_unreadable_file_is_kept_as_an_input_with_its_error():
    good = LandingFile("landing/ratings/2009-12-14/a.csv", "2009-12-14", "2009-12")
    twice = LandingFile("landing/ratings/2009-12-15/b.csv", "2009-12-15", "2009-12")
    landed = [(good, b"userId,movieId,rating,timestamp\n1,2,4.0,1260759144\n"),
              (twice, b"userId,userId,rating,timestamp\n1,2,4.0,1260759144\n")]
    decoded = decode_files(RATINGS, "ratings", "2009-12", landed, NOW_US, "run")
    assert decoded.good.num_rows == 1 and decoded.good.column("_file").to_pylist() == [0]
    assert [i.error is None for i in decoded.inputs] == [True, False]
    assert "appears 2 times" in decoded.inputs[1].error
