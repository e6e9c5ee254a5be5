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


BAD_SHAPES = [  # (models.yaml text, words the one line must contain)
    ("- a\n- b\n", "(top level): is a list, not a map"),
    ("just text\n", "(top level): is a string, not a map"),
    ("42\n", "(top level): is a int, not a map"),
    ("", "(top level): is empty"),
    ("models: [likes, stars]\n", "models: input should be a valid dictionary"),
    ("models: 3\n", "models: input should be a valid dictionary"),
    ("models:\n  likes: [1, 2]\n", "models.likes: input should be a valid dictionary"),
    ("models:\n  likes: null\n", "models.likes"),
    ("other: {}\n", "models: field required"),
]


@pytest.mark.parametrize("text, words", BAD_SHAPES, ids=[w.split(":")[0] + str(i) for i, (_, w) in enumerate(BAD_SHAPES)])
def test_wrong_yaml_shape_is_one_line(project_dir, text, words):
    from millrace.contracts.errors import MillraceError

    (project_dir / "models.yaml").write_text(text)
    project = load_project(project_dir)
    with pytest.raises(MillraceError) as exc:
        load_models(project, load_features(project))
    message = str(exc.value)
    assert "\n" not in message and "models.yaml" in message and "(fix:" in message and words in message, message
    assert exc.value.exit_code == 2


def _with_section(section: str, value):
    data = yaml.safe_load(yaml.safe_dump(TINY_MODELS))
    data["models"]["likes"][section] = value
    return yaml.safe_dump(data)


@pytest.mark.parametrize("section, value", [("label", [1]), ("hyperparameters", 5), ("gates", "strict"),
                                            ("quantization", ["dynamic"]), ("examples", None), ("split", 0.1)])
def test_a_section_of_the_wrong_shape_is_one_line(project_dir, section, value):
    (project_dir / "models.yaml").write_text(_with_section(section, value))
    project = load_project(project_dir)
    with pytest.raises(ModelSpecError) as exc:
        load_models(project, load_features(project))
    assert f"models.likes.{section}" in str(exc.value) and "\n" not in str(exc.value)


BAD_NAMES = ["../../../x", "a/b", "has space", "dotted.name", "1starts_with_digit", "", "x" * 64, "näme", 7]


@pytest.mark.parametrize("key", BAD_NAMES, ids=[str(k)[:12] for k in BAD_NAMES])
def test_model_names_are_checked_where_they_load(project_dir, key):
    """A model name becomes an MLflow experiment and an artifact folder: ``../../../x`` wrote its
    bundle outside the project before names were checked."""
    from millrace.contracts.errors import ContractError

    data = yaml.safe_load(yaml.safe_dump(TINY_MODELS))
    data["models"] = {key: data["models"]["likes"]}
    (project_dir / "models.yaml").write_text(yaml.safe_dump(data))
    project = load_project(project_dir)
    with pytest.raises(ContractError) as exc:
        load_models(project, load_features(project))
    assert f"models.{key}: {key!r} is not a valid name" in str(exc.value) and "(fix:" in str(exc.value)
    assert exc.value.exit_code == 2


def test_the_experiment_folder_stays_inside_the_artifact_root(tmp_path, monkeypatch):
    """The path check where files are written, behind the name check at load."""
    from millrace.contracts.errors import ContractError
    from millrace.training import registry

    class Client:
        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, *args, **kwargs):
            raise AssertionError("created an experiment outside the artifact root")

    class Project:
        name, state_dir = "../../..", str(tmp_path)

        class config:
            class mlflow:
                artifact_root = str(tmp_path / "artifacts")

    monkeypatch.delenv("MILLRACE_MLFLOW_ARTIFACTS", raising=False)
    with pytest.raises(ContractError, match="is outside"):
        registry.experiment_id(Client(), Project(), "x")


def test_request_inputs_are_checked(project_dir):
    def request(model, columns):
        return lambda m: m[model].update(request=columns)

    assert "has no field 'gate'" in _error(project_dir, request("likes", ["gate"]))
    assert "is the label" in _error(project_dir, request("likes", ["rating"]))
    assert "is timestamp" in _error(project_dir, request("likes", ["timestamp"]))
    assert "repeats a column" in _error(project_dir, request("likes", ["movieId", "movieId"]))
    assert "request inputs are for tabular models" in _error(project_dir, request("retrieval", ["movieId"]))
    models = _load(project_dir, request("likes", ["movieId"]))
    assert models.get("likes").request == ["movieId"]


def test_the_flights_domain_loads_with_derived_request_inputs_and_composite_views():
    from tests.domains.flights_data import PROJECT

    project = load_project(PROJECT)
    spec = load_models(project, load_features(project)).get("will_be_delayed")
    assert spec.request == ["carrier", "dep_hour", "distance"]  # dep_hour is derived: hour(dep_time)
