"""features.yaml that is wrong gets one line ``file: field: problem (fix: ...)`` (exit 2 from the CLI),
never a traceback; no name from it can become code in the generated Feast repository."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from millrace.contracts.errors import EXIT_BAD_INPUT, MillraceError, exit_code
from millrace.contracts.project import load_project
from millrace.features import feast_repo
from millrace.features.spec import load_features
from tests.conftest import EXAMPLE

MALICIOUS = "user[__import__('os').system('touch pwned')]"
EXAMPLE_SPEC = yaml.safe_load((EXAMPLE / "features.yaml").read_text())


def _write(project_dir: Path, spec) -> Path:
    path = project_dir / "features.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def _error(project_dir: Path, spec) -> tuple[Path, str]:
    path = _write(project_dir, spec)
    with pytest.raises(MillraceError) as info:
        load_features(load_project(project_dir))
    assert exit_code(info.value) == EXIT_BAD_INPUT
    return path, str(info.value)


def _assert_one_line(path: Path, message: str, field: str) -> None:
    assert "\n" not in message, message
    assert re.match(rf"^{re.escape(str(path))}: {re.escape(field)}[^:]*: .+ \(fix: .+\)$", message), message


def _edit(change) -> dict:
    spec = copy.deepcopy(EXAMPLE_SPEC)
    change(spec)
    return spec


def _agg(spec, view="user_activity", i=0, **values):
    spec["feature_views"][view]["aggregations"][i].update(values)


SHAPES = [  # (case, features.yaml, the field the line must name)
    ("top level is a list", "- entities\n- feature_views\n", "(top level)"),
    ("top level is a scalar", "just text\n", "(top level)"),
    ("entities is a list", _edit(lambda s: s.update(entities=["user", "movie"])), "entities"),
    ("feature_views is a scalar", _edit(lambda s: s.update(feature_views=3)), "feature_views"),
    ("an entity is a list", _edit(lambda s: s["entities"].update(user=["userId"])), "entities.user"),
    ("a view is a scalar", _edit(lambda s: s["feature_views"].update(user_activity="count")),
     "feature_views.user_activity"),
    ("a view is null", _edit(lambda s: s["feature_views"].update(user_activity=None)), "feature_views.user_activity"),
    ("aggregations is a map", _edit(lambda s: s["feature_views"]["user_activity"].update(aggregations={"a": 1})),
     "feature_views.user_activity.aggregations"),
    ("enrich is a list", _edit(lambda s: s["feature_views"]["user_genres"].update(enrich=["movies"])),
     "feature_views.user_genres.enrich"),
    ("a huge window", _edit(lambda s: _agg(s, window="99999999999999999999d")),
     "feature_views.user_activity.aggregations[0]"),
    ("a window over the limit", _edit(lambda s: _agg(s, window="36501d")), "feature_views.user_activity.aggregations[0]"),
    ("a huge ttl", _edit(lambda s: s["feature_views"]["user_activity"].update(ttl="999999999d")),
     "feature_views.user_activity.ttl"),
    ("a ttl that is a number", _edit(lambda s: s["feature_views"]["user_activity"].update(ttl=30)),
     "feature_views.user_activity.ttl"),
]


@pytest.mark.parametrize("case,spec,field", SHAPES, ids=[c[0] for c in SHAPES])
def test_bad_shapes_get_one_line(project_dir, case, spec, field):
    path, message = _error(project_dir, spec)
    _assert_one_line(path, message, field)


def _rename_entity(spec, new):
    spec["entities"][new] = spec["entities"].pop("user")
    for view in spec["feature_views"].values():
        if view["entity"] == "user":
            view["entity"] = new


def _rename_view(spec, new):
    spec["feature_views"][new] = spec["feature_views"].pop("user_activity")


NAMES = [  # (case, edit, the field the line must name)
    ("code in an entity name", lambda s: _rename_entity(s, MALICIOUS), f"entities.{MALICIOUS}"),
    ("a space in an entity name", lambda s: _rename_entity(s, "my user"), "entities.my user"),
    ("a space in a view name", lambda s: _rename_view(s, "user activity"), "feature_views.user activity"),
    ("a dot in a view name", lambda s: _rename_view(s, "user.activity"), "feature_views.user.activity"),
    ("a dot in a feature name", lambda s: _agg(s, name="count.30d"), "feature_views.user_activity.aggregations[0].name"),
    ("code in a transform name", lambda s: s["feature_views"]["movie_metadata"]["transforms"][0].update(
        name="x');import os;os.system('touch pwned')#"), "feature_views.movie_metadata.transforms[0].name"),
    ("a name starting with a digit", lambda s: _rename_view(s, "1views"), "feature_views.1views"),
]


@pytest.mark.parametrize("case,change,field", NAMES, ids=[c[0] for c in NAMES])
def test_bad_names_get_one_line(project_dir, case, change, field):
    path, message = _error(project_dir, _edit(change))
    _assert_one_line(path, message, field)
    assert "is not a valid name" in message


def test_the_malicious_name_through_the_cli_runs_nothing(project_dir, tmp_path):
    _write(project_dir, _edit(lambda s: _rename_entity(s, MALICIOUS)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env["MILLRACE_STATE_DIR"] = str(tmp_path / "state")
    proc = subprocess.run([sys.executable, "-m", "millrace.pipelines.cli", "--project", str(project_dir),
                           "features", "build"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert len(lines) == 1 and "is not a valid name" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not list(tmp_path.rglob("pwned")) and not Path("pwned").exists()


def test_the_generated_repo_holds_no_user_string_as_code(project_dir, tmp_path, monkeypatch):
    """Even with the name check switched off, names and descriptions stay data: repo.py is fixed
    text, the definitions it builds carry the strings verbatim, and nothing runs."""
    import millrace.features.spec as spec_module

    monkeypatch.setattr(spec_module, "check_name", lambda value, file, field: value)
    monkeypatch.chdir(tmp_path)
    spec = _edit(lambda s: _rename_entity(s, MALICIOUS))
    spec["entities"]["movie"]["description"] = "\"\"\"); __import__('os').system('touch pwned') #"
    _write(project_dir, spec)
    project = load_project(project_dir)
    features = load_features(project)
    folder = Path(feast_repo.write_repo(project, features))
    assert (folder / "repo.py").read_text() == feast_repo.REPO_PY
    assert MALICIOUS not in (folder / "repo.py").read_text()
    objects = feast_repo.definitions(project)
    names = {o.name for o in objects}
    assert MALICIOUS in names
    assert {o.description for o in objects if o.name == "movie"} == {spec["entities"]["movie"]["description"]}
    assert not list(tmp_path.rglob("pwned"))


def test_a_feature_of_a_type_the_online_store_cannot_hold(tmp_path):
    import shutil

    from tests.features.typed_state import TYPED

    root = tmp_path / "typed"
    shutil.copytree(TYPED, root)
    spec = yaml.safe_load((root / "features.yaml").read_text())
    spec["feature_views"]["user_typed"]["aggregations"].append({"name": "day_last", "function": "last", "column": "day"})
    path, message = _error(root, spec)
    _assert_one_line(path, message, "feature_views.user_typed.aggregations[4] (day_last)")
    assert "date32" in message and "cannot hold" in message
