"""The feature platform end to end on a small real lake: offline build, the generated Feast
repository (stock feast CLI included), materialize, online reads, and the CLI's one-line errors.

The lake is made the way a producer makes it: a few CSV files under landing/, ingested in-process.
Expectations are computed in the test from the offline tables (``features.offline.read_view``),
never from the code under test."""
from __future__ import annotations

import datetime as dt
import os
import random
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from millrace.contracts.project import Project, load_project
from millrace.features import feast_repo, offline
from millrace.features.materialize import materialize
from millrace.features.online import OnlineReader
from millrace.features.spec import Features, load_features
from millrace.pipelines.features_build import build
from millrace.pipelines.ingest import ingest
from tests.conftest import EXAMPLE

UTC = dt.timezone.utc
VIEWS = ["user_activity", "user_genres", "movie_popularity", "movie_metadata"]
# Landing days: one far back (falls out of the 30d windows), then a run across a month boundary.
DAYS = [dt.date(2021, 1, 15), dt.date(2021, 3, 28), dt.date(2021, 3, 29), dt.date(2021, 3, 31),
        dt.date(2021, 4, 1), dt.date(2021, 4, 2)]
NEW_DAY = dt.date(2021, 4, 5)
USER_ONE_MOVIES = [1, 2, 3]  # user 1 rates only these at first; later 7 and 8 (never rated by user 1)
NEW_EVENTS = [(1, 7, 4.5, 9), (1, 8, 2.0, 15)]
GENRES = ["Comedy|Drama", "Action", "Action|Adventure|Sci-Fi", "Drama", "Comedy|Romance", "Horror|Thriller",
          "Animation|Children|Comedy", "Documentary", "Crime|Drama|Thriller", "Western", "(no genres listed)"]
ENV_VARS = ("MILLRACE_ONLINE_STORE", "MILLRACE_REGISTRY", "MILLRACE_LANDING_URI", "MILLRACE_LAKE_URI",
            "MILLRACE_QUARANTINE_URI", "MILLRACE_OFFLINE_URI", "MILLRACE_PROJECT", "MILLRACE_KILL_AT")


# -- building state -------------------------------------------------------------------------------

@dataclass
class Env:
    root: Path          # the project folder
    state: Path         # its state folder
    project: Project
    features: Features


def copy_project(dest: Path, name: str | None = None) -> Path:
    """A copy of the example project, optionally under another project (= Feast project) name."""
    root = dest / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".millrace"))
    if name:
        path = root / "millrace.yaml"
        text, n = re.subn(r"(?m)^name: .*$", f"name: {name}", path.read_text())
        assert n == 1
        path.write_text(text)
    return root


def open_state(mp: pytest.MonkeyPatch, root: Path, state: Path, **env: str) -> Env:
    """Point MILLRACE_STATE_DIR (and the given variables) at ``state`` and load the project there."""
    for var in ENV_VARS:
        mp.delenv(var, raising=False)
    mp.setenv("MILLRACE_STATE_DIR", str(state))
    for var, value in env.items():
        mp.setenv(var, value)
    project = load_project(root)
    _ = (project.state_dir, project.landing, project.lake, project.quarantine, project.offline)  # pin them
    return Env(root, state, project, load_features(project))


def _epoch(day: dt.date, hour: int, minute: int = 0) -> int:
    return int(dt.datetime.combine(day, dt.time(hour, minute), UTC).timestamp())


def write_ratings(state: Path, day: dt.date, rows: list[tuple], name: str = "x.csv") -> None:
    """rows: (userId, movieId, rating, hour[, minute]) on ``day``."""
    folder = state / "landing" / "ratings" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["userId,movieId,rating,timestamp"]
    lines += [f"{r[0]},{r[1]},{r[2]},{_epoch(day, r[3], r[4] if len(r) > 4 else 0)}" for r in rows]
    (folder / name).write_text("\n".join(lines) + "\n")


