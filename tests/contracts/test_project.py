import shutil

import pytest

from millrace.contracts import loader
from millrace.contracts.errors import ContractError
from millrace.contracts.project import load_project
from tests.conftest import EXAMPLE

SOURCES = "sources:\n  ratings:\n    contract: contracts/ratings.yaml\n"


@pytest.fixture
def root(tmp_path):
    shutil.copytree(EXAMPLE / "contracts", tmp_path / "contracts")
    return tmp_path


def _refused(root, text: str) -> str:
    (root / "millrace.yaml").write_text(text)
    with pytest.raises(ContractError) as info:
        load_project(root)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(root / "millrace.yaml")), message
    assert "(fix: " in message, message
    return message


# (millrace.yaml text, what the one line must name)
BAD_PROJECTS = {
    "top level a list": ("- name: x\n", "(top level): is a list, where a mapping belongs"),
    "top level a scalar": ("just text\n", "(top level): is the text 'just text'"),
    "empty file": ("", "(top level): is empty"),
    "sources a list": ("name: x\nsources: [ratings]\n", "sources: is a list, where a mapping belongs"),
    "sources empty": ("name: x\nsources:\n", "sources: is empty, where a mapping belongs"),
    "storage a list": ("name: x\nstorage: [1]\n" + SOURCES, "storage: is a list, where a mapping belongs"),
    "storage a scalar": ("name: x\nstorage: 3\n" + SOURCES, "storage: is the number 3"),
    "pipeline a scalar": ("name: x\npipeline: fast\n" + SOURCES, "pipeline: is the text 'fast'"),
    "options a scalar": ("name: x\npipeline:\n  options: 5\n" + SOURCES, "pipeline.options: is the number 5, where a list"),
    "feature_store a list": ("name: x\nfeature_store: []\n" + SOURCES, "feature_store: is a list"),
    "mlflow a scalar": ("name: x\nmlflow: true\n" + SOURCES, "mlflow: is the boolean true"),
    "source a scalar": ("name: x\nsources:\n  ratings: contracts/ratings.yaml\n", "sources.ratings: is the text"),
    "source a list": ("name: x\nsources:\n  ratings: [contracts/ratings.yaml]\n", "sources.ratings: is a list"),
    "contract a list": ("name: x\nsources:\n  ratings:\n    contract: [a]\n", "sources.ratings.contract: is a list, where text"),
    "contract missing": ("name: x\nsources:\n  ratings: {}\n", "sources.ratings.contract: field required"),
    "unknown section": ("name: x\nstorrage: {}\n" + SOURCES, "storrage: extra inputs are not permitted"),
    "source key a number": ("name: x\nsources:\n  1: {contract: contracts/ratings.yaml}\n", "sources.1: is the number 1"),
    "source name with a dot": ("name: x\nsources:\n  rat.ings: {contract: contracts/ratings.yaml}\n",
                               "sources.rat.ings: 'rat.ings' is not a valid name"),
    "source name escapes": ("name: x\nsources:\n  ../../escape: {contract: contracts/ratings.yaml}\n",
                            "'../../escape' is not a valid name"),
    "source name with a space": ("name: x\nsources:\n  my source: {contract: contracts/ratings.yaml}\n",
                                 "'my source' is not a valid name"),
    "project name code": ("name: \"x'); import os #\"\n" + SOURCES, "name: \"x'); import os #\" is not a valid name"),
    "contract outside": ("name: x\nsources:\n  ratings: {contract: ../outside.yaml}\n",
                         "sources.ratings.contract: '../outside.yaml' is outside"),
    "contract absolute outside": ("name: x\nsources:\n  ratings: {contract: /etc/hostname}\n", "is outside"),
    "contract a folder": ("name: x\nsources:\n  ratings: {contract: contracts}\n",
                          "sources.ratings.contract: 'contracts' is not a file"),
    "contract absent": ("name: x\nsources:\n  ratings: {contract: contracts/nope.yaml}\n",
                        "sources.ratings.contract: file 'contracts/nope.yaml' does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROJECTS))
def test_bad_project_file_gets_one_line(root, case):
    text, expected = BAD_PROJECTS[case]
    message = _refused(root, text)
    assert expected in message, message


def test_contracts_are_parsed_once_per_project(root, monkeypatch):
    (root / "millrace.yaml").write_text("name: x\n" + SOURCES + "  movies:\n    contract: contracts/movies.yaml\n")
    project = load_project(root)
    calls = []
    real = loader.load_contract

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr("millrace.contracts.project.load_contract", counting)
    first = project.contract("ratings")
    for _ in range(5):
        assert project.contract("ratings") is first
        project.contract("movies")
    assert [p.name for p in calls] == ["ratings.yaml", "movies.yaml"]
    assert load_project(root).contract("ratings") == first  # a new Project parses again (a fresh read)


def test_unknown_source_names_the_known_ones(root):
    (root / "millrace.yaml").write_text("name: x\n" + SOURCES)
    with pytest.raises(ContractError, match="unknown source 'nope' .*use one of: ratings"):
        load_project(root).contract("nope")


def test_example_project_loads():
    project = load_project(EXAMPLE)
    assert project.sources == ["ratings", "movies"]
    assert project.contract("movies").event_time is None
