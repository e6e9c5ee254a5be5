"""The landing entry rule: only regular files in real date folders are read, symlinks only inside
the landing zone; every other entry is reported with its fix and the run does not start. Also the
per-file rules of the readers: a duplicated CSV column rejects its file, a UTF-8 BOM is not data."""
import datetime as dt
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from millrace.contracts.loader import load_contract
from millrace.pipelines import landing
from millrace.pipelines.decode import LandingFile, decode_file
from millrace.pipelines.readers import UnreadableFile, read_records
from millrace.pipelines.records import COMMITTED, REJECTED
from millrace.pipelines.write import Locations, write_partition
from tests.conftest import EXAMPLE

RATINGS = load_contract(EXAMPLE / "contracts" / "ratings.yaml")
HEADER = "userId,movieId,rating,timestamp\n"
ROW = "1,2,4.0,1260759144\n"   # 2009-12-14
TODAY = dt.date(2026, 1, 15)


@pytest.fixture
def zone(tmp_path):
    """A landing zone with one good file, ``<zone>/ratings/2009-12-14/good.csv``."""
    good = tmp_path / "zone" / "ratings" / "2009-12-14" / "good.csv"
    good.parent.mkdir(parents=True)
    good.write_text(HEADER + ROW)
    return tmp_path / "zone"


def _scan(zone):
    return landing.scan(str(zone), "ratings", RATINGS, today=TODAY)


def _only_problem(zone):
    found = _scan(zone)
    assert [f.path.rsplit("/", 1)[-1] for f in found.files] == ["good.csv"], "the good file is still found"
    assert len(found.problems) == 1, found.problems
    return found.problems[0]


def test_a_clean_zone_has_no_problems(zone):
    found = _scan(zone)
    assert [f.partition for f in found.files] == ["2009-12"] and found.problems == []


def test_a_symlinked_date_folder_inside_the_zone_is_read(zone):
    real = zone / "ratings" / "_store" / "2009-12-15"
    real.mkdir(parents=True)
    (real / "more.csv").write_text(HEADER + ROW)
    (zone / "ratings" / "2009-12-15").symlink_to(real, target_is_directory=True)
    found = _scan(zone)
    assert found.problems == []
    assert sorted(f.path.rsplit("/", 1)[-1] for f in found.files) == ["good.csv", "more.csv"]


def test_a_symlinked_date_folder_outside_the_zone_is_reported(zone, tmp_path):
    outside = tmp_path / "elsewhere" / "2009-12-15"
    outside.mkdir(parents=True)
    (outside / "more.csv").write_text(HEADER + ROW)
    (zone / "ratings" / "2009-12-15").symlink_to(outside, target_is_directory=True)
    p = _only_problem(zone)
    assert p.path.endswith("ratings/2009-12-15") and "outside the landing zone" in p.problem
    assert "copy the data into the landing zone" in p.fix


def test_a_dangling_symlink_is_reported(zone):
    (zone / "ratings" / "2009-12-14" / "gone.csv").symlink_to(zone / "nowhere.csv")
    p = _only_problem(zone)
    assert p.path.endswith("2009-12-14/gone.csv") and p.problem == "a dangling symlink"