def write_landing(state: Path) -> None:
    """Ten rated movies (plus one never rated), six users, unique (user, movie) pairs over DAYS."""
    rng = random.Random(20210315)
    by_day: dict[dt.date, list[tuple]] = {d: [] for d in DAYS}
    for user in range(1, 7):
        movies = USER_ONE_MOVIES if user == 1 else rng.sample(range(1, 11), rng.randint(3, 7))
        for movie in movies:
            day = rng.choice(DAYS)
            by_day[day].append((user, movie, rng.choice([0.5, 1.0, 2.5, 3.0, 3.5, 4.0, 5.0]),
                                rng.randint(0, 23), rng.choice([0, 17, 59])))
    for i, (day, rows) in enumerate(by_day.items()):
        if not rows:  # every day has activity (user 7 rates nothing else, so the pair is unique)
            rows.append((7, 1 + i, 4.0, 12))
        write_ratings(state, day, rows)
    folder = state / "landing" / "movies" / "2021-01-01"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["movieId,title,year,genres"] + [f"{m},Movie {m},{1980 + 3 * m},{GENRES[m - 1]}" for m in range(1, 12)]
    (folder / "movies.csv").write_text("\n".join(lines) + "\n")


def ingest_all(project: Project) -> None:
    for source in ("ratings", "movies"):
        result = ingest(project, source, validate=False)
        assert not result.rejected, result.to_json()


def make_state(mp: pytest.MonkeyPatch, dest: Path, name: str | None = None, **env: str) -> Env:
    """A project copy with a landed, ingested and built lake (no Feast yet)."""
    root = copy_project(dest, name)
    e = open_state(mp, root, dest / "state", **env)
    write_landing(e.state)
    ingest_all(e.project)
    reports = build(e.project, e.features)
    assert [r.status for r in reports] == ["built"] * len(VIEWS), reports
    return e


def clone_state(mp: pytest.MonkeyPatch, source: Env, dest: Path, parts=("landing", "lake", "offline"),
                **env: str) -> Env:
    """Another state folder with a copy of ``source``'s landing zone, lake and offline tables."""
    for part in parts:
        shutil.copytree(source.state / part, dest / part)
    return open_state(mp, source.root, dest, **env)


# -- expectations, computed from the offline tables ------------------------------------------------

def latest_rows(e: Env, view: str, until: dt.datetime | None = None) -> dict:
    """key -> the offline row with the newest event time (ties: newest created time) up to ``until``."""
    key = e.features.join_key(view)
    out: dict = {}
    for row in offline.read_view(e.project.offline, view).to_pylist():
        if until is not None and row["event_timestamp"] > until:
            continue
        k = row[key]
        if k not in out or (row["event_timestamp"], row["created_timestamp"]) > (
                out[k]["event_timestamp"], out[k]["created_timestamp"]):
            out[k] = row
    return out


def expected_values(e: Env, view: str, keys: list, until: dt.datetime | None = None) -> list[dict]:
    latest = latest_rows(e, view, until)
    key = e.features.join_key(view)
    names = e.features.feature_names(view)
    return [{key: k, **{n: (latest[k][n] if k in latest else None) for n in names}} for k in keys]


def all_keys(e: Env, view: str) -> list:
    return sorted(latest_rows(e, view))


def online(e: Env, view: str, keys: list) -> list[dict]:
    return OnlineReader(e.project, e.features).read(view, keys).to_pylist()


def feast_online(store, e: Env, view: str, keys: list) -> list[dict]:
    """The same values through Feast's own get_online_features, as rows."""
    key = e.features.join_key(view)
    names = e.features.feature_names(view)
    got = store.get_online_features(features=[f"{view}:{n}" for n in names],
                                    entity_rows=[{key: k} for k in keys]).to_dict()
    return [{key: got[key][i], **{n: got[n][i] for n in names}} for i in range(len(keys))]


