"""Kill -9 the ingest process at named points, rerun, and compare with one clean run.

The acceptance point: killed at any of the ``contracts.faults.INGEST_POINTS`` (after a file is
decoded, after data or quarantine files are staged, before the commit, after the quarantine
table's commit, after the lake table's commit, after the cleanup), a rerun leaves the lake equal
to that of one clean run: the same rows, no duplicate keys, the same quarantine, and no files in
a partition folder but the committed run's. Readers never see a half-written run, including when
the killed run was replacing partitions that were already committed; stock Delta readers (DuckDB's
delta extension, deltalake's pyarrow dataset) read exactly the rows millrace's reader does.

Every run is a real ``millrace ingest`` subprocess on a small generated landing set
(three monthly partitions, daily CSV and JSON-lines files, planted bad rows and duplicates).
"""
from __future__ import annotations

import calendar
import datetime as dt
import json
import os
import posixpath
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from millrace.contracts.project import load_project
from millrace.pipelines import lake
from millrace.pipelines.records import PartitionManifest
from millrace.contracts.faults import INGEST_POINTS
from tests.pipelines.stock import stock_rows

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "movielens"
SOURCE, KEY = "ratings", "month"
MONTHS = ("2015-01", "2015-02", "2015-03")
DAYS = (3, 9, 14, 20, 27)
USERS = range(1, 13)
RATINGS = (0.5, 1.0, 2.5, 3.5, 4.0, 5.0)
ENV_OVERRIDES = ("MILLRACE_KILL_AT", "MILLRACE_PROJECT", "MILLRACE_STATE_DIR", "MILLRACE_LANDING_URI",
                 "MILLRACE_LAKE_URI", "MILLRACE_QUARANTINE_URI")


# -- the landing set ------------------------------------------------------------------------------

@dataclass
class Expected:
    rows: dict[str, list[tuple]]   # partition -> sorted (userId, movieId, rating, epoch seconds)
    quarantine: list[tuple]        # sorted (partition, file name, line, reason)


def _epoch(day: dt.date, hour: int) -> int:
    return calendar.timegm((day.year, day.month, day.day, hour, 0, 0))


def _render(fmt: str, user, movie, rating, ts) -> str:
    if fmt == "csv":
        return f"{user},{movie},{rating},{ts}"
    return json.dumps({"userId": user, "movieId": movie, "rating": rating, "timestamp": ts})


def build_landing(root: Path) -> Expected:
    """Write ``<root>/ratings/<date>/ratings-<date>.{csv,jsonl}``; return what a clean run must commit.

    3 months x 5 days x 12 ratings, CSV and JSON lines on alternate days, plus 8 rows that must be
    quarantined (at most 3 per month, under the contract's 5% threshold), two of them duplicates.
    """
    bodies: dict[dt.date, list[list]] = {}     # date -> [[line text, reason or None], ...]
    fmts: dict[dt.date, str] = {}
    rows: dict[str, dict[tuple, tuple]] = {m: {} for m in MONTHS}
    for mi, month in enumerate(MONTHS, start=1):
        for i, day in enumerate(DAYS):
            d = dt.date(2015, mi, day)
            fmts[d] = "csv" if i % 2 == 0 else "jsonl"
            bodies[d] = []
            for u in USERS:
                row = (u, 1000 * mi + day, RATINGS[(u + day) % len(RATINGS)], _epoch(d, u))
                bodies[d].append([_render(fmts[d], *row), None])
                rows[month][row[:2]] = row

    def bad(d: dt.date, at: int, text: str, reason: str):
        bodies[d].insert(at, [text, reason])

    def newer_copy(old: dt.date, user: int, new: dt.date, at: int, rating: float, ts: int):
        """Land another rating for the key (user, movie of ``old``) in ``new``'s file; it wins,
        the original line is quarantined as a duplicate."""
        month, key = old.isoformat()[:7], (user, 1000 * old.month + old.day)
        original = _render(fmts[old], *rows[month][key])
        hits = [entry for entry in bodies[old] if entry[0] == original]
        assert len(hits) == 1
        hits[0][1] = "duplicate_key"
        rows[month][key] = (user, key[1], rating, ts)
        bodies[new].insert(at, [_render(fmts[new], *rows[month][key]), None])

    D = dt.date
    # January: a wrong type, a truncated JSON line, a later rating of the same (user, movie).
    bad(D(2015, 1, 3), 5, f"99,1003,n/a,{_epoch(D(2015, 1, 3), 1)}", "type_mismatch")
    bad(D(2015, 1, 9), 2, '{"userId": 98, "movieId": 10', "malformed_record")
    newer_copy(D(2015, 1, 3), 5, D(2015, 1, 20), 7, 1.5, _epoch(D(2015, 1, 20), 5))
    # February: out of range, off the half-star grid, an event time of January landed in February.
    bad(D(2015, 2, 14), 0, f"50,2014,7.0,{_epoch(D(2015, 2, 14), 3)}", "out_of_range")
    bad(D(2015, 2, 9), 11, _render("jsonl", 51, 2009, 3.3, _epoch(D(2015, 2, 9), 4)), "not_in_enum")
    bad(D(2015, 2, 27), 12, f"52,2027,4.0,{_epoch(D(2015, 1, 31), 23)}", "late_event")
    # March: a missing key, and the same key with the same event time in two files (the later file wins).
    bad(D(2015, 3, 14), 6, f",3014,3.5,{_epoch(D(2015, 3, 14), 6)}", "missing_required")
    newer_copy(D(2015, 3, 3), 2, D(2015, 3, 27), 3, 4.5, _epoch(D(2015, 3, 3), 2))

    quarantine = []
    for d, body in bodies.items():
        name = f"ratings-{d.isoformat()}.{fmts[d]}"
        header = ["userId,movieId,rating,timestamp"] if fmts[d] == "csv" else []
        folder = root / SOURCE / d.isoformat()
        folder.mkdir(parents=True)
        (folder / name).write_text("\n".join(header + [text for text, _ in body]) + "\n")
        for line, (_, reason) in enumerate(body, start=len(header) + 1):
            if reason:
                quarantine.append((d.isoformat()[:7], name, line, reason))
    return Expected({m: sorted(r.values()) for m, r in rows.items()}, sorted(quarantine))


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> tuple[Path, Expected]:
    root = tmp_path_factory.mktemp("landing")
    return root, build_landing(root)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("project")
    shutil.copy(EXAMPLE / "millrace.yaml", folder / "millrace.yaml")
    shutil.copytree(EXAMPLE / "contracts", folder / "contracts")
    return folder


