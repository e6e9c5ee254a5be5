"""Releases on the tiny trained project: create, list, show (verify) and rollback; only champions
with a passing, bound index; a damaged release never becomes current; the pointer moves in one
step, and a kill between the release folder and the pointer leaves the old release current."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from millrace.contracts.errors import MillraceError, exit_code
from millrace.indexing import release as releases
from millrace.indexing.errors import EncoderMismatch, ReleaseError, ReleaseRefused
from millrace.pipelines import index as pipeline_index
from millrace.pipelines import release as pipeline_release
from millrace.training import registry


def _index(tiny, version=None):
    return pipeline_index.index_model(tiny.project, tiny.features, tiny.models(), "retrieval", tiny.ratings,
                                      "timestamp", version=version)


def _root(tiny):
    return pipeline_release.release_root(tiny.project)


def test_create_list_show_and_rollback(tiny_trained):
    built = _index(tiny_trained)
    first = pipeline_release.create(tiny_trained.project)
    root = _root(tiny_trained)
    assert releases.current(root).release == first.id
    assert {n: (m.version, m.role) for n, m in first.models.items()} == \
        {"retrieval": ("1", "retrieval"), "likes": ("1", "ranking"), "stars": ("1", "ranking")}
    assert first.indexes["retrieval"].build_id == built.manifest.build_id
    assert {"user_activity", "movie_metadata"} <= set(first.feature_views)
    assert first.contracts["ratings"].version and first.git_sha
    checked = releases.verify(root)
    assert checked.release == first and checked.indexes["retrieval"].index.ntotal == 60
    assert set(os.listdir(checked.folder)) == {"release.json", "models", "indexes"}  # self-contained

    second = pipeline_release.create(tiny_trained.project, ["retrieval"])
    assert releases.ids(root) == [first.id, second.id] and releases.current(root).release == second.id
    assert pipeline_release.rollback(tiny_trained.project).release == first.id
    assert releases.current(root).release == first.id
    with pytest.raises(ReleaseError, match="first one"):
        pipeline_release.rollback(tiny_trained.project)
    assert pipeline_release.rollback(tiny_trained.project, second.id).release == second.id
    with pytest.raises(ReleaseError, match="already current"):
        pipeline_release.rollback(tiny_trained.project, second.id)
    moves = [(h["release"], h["reason"].split(":")[0].split(" ")[0]) for h in releases.history(root)]
    assert moves == [(first.id, "created"), (second.id, "created"), (first.id, "rollback"), (second.id, "rollback")]


def test_only_a_champion_with_a_passing_index_can_be_released(tiny_trained):
    with pytest.raises(ReleaseRefused) as err:  # no index yet
        pipeline_release.create(tiny_trained.project, ["retrieval"])
    assert "no index that passed its recall gate" in str(err.value) and "millrace index --model retrieval" in str(err.value)
    _index(tiny_trained)
    client = registry.connect(tiny_trained.project)
    client.delete_registered_model_alias("movielens.likes", registry.CHAMPION)
    with pytest.raises(ReleaseRefused) as err:
        pipeline_release.create(tiny_trained.project, ["retrieval", "likes"])
    assert "movielens.likes has no champion" in str(err.value) and exit_code(err.value) == 2
    assert releases.ids(_root(tiny_trained)) == []  # refused before anything was written

    tiny_trained.train("retrieval", force=True)  # v2 becomes champion; the only index is v1's
    assert registry.alias_target(client, "movielens.retrieval", registry.CHAMPION) == "2"
    with pytest.raises(ReleaseRefused, match="version 2 \\(champion\\) has no index"):
        pipeline_release.create(tiny_trained.project, ["retrieval"])
    _index(tiny_trained, version="2")
    assert pipeline_release.create(tiny_trained.project, ["retrieval"]).models["retrieval"].version == "2"


def test_an_index_bound_to_another_encoder_is_refused_at_create(tiny_trained):
    built = _index(tiny_trained)
    tiny_trained.train("retrieval", force=True)
    # an index of v1 moved under v2's folder (a copy by hand): the binding, not the folder, decides
    target = os.path.join(pipeline_index.index_root(tiny_trained.project), "movielens.retrieval", "v2")
    os.makedirs(target)
    os.rename(built.folder, os.path.join(target, os.path.basename(built.folder)))
    with pytest.raises(EncoderMismatch, match="built from movielens.retrieval version 1"):
        pipeline_release.create(tiny_trained.project, ["retrieval"])


def test_a_damaged_release_is_refused_and_the_pointer_stays(tiny_trained):
    _index(tiny_trained)
    first = pipeline_release.create(tiny_trained.project, ["retrieval"])
    second = pipeline_release.create(tiny_trained.project, ["retrieval"])
    root = _root(tiny_trained)
    onnx = os.path.join(root, first.id, "models", "retrieval", "user_encoder.int8.onnx")
    data = bytearray(open(onnx, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(onnx, "wb").write(bytes(data))
    with pytest.raises(MillraceError, match="SHA-256 does not match"):
        pipeline_release.rollback(tiny_trained.project)
    assert releases.current(root).release == second.id
    index_file = os.path.join(root, second.id, "indexes", "retrieval", "index.faiss")
    os.remove(index_file)  # hard-linked: the build folder keeps its own
    with pytest.raises(MillraceError, match="index.faiss"):
        releases.verify(root)
    pointer = os.path.join(root, "CURRENT")
    with open(pointer, "w") as f:
        f.write('{"release": "r1"')
    with pytest.raises(ReleaseError) as err:
        releases.current(root)
    assert "CURRENT" in str(err.value) and "\n" not in str(err.value)


def test_a_release_document_changed_after_release_is_not_served(tiny_trained):
    _index(tiny_trained)
    made = pipeline_release.create(tiny_trained.project, ["retrieval"])
    path = os.path.join(_root(tiny_trained), made.id, "release.json")
    data = json.loads(open(path).read())
    data["models"]["retrieval"]["version"] = "7"
    open(path, "w").write(json.dumps(data))
    with pytest.raises(ReleaseError, match="changed since it was released"):
        releases.verify(_root(tiny_trained))


@pytest.mark.parametrize("point", ["after_release_written", "after_pointer_swap"])
def test_a_kill_around_the_pointer_leaves_one_whole_release_current(tiny_trained, point):
    _index(tiny_trained)
    first = pipeline_release.create(tiny_trained.project, ["retrieval"])
    script = ("from millrace.contracts.project import load_project\n"
              "from millrace.pipelines.release import create\n"
              f"create(load_project({str(tiny_trained.root)!r}), ['retrieval'])\n")
    env = {**os.environ, "MILLRACE_KILL_AT": point}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    root = _root(tiny_trained)
    expected = first.id if point == "after_release_written" else releases.ids(root)[-1]
    assert releases.current(root).release == expected
    assert releases.verify(root).release.id == expected
    assert not [n for n in os.listdir(root) if n.startswith(".tmp")]
