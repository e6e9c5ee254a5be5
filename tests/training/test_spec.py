"""models.yaml is checked against the contracts and features.yaml before any data is read."""
from __future__ import annotations

import pytest
import yaml

from millrace.features.spec import load_features
from millrace.contracts.project import load_project
from millrace.training.errors import ModelSpecError, UnknownModel
from millrace.training.spec import load_models
from tests.training.conftest import TINY_MODELS


def _load(project_dir, edit):
    data = yaml.safe_load(yaml.safe_dump(TINY_MODELS))
    edit(data["models"])
    (project_dir / "models.yaml").write_text(yaml.safe_dump(data))
    project = load_project(project_dir)
    return load_models(project, load_features(project))


def _error(project_dir, edit) -> str:
    with pytest.raises(ModelSpecError) as exc:
        _load(project_dir, edit)
    message = str(exc.value)
    assert "\n" not in message and "models.yaml" in message and "(fix:" in message
    return message


def test_the_example_models_load():
    from tests.conftest import EXAMPLE

    project = load_project(EXAMPLE)
    models = load_models(project, load_features(project))
    assert {"movie_retrieval", "will_like"} <= set(models.names)
    assert {models.get(n).family for n in models.names} == {"two_tower", "tabular"}


def test_unknown_feature_reference(project_dir):
    msg = _error(project_dir, lambda m: m["likes"]["features"].append("user_activity:nope"))
    assert "models.likes.features" in msg and "nope" in msg and "rating_count_all" in msg
    msg = _error(project_dir, lambda m: m["retrieval"]["item"]["features"].append("no_such_view"))
    assert "models.retrieval.item.features" in msg and "no_such_view" in msg


def test_missing_label(project_dir):
    msg = _error(project_dir, lambda m: m["likes"]["label"].update(column="stars"))
    assert "models.likes.label.column" in msg and "'stars'" in msg
    msg = _error(project_dir, lambda m: m["likes"].pop("label"))
    assert "models.likes.label" in msg


def test_shape_errors(project_dir):
    assert "needs a user and an item tower" in _error(project_dir, lambda m: m["retrieval"].pop("item"))
    assert "unknown source" in _error(project_dir, lambda m: m["likes"]["examples"].update(source="clicks"))
    assert "op and value" in _error(project_dir, lambda m: m["likes"]["label"].pop("op"))
    assert "not a metric" in _error(project_dir, lambda m: m["likes"]["gates"].update(primary="recall_at_10"))
    assert "joins on 'movieId'" in _error(
        project_dir, lambda m: m["retrieval"]["user"]["features"].append("movie_popularity:popularity_30d"))
    assert "not a list of item keys" in _error(
        project_dir, lambda m: m["retrieval"]["user"].update(history="user_activity:rating_count_all"))
    assert "epochs" in _error(project_dir, lambda m: m["likes"]["hyperparameters"].update(epochs=0))


def test_unknown_model_name(project_dir):
    models = _load(project_dir, lambda m: None)
    with pytest.raises(UnknownModel, match="use one of"):
        models.get("nope")
