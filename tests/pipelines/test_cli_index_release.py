"""`millrace index` and `millrace release` end to end on the example, as a user runs them after
the nightly (the session's one nightly run; tests that change state use a copy)."""
from __future__ import annotations

import json
import os

import pytest

from tests.pipelines.test_cli import run

pytestmark = pytest.mark.slow


def test_the_nightly_ends_with_an_index_and_a_current_release(nightly_run):
    out = nightly_run.stdout
    assert "movielens.movie_retrieval version 1: Flat index of" in out
    assert "release r0001-" in out and "is current: movie_retrieval v1, will_like v1" in out
    assert out.strip().splitlines()[-1].endswith("current (millrace release show)")
    proc = run(["release", "show", "--json"], nightly_run.state)
    shown = json.loads(proc.stdout)
    release = shown["release"]
    assert shown["current"] and shown["verified"]
    assert {m: r["version"] for m, r in release["models"].items()} == {"movie_retrieval": "1", "will_like": "1"}
    index = release["indexes"]["movie_retrieval"]
    assert index["factory"] == "Flat" and index["items"] >= 9_066 and index["recall"] >= 0.95
    assert set(release["feature_views"]) == {"user_activity", "user_genres", "movie_popularity", "movie_metadata"}
    assert all(v["online_store"] for v in release["feature_views"].values())  # materialized from these builds
    assert set(release["contracts"]) == {"ratings", "movies"}


def test_index_release_list_show_and_rollback(nightly_copy):
    state, env = nightly_copy.state, nightly_copy.env
    built = json.loads(run(["index", "--model", "movie_retrieval", "--json"], state, **env).stdout)
    manifest = built["manifest"]
    assert built["version"] == "1" and manifest["encoder"]["variant"] == "int8"
    assert manifest["recall"]["achieved"] >= 0.95 and manifest["metric"] in ("inner_product", "cosine")
    assert os.path.isfile(os.path.join(built["folder"], "index.faiss"))
    made = run(["release", "create"], state, **env).stdout
    assert made.startswith("release r0002-") and "(current)" in made.splitlines()[0]
    listed = json.loads(run(["release", "list", "--json"], state, **env).stdout)
    assert [r["current"] for r in listed] == [False, True]
    text = run(["release", "list"], state, **env).stdout
    assert text.splitlines()[1].startswith("* r0002-")
    back = run(["release", "rollback"], state, **env).stdout
    assert back.startswith(f"release {listed[0]['id']} is current")
    shown = run(["release", "show"], state, **env).stdout
    assert shown.startswith(f"release {listed[0]['id']} (current)") and "verified" in shown
    again = run(["release", "rollback", "--to", listed[1]["id"]], state, **env).stdout
    assert listed[1]["id"] in again


@pytest.mark.parametrize("args, expected", [
    (["index", "--model", "will_like"], "has no item encoder"),
    (["index", "--model", "nope"], "unknown model 'nope'"),
    (["index", "--model", "movie_retrieval", "--version", "7"], "no version 7"),
    (["index", "--model", "movie_retrieval", "--version", "1", "--alias", "champion"], "give one of them"),
    (["release", "show", "r9999"], "no release 'r9999'"),
    (["release", "show", "../etc"], "not a release id"),
    (["release", "rollback"], "first one"),
])
def test_bad_input_is_one_line_and_exit_2(nightly_run, args, expected):
    proc = run(args, nightly_run.state, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and "fix" in lines[0], proc.stderr


def test_a_corrupt_index_is_one_line_and_exit_2(nightly_copy):
    state, env = nightly_copy.state, nightly_copy.env
    releases = state / "releases"
    current = json.loads((releases / "CURRENT").read_text())["release"]
    index_file = releases / current / "indexes" / "movie_retrieval" / "index.faiss"
    data = bytearray(index_file.read_bytes())
    index_file.unlink()  # a hard link: break it, so the build folder keeps its good copy
    index_file.write_bytes(bytes(data[: len(data) // 2]))
    proc = run(["release", "show"], state, check=False, **env)
    assert proc.returncode == 2 and "index.faiss" in proc.stderr and "truncated" in proc.stderr, proc.stderr