def test_a_symlink_to_a_file_outside_the_zone_is_reported_not_read(zone, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("password\n")
    (zone / "ratings" / "2009-12-14" / "link.csv").symlink_to(secret)
    p = _only_problem(zone)
    assert p.path.endswith("link.csv") and str(secret) in p.problem and "outside the landing zone" in p.problem


def test_a_symlink_to_a_file_inside_the_zone_is_read(zone):
    (zone / "ratings" / "2009-12-14" / "alias.csv").symlink_to(zone / "ratings" / "2009-12-14" / "good.csv")
    found = _scan(zone)
    assert found.problems == [] and len(found.files) == 2


def test_a_folder_named_like_a_data_file_is_reported(zone):
    (zone / "ratings" / "2009-12-14" / "more.csv").mkdir()
    (zone / "ratings" / "2009-12-14" / "more.csv" / "part.csv").write_text(HEADER + ROW)
    p = _only_problem(zone)
    assert p.path.endswith("2009-12-14/more.csv") and p.problem == "a folder inside a landing date folder"


def test_a_fifo_is_reported_and_never_opened(zone):
    os.mkfifo(zone / "ratings" / "2009-12-14" / "pipe.csv")
    p = _only_problem(zone)  # opening it would block this test forever
    assert p.path.endswith("pipe.csv") and p.problem == "a FIFO, not a regular file"


@pytest.mark.parametrize("folder, problem", [
    ("0000-01-01", "not a real calendar date"), ("2015-13-01", "not a real calendar date"),
    ("2015-02-30", "not a real calendar date"), ("9999-12-31", "in the future"), ("2015-1-3", "YYYY-MM-DD"),
])
def test_date_folders_that_are_not_real_dates_are_reported(zone, folder, problem):
    (zone / "ratings" / folder).mkdir()
    (zone / "ratings" / folder / "r.csv").write_text(HEADER + ROW)
    p = _only_problem(zone)
    assert p.path.endswith(f"{folder}/r.csv") and problem in p.problem
    (zone / "ratings" / folder / "r.csv").unlink()
    p = _only_problem(zone)  # an empty one is reported as the folder itself
    assert p.path.endswith(f"ratings/{folder}") and problem in p.problem and "rename it" in p.fix


def test_tomorrow_is_still_a_landing_date(zone):
    (zone / "ratings" / "2026-01-16").mkdir()
    (zone / "ratings" / "2026-01-16" / "r.csv").write_text(HEADER)
    assert _scan(zone).problems == []


def test_names_that_are_not_utf8_are_reported_readably(zone):
    folder = os.fsencode(zone / "ratings" / "2009-12-14")
    with open(folder + b"/r\xff\xfe.csv", "wb") as fh:
        fh.write((HEADER + ROW).encode())
    p = _only_problem(zone)
    assert p.path.endswith("2009-12-14/r\\xff\\xfe.csv") and "not valid UTF-8" in p.problem
    p.path.encode("utf-8")  # printable in a one-line message


def test_files_beside_date_folders_and_unknown_formats_are_reported(zone):
    (zone / "ratings" / "stray.csv").write_text(HEADER + ROW)
    (zone / "ratings" / "2009-12-14" / "notes.txt").write_text("x")
    (zone / "ratings" / "2009-12-14" / "_SUCCESS").write_text("")      # markers are ignored by name
    (zone / "ratings" / "2009-12-14" / ".part.csv.tmp").write_text("")
    problems = {p.path.rsplit("/", 1)[-1]: p for p in _scan(zone).problems}
    assert set(problems) == {"stray.csv", "notes.txt"}
    assert problems["stray.csv"].problem == "file directly in the source folder"
    assert problems["notes.txt"].problem == "unknown file format" and "prefix it with '_'" in problems["notes.txt"].fix


# -- the run refuses to start, in one line --------------------------------------------------------

@pytest.mark.slow
def test_ingest_with_a_fifo_exits_2_with_one_line_and_ingests_nothing(project_dir, tmp_path):
    state = tmp_path / "state"
    folder = state / "landing" / "ratings" / "2009-12-14"
    folder.mkdir(parents=True)
    (folder / "good.csv").write_text(HEADER + ROW)
    os.mkfifo(folder / "pipe.jsonl")
    env = {**os.environ, "MILLRACE_STATE_DIR": str(state)}
    proc = subprocess.run([sys.executable, "-m", "millrace.pipelines.cli", "--project", str(project_dir), "ingest",
                           "--source", "ratings", "--no-expectations"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {folder}/pipe.jsonl: a FIFO, not a regular file (fix: land regular files only)"]
    assert "pipe.jsonl" in proc.stdout and "nothing was ingested" in proc.stdout
    assert not (state / "lake").exists() and not (state / "quarantine").exists()


# -- per-file rules of the readers ----------------------------------------------------------------

def _landing(tmp_path, text: bytes, name="r.csv") -> LandingFile:
    path = tmp_path / "landing" / "ratings" / "2009-12-14" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)
    return LandingFile(str(path), "2009-12-14", "2009-12", len(text), path.stat().st_mtime)


def test_a_duplicated_csv_column_rejects_its_file_by_name(tmp_path):
    with pytest.raises(UnreadableFile, match="column 'rating' appears 2 times"):
        read_records("x.csv", b"userId,movieId,rating,rating,timestamp\n1,2,4.0,4.0,1\n", RATINGS.field_names)
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from millrace.pipelines.decode import DecodeUnderContract

    bad = _landing(tmp_path, b"userId,movieId,rating,rating,timestamp\n1,2,4.0,4.0,1260759144\n")
    good = _landing(tmp_path, (HEADER + "3,4,5.0,1260759144\n").encode(), "s.csv")
    where = Locations(str(tmp_path / "lake"), str(tmp_path / "q"), str(tmp_path / "state"))
    with TestPipeline() as p:
        out = (p | beam.Create([("2009-12", [bad, good])]) | DecodeUnderContract(RATINGS, "ratings", 0, "run")
               | beam.Map(lambda kv: write_partition(RATINGS, "ratings", kv[0], kv[1], where, "run"))
               | beam.Map(lambda r: (r.status, r.problem)))
        assert_that(out, equal_to([(REJECTED, f"unreadable input: {bad.path}: malformed CSV header: column 'rating' "
                                              f"appears 2 times (fix: give every column its own name)")]))


@pytest.mark.parametrize("name, body", [("r.csv", HEADER + ROW + "1,3,2.5,1260759145\n"),
                                        ("r.jsonl", '{"userId": 1, "movieId": 2, "rating": 4.0, "timestamp": '
                                                    '1260759144}\n{"userId": 1, "movieId": 3, "rating": 2.5, '
                                                    '"timestamp": 1260759145}\n')])
def test_a_utf8_bom_is_not_data(tmp_path, name, body):
    data = b"\xef\xbb\xbf" + body.encode()
    f = _landing(tmp_path, data, name)
    decoded = decode_file(RATINGS, "ratings", f, data, 2**62, "run")
    assert decoded.good.num_rows == 2 and decoded.quarantine.num_rows == 0
    assert decoded.input.bytes == len(data)
    where = Locations(str(tmp_path / "lake"), str(tmp_path / "q"), str(tmp_path / "state"))
    assert write_partition(RATINGS, "ratings", "2009-12", [decoded], where, "run").status == COMMITTED


def test_a_bad_row_after_a_bom_keeps_its_line_and_bytes(tmp_path):
    data = b"\xef\xbb\xbf" + (HEADER + ROW + "1,x,4.0,1260759144\n").encode()
    decoded = decode_file(RATINGS, "ratings", _landing(tmp_path, data), data, 2**62, "run")
    q = decoded.quarantine.to_pylist()
    assert [(r["line"], r["reason"], r["payload"]) for r in q] == [(3, "type_mismatch", b"1,x,4.0,1260759144")]
    assert pa.types.is_integer(decoded.good.schema.field("userId").type)
