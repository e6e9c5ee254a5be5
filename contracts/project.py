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
    "MILLRACE_STREAM_REDIS",       # streaming.redis
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


class BatchingConfig(_Frozen):
    max_batch_size: int = Field(32, ge=1, description="Most requests one model run answers together.")
    max_queue_delay_ms: float = Field(0.0, ge=0, description="How long a queued request waits for company before "
                                                             "it runs (0: run what queued while the model was "
                                                             "busy; a lone request on an idle model never waits).")
    parallel_runs: int = Field(1, ge=1, description="Runs of one model at once (a core each with "
                                                    "serving.onnx_threads 1); requests beyond them queue and batch.")
    max_queue: int = Field(256, ge=1, description="Requests waiting per model; one more is refused with "
                                                  "RESOURCE_EXHAUSTED (the client should back off).")


class RecommenderConfig(_Frozen):
    retrieval: str | None = Field(None, description="The release's retrieval model (default: its only one).")
    ranking: str | None = Field(None, description="The release's ranking model (default: its only one; none: "
                                                  "answers in retrieval order).")
    popularity: str | None = Field(None, description="'view:feature' whose newest value per item orders the "
                                                     "popularity list (default: the first count of an item view).")
    seen: str | None = Field(None, description="'view:feature' listing the items a user already rated (default: "
                                               "the user encoder's list input of item keys).")
    k: int = Field(10, ge=1, description="Items answered when the request gives no k.")
    max_k: int = Field(100, ge=1, description="The largest k a request may ask for.")
    over_fetch: int = Field(4, ge=1, description="Candidates searched per answered item, before re-ranking.")
    ranking_budget_ms: float = Field(5.0, gt=0, description="Time the ranker may take when the client sets no "
                                                            "deadline; past it (or the deadline) answers keep "
                                                            "retrieval order.")
    item_cache_seconds: float = Field(300.0, gt=0, description="How often the ranker's item features are re-read "
                                                               "from the online store (all items at once).")


class TlsConfig(_Frozen):
    cert: str = Field(description="PEM certificate chain (relative to the project folder unless absolute).")
    key: str = Field(description="PEM private key.")
    client_ca: str | None = Field(None, description="PEM CA bundle: when set, clients must present a certificate it signed.")


class AuthConfig(_Frozen):
    tokens_file: str | None = Field(None, description="File of bearer tokens, one per line.")
    tokens_env: str | None = Field(None, description="Name of an environment variable holding comma-separated tokens.")


class ServingConfig(_Frozen):
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface).")
    port: int = Field(8001, ge=0, description="gRPC port (0: any free one).")
    metrics_port: int | None = Field(8002, ge=0, description="Prometheus metrics port (0: any free one; null: off).")
    workers: int = Field(16, ge=1, description="gRPC handler threads (requests in flight at once).")
    onnx_threads: int = Field(1, ge=0, description="onnxruntime threads per model (0: one per core). One is "
                                                   "fastest for many small calls: concurrency comes from batching.")
    max_message_bytes: int = Field(4 << 20, ge=1024, description="Largest request or response (gRPC's default, 4 MiB).")
    reload_seconds: float = Field(2.0, gt=0, description="How often the release pointer is checked.")
    warmup_requests: int = Field(3, ge=0, description="Requests each model of a new release answers before it serves.")
    drain_notice_seconds: float = Field(1.0, ge=0, description="After SIGTERM, how long health says NOT_SERVING "
                                                               "while calls are still answered, before the drain.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    recommender: RecommenderConfig = Field(default_factory=RecommenderConfig)
    tls: TlsConfig | None = Field(None, description="Serve TLS only (default: plaintext, for a trusted network).")
    auth: AuthConfig | None = Field(None, description="Require a bearer token (default: none).")


class StreamingConfig(_Frozen):
    redis: str = Field("redis://127.0.0.1:6379/0", description="The Redis holding the streams. "
                                                           "Env: MILLRACE_STREAM_REDIS.")
    prefix: str = Field("millrace", min_length=1, description="A source's stream is the Redis key <prefix>:<source>.")
    group: str = Field("millrace", min_length=1, description="The consumer group `millrace stream` reads through.")
    window_seconds: int = Field(3600, ge=1, description="Fixed event-time windows rows are assigned to.")
    allowed_lateness_seconds: int = Field(86400, ge=0, description="How far behind the watermark (the newest good "
                                          "event time seen) a row's window may end and the row still count; later "
                                          "rows are quarantined as too_late.")
    batch_entries: int = Field(2000, ge=1, description="Entries read per micro-batch at most while the consumer "
                               "keeps up.")
    backlog_batch_entries: int = Field(20000, ge=1, description="Entries per micro-batch at most while it is behind "
                                       "(a read filled the batch): bigger batches catch up faster.")
    commit_seconds: float = Field(10.0, gt=0, description="How often the lake commits what the stream landed "
                                  "(the online store is updated every micro-batch).")
    expectations: bool = Field(True, description="Run the contract's expectation suite on each lake commit, as batch "
                                             "ingest does.")


class ProjectConfig(_Frozen):
    name: str = Field(description="Project name, used in run ids and reports.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where data lives.")
    sources: dict[str, SourceConfig] = Field(description="Sources by name; each has one contract.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Beam settings.")
    feature_store: FeatureStoreConfig = Field(default_factory=FeatureStoreConfig,
                                              description="Feast online store and registry.")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description="Model tracking and registry.")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="The inference tier (millrace serve).")
    streaming: StreamingConfig = Field(default_factory=StreamingConfig, description="Redis Streams sources "
                                       "(millrace stream).")


class Project:
    """A loaded project folder: its config plus resolved locations and contracts."""

    def __init__(self, root: Path, config: ProjectConfig):
        self.root, self.config = root, config
        self._contracts: dict[str, Contract] = {}

    @property
    def name(self) -> str:
        return self.config.name

    LOCATIONS = ("state_dir", "landing", "lake", "quarantine", "offline")

    def locations(self) -> dict[str, str]:
        """The resolved storage locations. A Beam worker loads the project again in its own
        process, where the driver's environment (``MILLRACE_STATE_DIR``...) may not be set: it
        gets these instead (``load_project(root, locations)``)."""
        return {name: getattr(self, name) for name in self.LOCATIONS}

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
    def stream_redis(self) -> str:
        return os.environ.get("MILLRACE_STREAM_REDIS") or self.config.streaming.redis

    def stream_key(self, source: str) -> str:
        """The Redis key of ``source``'s stream (an unknown source is refused, naming the valid ones)."""
        self.contract(source)
        return f"{self.config.streaming.prefix}:{source}"

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


def load_project(directory: str | Path, locations: dict[str, str] | None = None) -> Project:
    """Read and check ``<directory>/millrace.yaml``: its shape, every source name and contract path.
    ``locations``: storage locations resolved elsewhere (``Project.locations``), used as they are.

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
    project = Project(root, config)
    for name, value in (locations or {}).items():
        if name not in Project.LOCATIONS:
            raise ValueError(f"unknown project location {name!r}")
        project.__dict__[name] = value  # what the cached property would hold
    return project


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