def offline_tables(e: Env) -> dict[str, pa.Table]:
    """Every view's offline table without created_timestamp (the only column a rebuild may change)."""
    return {v: offline.read_view(e.project.offline, v).drop_columns(["created_timestamp"]) for v in VIEWS}


def assert_same_tables(got: dict[str, pa.Table], want: dict[str, pa.Table]) -> None:
    for view in VIEWS:
        assert got[view].schema == want[view].schema, view
        assert got[view].to_pylist() == want[view].to_pylist(), view


def by_view(reports: list, field: str = "written") -> dict[str, int]:
    return {r.view: getattr(r, field) for r in reports}


# -- CLI ---------------------------------------------------------------------------------------------

def cli(args: list[str], e_root: Path, state: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    full.update(MILLRACE_STATE_DIR=str(state), COLUMNS="200", **env)
    return subprocess.run([sys.executable, "-m", "millrace.pipelines.cli", "--project", str(e_root), *args],
                          capture_output=True, text=True, env=full, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    shown = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    assert proc.returncode != 0, shown
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, shown
    for needle in needles:
        assert needle in lines[0], shown
    return lines[0]


def feast_cli(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    return subprocess.run([sys.executable, "-m", "feast.cli.cli", "-c", str(repo), *args],
                          capture_output=True, text=True, env=env, timeout=300)


# -- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Built, applied and materialized once (SQLite online store, file registry); never modified after."""
    with pytest.MonkeyPatch.context() as mp:
        e = make_state(mp, tmp_path_factory.mktemp("base"))
        store = feast_repo.apply(e.project, e.features)
        reports = materialize(e.project, e.features, store=store)
    return e, store, reports


@pytest.fixture
def fresh(base, tmp_path, monkeypatch) -> Env:
    """A private copy of the base lake and offline tables, applied but not materialized."""
    e = clone_state(monkeypatch, base[0], tmp_path / "fresh")
    feast_repo.apply(e.project, e.features)
    return e


UNREACHABLE_REDIS = "redis://127.0.0.1:6390/0"  # nothing listens there


@pytest.fixture(scope="module")
def background(base, tmp_path_factory):
    """The slow subprocesses (stock feast CLI, millrace CLI errors, Redis connection retries), each on
    its own state folder, started together by the module's first test; the tests below wait for them."""
    e = base[0]
    root = tmp_path_factory.mktemp("background")
    spine = root / "spine.parquet"
    pq.write_table(pa.table({"userId": pa.array([1, 2], pa.int64()),
                             "event_timestamp": pa.array([dt.datetime(2021, 4, 3, tzinfo=UTC)] * 2,
                                                         pa.timestamp("us", tz="UTC")),
                             "label": [1.0, 0.0]}), spine)
    with pytest.MonkeyPatch.context() as mp:
        feast_env = clone_state(mp, e, root / "feast-cli")
        materialize(feast_env.project, feast_env.features, store=feast_repo.apply(feast_env.project, feast_env.features))
        unbuilt = clone_state(mp, e, root / "unbuilt", parts=("landing", "lake")).state
        late = clone_state(mp, e, root / "redis-late")
        feast_repo.apply(late.project, late.features)
        early = clone_state(mp, e, root / "redis-early", MILLRACE_ONLINE_STORE=UNREACHABLE_REDIS)
        feast_repo.apply(early.project, early.features)
        assert "6390" in (early.state / "feast" / "feature_store.yaml").read_text()

    def feast_round_trip():
        repo = feast_env.state / "feast"
        return feast_env, (feast_cli(repo, "apply"), feast_cli(repo, "feature-views", "list"))

    def training_set(ref):
        output = root / f"out-{ref.replace(':', '-')}.parquet"
        return cli(["features", "training-set", "--spine", str(spine), "-f", ref, "--output", str(output)],
                   e.root, e.state), output

    jobs = {
        "feast_cli": feast_round_trip,  # first: the longest chain (two feast CLI runs)
        "redis_set_at_build": lambda: cli(["features", "materialize"], e.root, early.state,
                                          MILLRACE_ONLINE_STORE=UNREACHABLE_REDIS),
        "redis_set_at_materialize": lambda: cli(["features", "materialize"], e.root, late.state,
                                                MILLRACE_ONLINE_STORE=UNREACHABLE_REDIS),
        "materialize_unbuilt": lambda: cli(["features", "materialize"], e.root, unbuilt),
        "get_unknown": lambda: cli(["features", "get", "nope", "1"], e.root, e.state),
        "training_set_nope:rating_count_all": lambda: training_set("nope:rating_count_all"),
        "training_set_nope": lambda: training_set("nope"),
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {name: pool.submit(job) for name, job in jobs.items()}


# -- Feast round trip -------------------------------------------------------------------------------

@pytest.mark.slow
def test_first_materialize_writes_every_entity(base, background):  # background: start the slow jobs now
    e, _, reports = base
    assert set(by_view(reports)) == set(VIEWS)
    for r in reports:
        assert r.written == r.entities == len(all_keys(e, r.view)) > 0, r
        assert r.skipped_unchanged == 0 and not r.refilled, r


def test_online_values_equal_latest_offline_row(base):
    e, store, _ = base
    for view in VIEWS:
        keys = all_keys(e, view) + [424242]  # and one key nobody has
        want = expected_values(e, view, keys)
        assert online(e, view, keys) == want, view
        assert feast_online(store, e, view, keys) == want, view
    # the movie that nobody rated has catalogue features but no popularity
    assert 11 in all_keys(e, "movie_metadata")
    assert online(e, "movie_metadata", [11])[0]["genre_list"] == ["(no genres listed)"]


def test_online_reader_keeps_key_order_and_feature_subset(base):
    e, _, _ = base
    keys = list(reversed(all_keys(e, "user_activity")))
    table = OnlineReader(e.project, e.features).read("user_activity", pa.array(keys), ["last_rating", "recent_movies"])
    assert table.column_names == ["userId", "last_rating", "recent_movies"]
    assert table.schema.field("recent_movies").type == pa.list_(pa.int64())
    want = expected_values(e, "user_activity", keys)
    assert table.to_pylist() == [{k: w[k] for k in table.column_names} for w in want]


@pytest.mark.slow
def test_stock_feast_cli_lists_and_applies_the_generated_repo(background):
    e, (applied, listed) = background["feast_cli"].result()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines() if line.strip()]
    assert rows[0][0] == "NAME", listed.stdout
    assert {r[0] for r in rows[1:]} == set(VIEWS), listed.stdout
    # a stock `feast apply` on the repository keeps what materialize wrote
    for view in VIEWS:
        keys = all_keys(e, view)
        assert online(e, view, keys) == expected_values(e, view, keys), view


# -- incremental and idempotent materialize ---------------------------------------------------------

def test_second_materialize_writes_nothing(base):
    e, store, _ = base
    reports = materialize(e.project, e.features, store=store)
    assert by_view(reports) == {v: 0 for v in VIEWS}
    assert by_view(reports, "skipped_unchanged") == {v: len(all_keys(e, v)) for v in VIEWS}


def _spy_writes(monkeypatch) -> dict[str, list]:
    """Record the entity keys each online write receives, per view."""
    from millrace.features.online_write import OnlineWriter

    original = OnlineWriter.write
    seen: dict[str, list] = {}

    def spy(self, view, table):
        seen.setdefault(view, []).extend(table.column(self.features.join_key(view)).to_pylist())
        return original(self, view, table)

    monkeypatch.setattr(OnlineWriter, "write", spy)
    return seen


def test_new_events_for_one_user_write_only_the_changed_entities(fresh, monkeypatch):
    e = fresh
    assert by_view(materialize(e.project, e.features)) == {v: len(all_keys(e, v)) for v in VIEWS}
    before = {v: {k: r["event_timestamp"] for k, r in latest_rows(e, v).items()} for v in VIEWS}

    write_ratings(e.state, NEW_DAY, NEW_EVENTS)
    ingest_all(e.project)
    build(e.project, e.features)
    after = {v: {k: r["event_timestamp"] for k, r in latest_rows(e, v).items()} for v in VIEWS}
    changed = {v: sorted(k for k, ts in after[v].items() if before[v].get(k) != ts) for v in VIEWS}
    assert changed == {"user_activity": [1], "user_genres": [1], "movie_popularity": [7, 8], "movie_metadata": []}

    store = feast_repo.feature_store(e.project)
    seen = _spy_writes(monkeypatch)
    reports = materialize(e.project, e.features, store=store)
    assert by_view(reports) == {v: len(changed[v]) for v in VIEWS}
    assert {v: sorted(seen.get(v, [])) for v in VIEWS} == changed
    for view in VIEWS:
        keys = all_keys(e, view)
        assert online(e, view, keys) == expected_values(e, view, keys), view
    user_one = online(e, "user_activity", [1])[0]
    assert user_one["rating_count_all"] == len(USER_ONE_MOVIES) + len(NEW_EVENTS)
    assert user_one["recent_movies"][:2] == [8, 7]
    assert by_view(materialize(e.project, e.features)) == {v: 0 for v in VIEWS}


def test_until_past_then_now_then_past_never_goes_back(fresh):
    e = fresh
    past = dt.datetime.combine(DAYS[2] + dt.timedelta(days=1), dt.time(), UTC)  # end of 2021-03-29
    keys = {v: all_keys(e, v) for v in VIEWS}

    first = materialize(e.project, e.features, until=past)
    for view in VIEWS:
        assert online(e, view, keys[view]) == expected_values(e, view, keys[view], past), view
    assert by_view(first) == {v: len(latest_rows(e, v, past)) for v in VIEWS}

    materialize(e.project, e.features)
    newest = {v: expected_values(e, v, keys[v]) for v in VIEWS}
    assert newest["user_activity"] != expected_values(e, "user_activity", keys["user_activity"], past)
    for view in VIEWS:
        assert online(e, view, keys[view]) == newest[view], view

    again = materialize(e.project, e.features, until=past)
    assert by_view(again) == {v: 0 for v in VIEWS}
    for view in VIEWS:
        assert online(e, view, keys[view]) == newest[view], view


def test_until_after_a_past_run_still_never_goes_back(fresh):
    """past, now, past, then a later (still past) day: the store must keep the newest values, and a
    final run as of now has nothing left to write."""
    e = fresh
    past = dt.datetime.combine(DAYS[2] + dt.timedelta(days=1), dt.time(), UTC)
    later = dt.datetime.combine(DAYS[4] + dt.timedelta(days=1), dt.time(), UTC)  # end of 2021-04-01
    keys = {v: all_keys(e, v) for v in VIEWS}
    materialize(e.project, e.features, until=past)
    materialize(e.project, e.features)
    newest = {v: expected_values(e, v, keys[v]) for v in VIEWS}
    materialize(e.project, e.features, until=past)
    materialize(e.project, e.features, until=later)
    for view in VIEWS:
        assert online(e, view, keys[view]) == newest[view], f"{view}: a value went back in time"
    assert by_view(materialize(e.project, e.features)) == {v: 0 for v in VIEWS}


# -- feature builds -----------------------------------------------------------------------------------

def test_building_twice_gives_identical_offline_tables(base, tmp_path, monkeypatch):
    e = clone_state(monkeypatch, base[0], tmp_path / "twice", parts=("landing", "lake"))
    build(e.project, e.features)
    first = offline_tables(e)
    created = offline.read_view(e.project.offline, "user_activity").column("created_timestamp")
    build(e.project, e.features)
    assert_same_tables(offline_tables(e), first)
    assert offline.read_view(e.project.offline, "user_activity").column("created_timestamp") != created
    assert_same_tables(first, offline_tables(base[0]))  # and the same as the base's build


def test_ranged_builds_give_the_same_table_as_a_full_build(base, tmp_path, monkeypatch):
    full = offline_tables(base[0])
    e = clone_state(monkeypatch, base[0], tmp_path / "ranged", parts=("landing", "lake"))
    # piece by piece from nothing: up to a day, then a range across the month boundary, then the rest
    build(e.project, e.features, last=DAYS[1])
    assert offline_tables(e)["user_activity"].num_rows < full["user_activity"].num_rows
    build(e.project, e.features, first=DAYS[2], last=DAYS[4])
    build(e.project, e.features, first=DAYS[5])
    assert_same_tables(offline_tables(e), full)
    # a ranged rebuild over the middle days of a full table changes nothing
    build(e.project, e.features, first=DAYS[2], last=DAYS[4])
    assert_same_tables(offline_tables(e), full)
    manifest = offline.read_manifest(e.project.offline, "user_activity")
    assert manifest.range == (str(DAYS[2]), str(DAYS[4]))


# -- one-line errors from the CLI -----------------------------------------------------------------------

@pytest.mark.slow
def test_cli_materialize_with_nothing_built(background):
    assert_one_line_error(background["materialize_unbuilt"].result(), "features build")


@pytest.mark.slow
def test_cli_get_unknown_feature_view(background):
    assert_one_line_error(background["get_unknown"].result(), "unknown feature view 'nope'", "user_activity")


@pytest.mark.slow
@pytest.mark.parametrize("ref", ["nope:rating_count_all", "nope"])
def test_cli_training_set_unknown_feature_view(background, ref):
    proc, output = background[f"training_set_{ref}"].result()
    assert_one_line_error(proc, "nope")
    assert not output.exists()


@pytest.mark.slow
def test_cli_materialize_to_unreachable_redis_set_at_materialize(background):
    """Built and applied with the default store, then `features materialize` with
    MILLRACE_ONLINE_STORE pointing at a Redis that is down: the configured store is the target."""
    assert_one_line_error(background["redis_set_at_materialize"].result(), "6390")


@pytest.mark.slow
def test_cli_materialize_to_unreachable_redis_set_at_build(background):
    assert_one_line_error(background["redis_set_at_build"].result(), "6390")


def test_an_unchanged_repository_opens_the_registry_alone_and_records_the_interval(fresh, monkeypatch):
    e = fresh
    monkeypatch.setattr(feast_repo, "feature_store", lambda project: pytest.fail("FeatureStore built again"))
    materialize(e.project, e.features, store=feast_repo.applied(e.project, e.features))
    monkeypatch.undo()
    store = feast_repo.feature_store(e.project)
    for name in (n for n, v in e.features.views.items() if v.online):
        assert store.get_feature_view(name).materialization_intervals, name


def test_a_changed_or_lost_registry_is_applied_again(fresh, monkeypatch):
    e = fresh
    applies = []
    real_apply = feast_repo.apply
    monkeypatch.setattr(feast_repo, "apply", lambda *a: applies.append(1) or real_apply(*a))
    stamp = Path(e.project.state_dir) / "feast" / "applied.sha256"
    stamp.write_text("another repository")
    feast_repo.applied(e.project, e.features)
    os.remove(feast_repo.registry_path(e.project))
    store = feast_repo.applied(e.project, e.features)
    assert len(applies) == 2
    assert store.get_feature_view("user_activity").name == "user_activity"
    feast_repo.applied(e.project, e.features)
    assert len(applies) == 2  # applied and unchanged since


def test_feast_is_imported_without_torch_and_leaves_typeguard_as_it_was():
    code = ("import sys, typeguard; before = typeguard.typechecked\n"
            "from millrace.features.feast_repo import import_feast; import_feast()\n"
            "assert typeguard.typechecked is before, 'typeguard not restored'\n"
            "assert 'torch' not in sys.modules, 'torch imported with feast'\n"
            "from feast.torch_wrapper import get_torch; assert get_torch().__name__ == 'torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
