"""Ingest throughput: millrace vs a naive (dict per row) Beam pipeline vs plain pyarrow.

    /tmp/venv/bin/python bench/ingest.py --rows 5000000     # default; 2-4 min, mostly the naive pipeline
    /tmp/venv/bin/python bench/ingest.py --rows 200000      # quick run (~15 s)
    /tmp/venv/bin/python bench/ingest.py --profile m.prof   # cProfile of the millrace engine only
    /tmp/venv/bin/python bench/ingest.py --shape example    # shaped like the bundled example's first ingest

Generates N MovieLens-like ratings once as daily CSV landing files (~0.5% bad rows of
six kinds), runs every engine on them, checks they agree on the output and prints rows/s.
Targets: millrace >= 10x naive Beam and >= 0.5x plain pyarrow.

``--shape example`` lands what a new user's first ingest sees, a 20-year backfill: 100,504 rows
(unless --rows) in 3,840 daily files spread over 246 monthly partitions (1995-01 to 2015-06, every
month with at least one file), the same bad-row kinds. Every engine does the same work as in the
default shape (each small file read, typed, checked; one Parquet per partition plus the rejected
rows). Target there: millrace >= 0.3x plain pyarrow (naive Beam: information only).

The plain pyarrow reference checks each file on its own, as a script over daily files would;
``pyarrow_batched`` (information, no target) reads each file but checks a month's rows together,
the fixed cost per compute call paid once per partition, as millrace does.
"""
from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import glob
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Everything is imported before any timing so that import cost counts for no engine,
# including what millrace imports lazily (Great Expectations, its renderers).
import apache_beam as beam
import great_expectations  # noqa: F401
import great_expectations.expectations  # noqa: F401
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import deltalake  # noqa: F401  (millrace commits with it)
from apache_beam.options.pipeline_options import PipelineOptions
from great_expectations.render.renderer import ValidationResultsPageRenderer  # noqa: F401
from great_expectations.render.view import DefaultJinjaPageView  # noqa: F401

from millrace.contracts.project import load_project
from millrace.pipelines.ingest import ingest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "movielens"
FIELDS = ("userId", "movieId", "rating", "timestamp")
SCHEMA = pa.schema([("userId", pa.int64()), ("movieId", pa.int64()), ("rating", pa.float64()),
                    ("timestamp", pa.timestamp("us", tz="UTC"))])
HALF_STARS = [x / 2 for x in range(1, 11)]
KINDS = ("out_of_range", "off_grid", "wrong_type", "missing_key", "duplicate_key", "late_event")
USERS, MOVIES = 280_000, 60_000
FUTURE_TOLERANCE_S = 86_400
# The contract's text rules, as millrace applies them (contracts/arrow.py).
INT_RE = r"^\s*[+-]?\d{1,18}\s*$"
NUM_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?\s*$"


# -- data ------------------------------------------------------------------------------------

EXAMPLE_SHAPE = {"rows": 100_504, "first": dt.date(1995, 1, 1), "months": 246, "files": 3_840}