@pytest.fixture
def fresh_state(tmp_path, landing):
    """A new state folder with the landing set under landing/ and nothing ingested."""
    def make() -> Path:
        state = tmp_path / "lake-state"
        shutil.copytree(landing[0] / SOURCE, state / "landing" / SOURCE)
        return state

    return make


# -- running the CLI ------------------------------------------------------------------------------

def ingest(project: Path, state: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    env["MILLRACE_STATE_DIR"] = str(state)
    if kill_at:
        env["MILLRACE_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "millrace.pipelines.cli", "--project", str(project), "ingest", "--source", SOURCE, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=state.parent)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"ingest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def killed(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == -signal.SIGKILL, \
        f"expected death by SIGKILL, got {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


# -- looking at the lake --------------------------------------------------------------------------

@dataclass
class Snapshot:
    rows: dict[str, list[tuple]]     # partition -> sorted rows, as readers see them
    quarantine: list[tuple]          # sorted (partition, file name, line, reason, field, payload)
    manifests: dict[str, PartitionManifest]  # partition -> committed manifest

    def view(self, partitions=None) -> dict:
        """What must not depend on how the lake got there (no run ids, times or absolute paths),
        for all partitions or only the given ones."""
        keep = set(self.manifests if partitions is None else partitions)
        stats = {p: (m.rows, m.quarantine.rows, m.quarantine.by_reason, m.duplicates_resolved,
                     m.contract.version, sorted(posixpath.basename(i.path) for i in m.inputs))
                 for p, m in self.manifests.items() if p in keep}
        return {"rows": {p: r for p, r in self.rows.items() if p in keep},
                "quarantine": [q for q in self.quarantine if q[0] in keep], "stats": stats}

    @property
    def run_ids(self) -> dict[str, str]:
        return {p: m.run_id for p, m in self.manifests.items()}


def snapshot(project: Path, state: Path) -> Snapshot:
    """Read the lake of ``state`` through the product's readers (manifests only)."""
    with mock.patch.dict(os.environ, {"MILLRACE_STATE_DIR": str(state)}):
        for name in ENV_OVERRIDES:
            if name != "MILLRACE_STATE_DIR":
                os.environ.pop(name, None)
        p = load_project(project)
        lake_uri, quarantine_uri = p.lake, p.quarantine
    assert lake_uri == str(state / "lake") and quarantine_uri == str(state / "quarantine")
    committed = lake.committed_partitions(lake_uri, SOURCE, KEY)
    table = lake.read_source(lake_uri, SOURCE, KEY)
    rows: dict[str, list[tuple]] = {}
    for r in table.to_pylist():
        rows.setdefault(r[KEY], []).append(
            (r["userId"], r["movieId"], r["rating"], calendar.timegm(r["timestamp"].utctimetuple())))
    keys = [(u, m) for part in rows.values() for u, m, _, _ in part]
    assert len(keys) == len(set(keys)), "duplicate keys in the lake"
    q = lake.read_quarantine(quarantine_uri, lake_uri, SOURCE, KEY)
    quarantine = sorted((r["partition"], posixpath.basename(r["file"]), r["line"], r["reason"], r["field"] or "",
                         r["payload"]) for r in q.to_pylist())
    manifests = {c.value: c.manifest for c in committed}
    for value, m in manifests.items():
        assert m.rows == len(rows.get(value, [])), f"manifest of {value} disagrees with its data files"
    return Snapshot({p: sorted(r) for p, r in sorted(rows.items())}, quarantine, manifests)


def leftovers(state: Path, snap: Snapshot) -> dict[str, set[str]]:
    """Files in partition folders (lake and quarantine) that no committed manifest lists, by folder."""
    out = {}
    for area in ("lake", "quarantine"):
        root = state / area / SOURCE
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if not folder.name.startswith(f"{KEY}="):  # _delta_log/, the quarantine's _rejected/
                continue
            m = snap.manifests.get(folder.name.split("=", 1)[1])
            listed: set[str] = set()
            if m is not None and area == "lake":
                listed = {f.name for f in m.files} | {lake.manifest_name(m.run_id)}
                if m.expectations:
                    listed.add(m.expectations.results)
            elif m is not None:
                assert m.quarantine.directory == str(folder)
                listed = set(m.quarantine.files)
            missing = listed - set(os.listdir(folder))
            assert not missing, f"{folder}: manifest lists missing files {missing}"
            extra = set(os.listdir(folder)) - listed
            if extra:
                out[f"{area}/{folder.name}"] = extra
    return out


def assert_stock_readers_agree(snap: Snapshot, state: Path, quarantine: bool = True) -> None:
    """DuckDB and pyarrow read the lake's table (and, between runs, the quarantine's) exactly as
    millrace's reader does."""
    for engine, (rows, quarantined) in stock_rows(state / "lake" / SOURCE, state / "quarantine" / SOURCE).items():
        assert rows == snap.rows, f"{engine} reads other lake rows than millrace"
        if quarantine:
            assert quarantined == sorted(q[:4] for q in snap.quarantine), f"{engine}: other quarantined rows"


def assert_equals_clean(snap: Snapshot, clean: Snapshot, state: Path) -> None:
    assert sorted(snap.manifests) == list(MONTHS), "every partition must be committed"
    assert snap.view() == clean.view()
    assert leftovers(state, snap) == {}, "stray files in partition folders"
    assert_stock_readers_agree(snap, state)


# -- the clean reference --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean(project, landing, tmp_path_factory) -> Snapshot:
    """One clean run, checked against the landing set's ground truth."""
    state = tmp_path_factory.mktemp("clean") / "state"
    shutil.copytree(landing[0] / SOURCE, state / "landing" / SOURCE)
    ok(ingest(project, state))
    snap = snapshot(project, state)
    expected = landing[1]
    assert sorted(snap.manifests) == list(MONTHS)
    assert snap.rows == expected.rows
    assert [q[:4] for q in snap.quarantine] == expected.quarantine
    assert leftovers(state, snap) == {}
    assert_stock_readers_agree(snap, state)
    return snap


@pytest.mark.slow
def test_clean_run_commits_exactly_the_good_rows(clean, landing):
    expected = landing[1]
    assert sum(len(r) for r in clean.rows.values()) == 180
    assert len(clean.quarantine) == 8 == len(expected.quarantine)
    assert {m: clean.manifests[m].duplicates_resolved for m in MONTHS} == {"2015-01": 1, "2015-02": 0,
                                                                           "2015-03": 1}
    # The newer copy of a duplicated key is the one committed.
    assert (5, 1003, 1.5, _epoch(dt.date(2015, 1, 20), 5)) in clean.rows["2015-01"]
    assert (2, 3003, 4.5, _epoch(dt.date(2015, 3, 3), 2)) in clean.rows["2015-03"]
    payloads = {q[3]: q[5] for q in clean.quarantine}
    assert payloads["type_mismatch"].startswith(b"99,1003,n/a,")
    assert payloads["malformed_record"] == b'{"userId": 98, "movieId": 10'


# -- kill, rerun, compare -------------------------------------------------------------------------

# point[:n], partitions committed when the process dies (a run commits all its partitions at
# once), whether partition folders then hold files of no snapshot (the killed run's output), and
# whether the quarantine table then holds exactly the committed rows for stock readers (a kill
# after its append and before the cleanup leaves the killed run's rows there until the next run).
# The Great Expectations suite is off here only to keep the matrix fast (it adds ~2.5 s of imports
# per run); the replacement test below kills runs that have it on.
KILLS = [
    ("after_decode:4", 0, False, True),
    ("after_data_files", 0, True, True),
    ("after_quarantine:2", 0, True, True),
    ("before_commit", 0, True, True),
    ("after_quarantine_commit", 0, True, False),
    ("after_commit", 3, False, True),
    ("after_cleanup", 3, False, True),
]
FAST = ("--no-expectations",)


def test_every_fault_point_is_covered():
    assert {spec.split(":")[0] for spec, *_ in KILLS} == set(INGEST_POINTS)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, committed_at_death, uncommitted_output, quarantine_exact", KILLS,
                         ids=[k[0] for k in KILLS])
def test_kill_then_rerun_equals_one_clean_run(project, fresh_state, clean, kill_at, committed_at_death,
                                              uncommitted_output, quarantine_exact):
    state = fresh_state()
    killed(ingest(project, state, *FAST, kill_at=kill_at))

    # What readers see right after the kill: the whole run or nothing of it, as in the clean run.
    partial = snapshot(project, state)
    assert len(partial.manifests) == committed_at_death
    assert partial.view() == clean.view(partial.manifests)
    stray = leftovers(state, partial)
    assert bool(stray) == uncommitted_output, stray
    assert all(folder.split("=", 1)[1] not in partial.manifests for folder in stray)
    assert_stock_readers_agree(partial, state, quarantine=quarantine_exact)

    ok(ingest(project, state, *FAST))
    assert_equals_clean(snapshot(project, state), clean, state)


def _changed(before: Snapshot, after: Snapshot) -> set[str]:
    return {p for p, run in after.run_ids.items() if run != before.run_ids.get(p)}


@pytest.mark.slow
def test_kill_during_replacement_keeps_committed_partitions_readable(project, fresh_state, clean):
    """Runs that replace committed partitions (backfills) are killed part way, twice; readers see
    every partition whole throughout (the old commit or the new one), and a rerun cleans up."""
    state = fresh_state()
    ok(ingest(project, state))
    first = snapshot(project, state)
    assert_equals_clean(first, clean, state)

    # 1. Killed right after the commit: the replaced run's files are still in the folders, in no snapshot.
    killed(ingest(project, state, "--from", "2015-02-10", "--to", "2015-03-05", kill_at="after_commit"))
    during = snapshot(project, state)
    assert during.view() == clean.view()
    assert _changed(first, during) == {"2015-02", "2015-03"}
    stray = leftovers(state, during)
    assert set(stray) == {f"{area}/{KEY}={v}" for area in ("lake", "quarantine") for v in ("2015-02", "2015-03")}
    assert all(first.run_ids[folder.split("=", 1)[1]] in f for folder, files in stray.items() for f in files)
    assert_stock_readers_agree(during, state, quarantine=False)  # the quarantine table: until the next run

    # 2. A whole-range rerun killed before its commit: every partition holds the new run's staged
    # files beside the committed ones, which readers keep using (the first run's leftovers are gone:
    # the rerun reconciled before planning).
    killed(ingest(project, state, "--from", "2015-01-01", "--to", "2015-03-31", kill_at="before_commit"))
    again = snapshot(project, state)
    assert again.view() == clean.view()
    assert _changed(during, again) == set()
    stray = leftovers(state, again)
    assert set(stray) == {f"{area}/{KEY}={v}" for area in ("lake", "quarantine") for v in MONTHS}
    assert not any(run in f for files in stray.values() for f in files for run in again.run_ids.values())
    assert any(f.startswith("part-") for files in stray.values() for f in files)
    assert_stock_readers_agree(again, state)

    ok(ingest(project, state, "--from", "2015-01-01", "--to", "2015-03-31"))
    final = snapshot(project, state)
    assert_equals_clean(final, clean, state)
    reruns = set(final.run_ids.values())
    assert len(reruns) == 1, "the rerun replaces every partition of the range"
    assert reruns.isdisjoint(set(first.run_ids.values()) | set(during.run_ids.values()) | set(again.run_ids.values()))


@pytest.mark.slow
def test_rerun_of_a_range_replaces_its_partitions_and_never_duplicates(project, fresh_state, clean):
    # Landing dates 2015-02-10..2015-03-05 touch February and March: both are built whole, January not at all.
    state = fresh_state()
    span = ("--from", "2015-02-10", "--to", "2015-03-05", *FAST)
    ok(ingest(project, state, *span))
    first = snapshot(project, state)
    assert sorted(first.manifests) == ["2015-02", "2015-03"]
    assert first.view() == clean.view(["2015-02", "2015-03"])
    assert leftovers(state, first) == {}

    ok(ingest(project, state, *span))
    second = snapshot(project, state)
    assert second.view() == first.view()
    assert sum(len(r) for r in second.rows.values()) == sum(len(r) for r in first.rows.values()) == 120
    assert _changed(first, second) == {"2015-02", "2015-03"}
    assert leftovers(state, second) == {}, "the replaced run's files must be gone"
