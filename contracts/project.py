"""The project file ``millrace.yaml``: storage URIs, sources and runner settings.

Loaded once at the entry point into frozen models. Every storage URI can be
overridden by an environment variable (``MILLRACE_STATE_DIR``, ``MILLRACE_LANDING_URI``,
``MILLRACE_LAKE_URI``, ``MILLRACE_QUARANTINE_URI``) so one project runs unchanged on a
laptop and against object stores.
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from millrace.contracts.errors import ContractError
from millrace.contracts.loader import load_contract, read_yaml
from millrace.contracts.model import Contract
from millrace.contracts.names import check_inside, check_name
from millrace.contracts.values import describe

# Every environment variable millrace reads, in one place (tests clear them all).
ENV_VARS = (
    "MILLRACE_PROJECT",            # default --project
    "MILLRACE_STATE_DIR",          # storage.state_dir
    "MILLRACE_LANDING_URI",        # storage.landing
    "MILLRACE_LAKE_URI",           # storage.lake
    "MILLRACE_QUARANTINE_URI",     # storage.quarantine
    "MILLRACE_OFFLINE_URI",        # the offline store
    "MILLRACE_ONLINE_STORE",       # feature_store.online_store
    "MILLRACE_REGISTRY",           # feature_store.registry
    "MILLRACE_TTL_CLOCK",          # feature_store.ttl_clock
    "MILLRACE_MLFLOW_URI",         # mlflow.tracking_uri
    "MILLRACE_MLFLOW_ARTIFACTS",   # mlflow.artifact_root
    "MILLRACE_USER",               # who promoted or rolled back a model (default: the login name)
    "MILLRACE_KILL_AT",            # tests only: the named crash point to die at (contracts/faults.py)
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceConfig(_Frozen):
    contract: str = Field(description="Path of the ODCS contract file, relative to the project folder.")
    description: str = Field("", description="What the source is, for humans.")


class StorageConfig(_Frozen):
    state_dir: str = Field(".millrace", description="Where embedded state lives (relative to the project folder unless absolute).")
    landing: str | None = Field(None, description="Landing zone URI; default <state_dir>/landing. Files go under <landing>/<source>/<YYYY-MM-DD>/.")
    lake: str | None = Field(None, description="Lake URI; default <state_dir>/lake.")
    quarantine: str | None = Field(None, description="Quarantine URI; default <state_dir>/quarantine.")


class PipelineConfig(_Frozen):
    runner: str = Field("DirectRunner", description="Default Beam runner; --runner on the command line wins.")
    options: list[str] = Field(default_factory=list, description="Extra Beam pipeline options, e.g. ['--direct_num_workers=2'].")


class FeatureStoreConfig(_Frozen):
    online_store: str = Field("sqlite", description="'sqlite' (a file under the state dir) or a Redis URL, "
                                                    "e.g. redis://127.0.0.1:6379/0. Env: MILLRACE_ONLINE_STORE.")
    registry: str = Field("file", description="'file' (a registry file under the state dir) or a SQLAlchemy "
                                              "URL for Feast's SQL registry, e.g. postgresql+psycopg://postgres@"
                                              "127.0.0.1:5432/test. Env: MILLRACE_REGISTRY.")
    ttl_clock: Literal["wall", "data"] = Field(
        "wall", description="What online reads measure a view's ttl against: 'wall', the current time; "
                            "'data', the newest event time materialized for the view (a replay of "
                            "historical data, such as the bundled example). Env: MILLRACE_TTL_CLOCK.")


class MlflowConfig(_Frozen):
    tracking_uri: str | None = Field(None, description="MLflow tracking and registry store; default "
                                     "sqlite:///<state_dir>/mlflow.db. E.g. postgresql+psycopg://postgres@"
                                     "127.0.0.1:5432/test. Env: MILLRACE_MLFLOW_URI.")
    artifact_root: str | None = Field(None, description="Where run artifacts go; default <state_dir>/mlartifacts. "
                                      "Env: MILLRACE_MLFLOW_ARTIFACTS.")


class ProjectConfig(_Frozen):
    name: str = Field(description="Project name, used in run ids and reports.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where data lives.")
    sources: dict[str, SourceConfig] = Field(description="Sources by name; each has one contract.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Beam settings.")
    feature_store: FeatureStoreConfig = Field(default_factory=FeatureStoreConfig,
                                              description="Feast online store and registry.")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description="Model tracking and registry.")


class Project:
    """A loaded project folder: its config plus resolved locations and contracts."""

    def __init__(self, root: Path, config: ProjectConfig):
        self.root, self.config = root, config
        self._contracts: dict[str, Contract] = {}

    @property
    def name(self) -> str:
        return self.config.name

    @cached_property
    def state_dir(self) -> str:
        return _resolve(self.root, os.environ.get("MILLRACE_STATE_DIR") or self.config.storage.state_dir)

    def _uri(self, env: str, configured: str | None, default: str) -> str:
        return _resolve(self.root, os.environ.get(env) or configured or os.path.join(self.state_dir, default))

    @cached_property
    def landing(self) -> str:
        return self._uri("MILLRACE_LANDING_URI", self.config.storage.landing, "landing")

    @cached_property
    def lake(self) -> str:
        return self._uri("MILLRACE_LAKE_URI", self.config.storage.lake, "lake")

    @cached_property
    def quarantine(self) -> str:
        return self._uri("MILLRACE_QUARANTINE_URI", self.config.storage.quarantine, "quarantine")

    @cached_property
    def offline(self) -> str:
        return self._uri("MILLRACE_OFFLINE_URI", None, "offline")

    @property
    def online_store(self) -> str:
        return os.environ.get("MILLRACE_ONLINE_STORE") or self.config.feature_store.online_store

    @property
    def registry(self) -> str:
        return os.environ.get("MILLRACE_REGISTRY") or self.config.feature_store.registry

    @property
    def ttl_clock(self) -> str:
        """'wall' or 'data' (FeatureStoreConfig.ttl_clock); a wrong MILLRACE_TTL_CLOCK is bad input."""
        value = os.environ.get("MILLRACE_TTL_CLOCK") or self.config.feature_store.ttl_clock
        if value not in ("wall", "data"):
            raise ContractError(self.root / "millrace.yaml", "MILLRACE_TTL_CLOCK", f"'{value}' is neither 'wall' "
                                "nor 'data'", "set it to wall (the current time) or data (the newest event)")
        return value

    def contract(self, source: str) -> Contract:
        """The compiled contract of ``source``, parsed once per Project (every stage asks for it)."""
        if source not in self._contracts:
            if source not in self.config.sources:
                known = ", ".join(sorted(self.config.sources))
                raise ContractError(self.root / "millrace.yaml", "sources", f"unknown source '{source}'",
                                    f"use one of: {known}")
            self._contracts[source] = load_contract(self.root / self.config.sources[source].contract)
        return self._contracts[source]

    @property
    def sources(self) -> list[str]:
        return list(self.config.sources)


def _resolve(root: Path, location: str) -> str:
    if "://" in location or os.path.isabs(location):
        return location
    return str((root / location).resolve())


def load_project(directory: str | Path) -> Project:
    """Read and check ``<directory>/millrace.yaml``: its shape, every source name and contract path.

    Contracts themselves are compiled on first use (``Project.contract``), once per Project.
    """
    root = Path(directory).resolve()
    path = root / "millrace.yaml"
    if not root.is_dir():
        raise ContractError(root, "--project", "is not a folder", "pass a project folder that holds millrace.yaml")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ContractError(path, "(top level)", f"is {describe(data)}, where a mapping belongs",
                            _SHAPE_FIX)
    try:
        config = ProjectConfig(**{str(k): v for k, v in data.items()})
    except ValidationError as exc:
        raise _config_error(path, exc) from None
    check_name(config.name, path, "name")
    for name, source in config.sources.items():
        check_name(name, path, f"sources.{name}")
        field = f"sources.{name}.contract"
        resolved = check_inside(root, source.contract, path, field)
        if not resolved.exists():
            raise ContractError(path, field, f"file '{source.contract}' does not exist",
                                "point it at an ODCS contract file in the project folder")
        if not resolved.is_file():
            raise ContractError(path, field, f"'{source.contract}' is not a file",
                                "point it at an ODCS contract file, not a folder")
    return Project(root, config)


# Neutral: the project at hand may be any domain, so point at the reference, not at the example.
_SHAPE_FIX = "see \"A project folder\" in the README for the fields of millrace.yaml"

_EXPECTED = {"dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
             "list_type": "a list", "string_type": "text", "bool_type": "true or false"}


def _config_error(path: Path, exc: ValidationError) -> ContractError:
    """The first pydantic error as one line: where, what was found, what belongs there."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p != "[key]") or "(top level)"
    expected = _EXPECTED.get(first["type"])
    if expected:
        problem = f"is {describe(first.get('input'))}, where {expected} belongs"
    else:
        problem = " ".join(first["msg"].lower().split())
    return ContractError(path, loc, problem, _SHAPE_FIX)