def landing_days(shape: str, days: int, seed: int) -> tuple[dt.date, np.ndarray]:
    """The first day and the sorted day offsets that get a landing file."""
    if shape != "example":
        return dt.date(2015, 1, 1), np.arange(days, dtype=np.int64)
    rng = np.random.default_rng(seed + 1)
    first, months = EXAMPLE_SHAPE["first"], EXAMPLE_SHAPE["months"]
    starts = [(dt.date(first.year + m // 12, m % 12 + 1, 1) - first).days for m in range(months + 1)]
    one_each = [rng.integers(a, b) for a, b in zip(starts[:-1], starts[1:])]   # every month gets a file
    others = np.setdiff1d(np.arange(starts[-1]), one_each)
    more = rng.choice(others, EXAMPLE_SHAPE["files"] - months, replace=False)
    return first, np.sort(np.concatenate([one_each, more])).astype(np.int64)


def generate(landing: Path, rows: int, days: int, bad_share: float, seed: int, shape: str = "year") -> int:
    """Daily CSV files under landing/ratings/<day>/; returns how many rows must be rejected."""
    rng = np.random.default_rng(seed)
    first, offsets = landing_days(shape, days, seed)
    day = offsets[np.arange(rows, dtype=np.int64) * len(offsets) // rows]  # rows spread evenly, file order = row order
    day_start = (first - dt.date(1970, 1, 1)).days * 86_400 + day * 86_400
    ts = day_start + rng.integers(0, 86_400, rows)
    code = rng.choice(USERS * MOVIES, size=rows, replace=False)      # unique keys: only planted duplicates
    user, movie = code // MOVIES + 1, code % MOVIES + 1
    stars = rng.choice(10, size=rows, p=[.01, .03, .02, .08, .05, .2, .13, .26, .08, .14])
    bad = np.sort(rng.choice(np.arange(1, rows), size=int(rows * bad_share), replace=False))
    kind = np.arange(len(bad)) % len(KINDS)
    # A duplicate copies the previous row's key with an older time, same day, strictly older
    # (no ties, so every engine keeps the same winner); candidates that cannot are dropped.
    is_dup = kind == KINDS.index("duplicate_key")
    usable = (day[bad] == day[bad - 1]) & (ts[bad - 1] - 60 >= day_start[bad]) & ~np.isin(bad - 1, bad)
    bad, kind = bad[~is_dup | usable], kind[~is_dup | usable]
    dup = bad[kind == KINDS.index("duplicate_key")]
    user[dup], movie[dup] = user[dup - 1], movie[dup - 1]
    ts[dup] = ts[dup - 1] - rng.integers(1, 61, len(dup))
    stars[dup] = (stars[dup - 1] + 3) % 10
    late = bad[kind == KINDS.index("late_event")]
    ts[late] -= 40 * 86_400                                          # always an earlier month than the folder
    cols = {"userId": pa.array(user).cast(pa.string()), "movieId": pa.array(movie).cast(pa.string()),
            "rating": pa.array([f"{x:.1f}" for x in HALF_STARS]).take(pa.array(stars)),
            "timestamp": pa.array(ts).cast(pa.string())}

    def plant(kind_name: str, field_of, values):
        at = bad[kind == KINDS.index(kind_name)]
        which = field_of(len(at))
        for f in np.unique(which):
            mask = np.zeros(rows, bool)
            mask[at[which == f]] = True
            cols[f] = pc.replace_with_mask(cols[f], pa.array(mask), pa.array(rng.choice(values, mask.sum()), pa.string()))

    plant("out_of_range", lambda n: np.full(n, "rating"), ["0.0", "5.5", "7.0", "-1.0"])
    plant("off_grid", lambda n: np.full(n, "rating"), ["1.2", "2.7", "3.3", "4.9"])
    plant("wrong_type", lambda n: rng.choice(FIELDS, n), ["n/a", "12x", "three"])
    plant("missing_key", lambda n: rng.choice(["userId", "movieId"], n), [""])
    # One contiguous buffer of "u,m,r,t\n" lines; each day's file is a slice of it.
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*cols.values(), ","), "\n", "").cast(pa.large_string())
    offsets, data = np.frombuffer(lines.buffers()[1], np.int64)[: rows + 1], lines.buffers()[2]
    bounds = np.flatnonzero(np.r_[True, day[1:] != day[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        name = (first + dt.timedelta(days=int(day[a]))).isoformat()
        folder = landing / "ratings" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"ratings-{name}.csv").write_bytes(b"userId,movieId,rating,timestamp\n" + data[offsets[a]:offsets[b]].to_pybytes())
    return len(bad)


# -- engine 1: millrace ------------------------------------------------------------------------

def make_project(workdir: Path) -> Path:
    """A copy of the example project, so the real millrace.yaml and ratings contract are used."""
    return Path(shutil.copytree(EXAMPLE, workdir / "project", ignore=shutil.ignore_patterns(".millrace")))


def run_millrace(project_dir: Path, landing: Path, state: Path, validate: bool) -> tuple[str, str]:
    """One `millrace ingest --source ratings`, in-process, into a fresh state dir."""
    os.environ.update(MILLRACE_STATE_DIR=str(state), MILLRACE_LANDING_URI=str(landing))
    result = ingest(load_project(project_dir), "ratings", validate=validate)
    if result.rejected:
        sys.exit(f"millrace rejected partitions: {[(r.partition, r.problem) for r in result.rejected]}")
    return (f"delta:{state}/lake/ratings", f"delta:{state}/quarantine/ratings")  # read as tables, as users do


# -- engine 2: naive Beam, one dict per row ---------------------------------------------------

def parse_and_validate(element: tuple[str, str], now_s: int) -> dict:
    path, line = element
    row = {"file": path, "raw": line, "month": os.path.basename(os.path.dirname(path))[:7], "reason": None}
    cells = line.split(",")
    if len(cells) != len(FIELDS):
        row["reason"] = "malformed_record"
        return row
    for name, cast, cell in zip(FIELDS, (int, int, float, int), cells):
        cell = cell.strip()
        try:
            row[name] = cast(cell) if cell else None
        except ValueError:
            row["reason"] = row["reason"] or "type_mismatch"
    row["reason"] = row["reason"] or first_failed_rule(row, now_s)
    return row


def first_failed_rule(row: dict, now_s: int) -> str | None:
    if any(row[f] is None for f in FIELDS):
        return "missing_required"
    if row["userId"] < 1 or row["movieId"] < 1 or not 0.5 <= row["rating"] <= 5.0:
        return "out_of_range"
    if row["rating"] not in HALF_STARS:
        return "not_in_enum"
    if row["timestamp"] > now_s + FUTURE_TOLERANCE_S:
        return "future_event_time"
    if dt.datetime.fromtimestamp(row["timestamp"], dt.timezone.utc).strftime("%Y-%m") != row["month"]:
        return "late_event"
    return None


def dedup_and_write(partition: tuple[str, list[dict]], out: str) -> None:
    month, rows = partition
    latest, rejected = {}, []
    for row in rows:
        if row["reason"]:
            rejected.append(row)
            continue
        key = (row["userId"], row["movieId"])
        kept = latest.get(key)
        if kept is not None:
            loser, row = (kept, row) if row["timestamp"] > kept["timestamp"] else (row, kept)
            rejected.append(dict(loser, reason="duplicate_key"))
        latest[key] = row
    good = pa.Table.from_pylist([{f: r[f] for f in FIELDS} for r in latest.values()],
                                schema=SCHEMA.set(3, pa.field("timestamp", pa.timestamp("s", tz="UTC"))))
    write(good.cast(SCHEMA), f"{out}/lake/month={month}/part-0.parquet")
    write(pa.Table.from_pylist([{k: r[k] for k in ("file", "raw", "reason")} for r in rejected]),
          f"{out}/rejected/month={month}/part-0.parquet")


def run_naive_beam(landing: Path, out: Path, now_s: int) -> tuple[str, str]:
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        _ = (p
             | "Read" >> beam.io.ReadFromTextWithFilename(f"{landing}/ratings/*/*.csv", skip_header_lines=1)
             | "ParseAndValidate" >> beam.Map(parse_and_validate, now_s)
             | "KeyByPartition" >> beam.Map(lambda row: (row["month"], row))
             | "GroupByPartition" >> beam.GroupByKey()
             | "DedupAndWrite" >> beam.Map(dedup_and_write, str(out)))
    return f"{out}/lake/month=*/*.parquet", f"{out}/rejected/month=*/*.parquet"


# -- engine 3: plain pyarrow ------------------------------------------------------------------

def read_text(path: str) -> pa.Table:
    return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types={f: pa.string() for f in FIELDS}, strings_can_be_null=True, null_values=[""])).combine_chunks()


def check_file(path: str, month: str, now_s: int) -> tuple[pa.Table, pa.Table]:
    """Typed good rows (+ provenance) and rejected text rows of one CSV file, vectorized."""
    text = read_text(path)
    return check_text(text, pa.repeat(path, text.num_rows), month, now_s)


def check_text(text: pa.Table, files: pa.Array, month: str, now_s: int) -> tuple[pa.Table, pa.Table]:
    """``check_file`` on the text rows of one or more files (``files``: each row's file)."""
    reason = pa.nulls(text.num_rows, pa.string())

    def flag(mask, code):  # first failing rule names the row's reason
        nonlocal reason
        reason = pc.if_else(pc.and_(pc.is_null(reason), pc.fill_null(mask, False)), code, reason)

    typed = {}
    for f, regex, to in zip(FIELDS, (INT_RE, INT_RE, NUM_RE, INT_RE), (pa.int64(), pa.int64(), pa.float64(), pa.int64())):
        ok = pc.match_substring_regex(text[f], regex)
        flag(pc.invert(ok), "type_mismatch")
        typed[f] = pc.if_else(ok, text[f], None).cast(to)
    for f in FIELDS:
        flag(pc.is_null(text[f]), "missing_required")
    u, m, r, t = (typed[f] for f in FIELDS)
    flag(pc.or_(pc.or_(pc.less(u, 1), pc.less(m, 1)), pc.or_(pc.less(r, 0.5), pc.greater(r, 5.0))), "out_of_range")
    flag(pc.invert(pc.is_in(r, pa.array(HALF_STARS))), "not_in_enum")
    flag(pc.greater(t, now_s + FUTURE_TOLERANCE_S), "future_event_time")
    lo, hi = (np.datetime64(month, "M") + np.arange(2)).astype("datetime64[s]").astype(np.int64).tolist()
    flag(pc.or_(pc.less(t, lo), pc.greater_equal(t, hi)), "late_event")  # event month != folder month
    ok = pc.is_null(reason)
    good = pa.table({"userId": u, "movieId": m, "rating": r,
                     "timestamp": pc.multiply(t, 1_000_000).cast(pa.timestamp("us")).cast(SCHEMA.field(3).type),
                     "_file": files}).filter(ok)
    bad = text.filter(pc.invert(ok)).append_column("reason", reason.filter(pc.invert(ok)))
    return good, bad.append_column("file", files.filter(pc.invert(ok)))


def check_month(paths: list[str], month: str, now_s: int) -> tuple[pa.Table, pa.Table]:
    """``check_file`` once over all the files of a month: each file read, their rows checked together."""
    texts = [read_text(p) for p in paths]
    files = pa.concat_arrays([pa.repeat(p, t.num_rows).cast(pa.string()) for p, t in zip(paths, texts)])
    return check_text(pa.concat_tables(texts).combine_chunks(), files, month, now_s)


def run_pyarrow(landing: Path, out: Path, now_s: int, batched: bool = False) -> tuple[str, str]:
    """``batched``: a month's files checked together (fewer, bigger compute calls) instead of one by one."""
    by_month: dict[str, list[str]] = {}
    for path in sorted(glob.glob(f"{landing}/ratings/*/*.csv")):
        by_month.setdefault(os.path.basename(os.path.dirname(path))[:7], []).append(path)
    for month, paths in by_month.items():
        goods, bads = ([x] for x in check_month(paths, month, now_s)) if batched else \
            zip(*(check_file(p, month, now_s) for p in paths))
        good = pa.concat_tables(goods)
        # Latest event time per key wins: sort by key, newest first, keep the first of each key.
        ranked = good.take(pc.sort_indices(good, [("userId", "ascending"), ("movieId", "ascending"),
                                                   ("timestamp", "descending")]))
        u, m = ranked["userId"].to_numpy(), ranked["movieId"].to_numpy()
        first = np.r_[True, (u[1:] != u[:-1]) | (m[1:] != m[:-1])]
        losers = ranked.filter(pa.array(~first))
        dups = pa.table({"userId": losers["userId"].cast(pa.string()), "movieId": losers["movieId"].cast(pa.string()),
                         "rating": losers["rating"].cast(pa.string()),
                         "timestamp": pc.divide(losers["timestamp"].cast(pa.int64()), 1_000_000).cast(pa.string()),
                         "reason": pa.repeat("duplicate_key", losers.num_rows), "file": losers["_file"]})
        write(ranked.filter(pa.array(first)).drop_columns(["_file"]).cast(SCHEMA), f"{out}/lake/month={month}/part-0.parquet")
        write(pa.concat_tables([*bads, dups]), f"{out}/rejected/month={month}/part-0.parquet")
    return f"{out}/lake/month=*/*.parquet", f"{out}/rejected/month=*/*.parquet"


# -- harness ------------------------------------------------------------------------------------

def write(table: pa.Table, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, compression="zstd")


def _read(where: str, columns: list[str]) -> tuple[pa.Table | None, int]:
    """(rows, files) of a glob of Parquet files, or of a Delta table's snapshot (``delta:<path>``)."""
    if where.startswith("delta:"):
        from deltalake import DeltaTable

        table = DeltaTable(where[len("delta:"):])
        return table.to_pyarrow_dataset().to_table(columns=columns), len(table.file_uris())
    files = sorted(glob.glob(where))
    return (pq.read_table(files, columns=columns) if files else None), len(files)


def outcome(good_at: str, rejected_at: str) -> dict:
    """Row counts and a content fingerprint of the good rows, read back from what was written."""
    good, partitions = _read(good_at, list(FIELDS))
    good = good if good is not None else SCHEMA.empty_table()
    rejected, _ = _read(rejected_at, ["reason"])
    seconds = pc.divide(good["timestamp"].cast(pa.int64()), 1_000_000)  # microseconds would overflow the sum
    sums = [pc.sum(seconds if f == "timestamp" else good[f]).as_py() or 0 for f in FIELDS]
    reasons = rejected["reason"] if rejected is not None else pa.array([], pa.string())
    by_reason = dict(sorted((str(v["values"]), v["counts"]) for v in pc.value_counts(reasons).to_pylist()))
    return {"good": good.num_rows, "rejected": len(reasons), "partitions": partitions,
            "fingerprint": [round(s, 1) for s in sums], "by_reason": by_reason}


def timed(name: str, rows: int, fn) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()   # cpu: all threads, robust to a busy machine
    globs = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out = {"seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "rows_per_s": round(rows / wall), **outcome(*globs)}
    print(f"{name:<15} {wall:7.1f} s (cpu {cpu:6.1f} s) {out['rows_per_s']:>11,} rows/s  good={out['good']:,} "
          f"rejected={out['rejected']:,} partitions={out['partitions']}", flush=True)
    return out


def ratios(shape: str) -> tuple:
    """(engine, baseline, target) pairs. The example's shape has its own bar against pyarrow, and
    none against naive Beam: with ~26 rows a file, a dict per row costs little there."""
    example = shape == "example"
    return (("millrace", "naive_beam", None if example else 10), ("millrace", "pyarrow", 0.3 if example else 0.5),
            ("millrace_no_ge", "naive_beam", None), ("millrace_no_ge", "pyarrow", None),
            ("millrace", "pyarrow_batched", None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("year", "example"), default="year",
                    help="year: --days daily files from 2015-01-01; example: the bundled example's first ingest")
    ap.add_argument("--rows", type=int, help="default 5,000,000 (year) or 100,504 (example)")
    ap.add_argument("--days", type=int, default=365, help="landing days from 2015-01-01 (365 = 12 partitions)")
    ap.add_argument("--bad-share", type=float, default=0.005)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", help="where data and outputs go (default: a temp dir, removed at the end)")
    ap.add_argument("--engines", default="millrace,millrace_no_ge,pyarrow,pyarrow_batched,naive_beam",
                    help="comma list, run in order (pyarrow_batched: information, a month's files checked together)")
    ap.add_argument("--profile", metavar="PATH", help="only run millrace under cProfile, stats to PATH")
    args = ap.parse_args()
    if args.rows is None:
        args.rows = EXAMPLE_SHAPE["rows"] if args.shape == "example" else 5_000_000
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="millrace-bench-"))
    try:
        landing, project, now_s = workdir / "landing", make_project(workdir), int(time.time())
        started, load = time.perf_counter(), os.getloadavg()[0]
        planted = generate(landing, args.rows, args.days, args.bad_share, args.seed, args.shape)
        files = len(glob.glob(f"{landing}/ratings/*/*.csv"))
        print(f"generated {args.rows:,} rows in {files:,} daily files ({planted:,} planted bad, shape {args.shape}) in "
              f"{time.perf_counter() - started:.1f} s under {workdir} (load average before: {load:.2f})", flush=True)
        if args.profile:
            cProfile.runctx("run_millrace(project, landing, workdir / 'profile', True)", globals(), locals(), args.profile)
            pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)
            return
        engines = {"millrace": lambda: run_millrace(project, landing, workdir / "millrace", True),
                   "millrace_no_ge": lambda: run_millrace(project, landing, workdir / "millrace_no_ge", False),
                   "pyarrow": lambda: run_pyarrow(landing, workdir / "pyarrow", now_s),
                   "pyarrow_batched": lambda: run_pyarrow(landing, workdir / "pyarrow_batched", now_s, batched=True),
                   "naive_beam": lambda: run_naive_beam(landing, workdir / "naive", now_s)}
        figures = {name: timed(name, args.rows, engines[name]) for name in args.engines.split(",")}
        expected = {"good": args.rows - planted, "rejected": planted}
        first = next(iter(figures.values()))
        differ = [n for n, f in figures.items() if any(f[k] != first[k] for k in ("fingerprint", "by_reason"))
                  or any(f[k] != v for k, v in expected.items())]
        summary = {"shape": args.shape, "rows": args.rows, "files": files, "load_average_before": load, "expected": expected,
                   "engines": figures, "ratios": {}, "targets_met": {}}
        for engine, base, target in ratios(args.shape):
            if {engine, base} <= figures.keys():
                ratio = summary["ratios"][f"{engine}/{base}"] = round(figures[engine]["rows_per_s"] / figures[base]["rows_per_s"], 2)
                if target:
                    summary["targets_met"][f"{engine}/{base}>={target}"] = ratio >= target
                print(f"{engine}/{base}: {ratio:.2f}x" + (f" (target >= {target}: {'met' if ratio >= target else 'MISSED'})"
                                                          if target else " (information)"))
        print(json.dumps(summary))
        if differ:
            sys.exit(f"OUTPUTS DIFFER: {differ} vs expected {expected}; see the figures above")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
