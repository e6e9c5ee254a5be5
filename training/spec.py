"""``models.yaml``: what to train, from which features, how to judge it, how to quantize it.

Checked against the contracts (examples source, label column, keys) and features.yaml
(every feature reference) before any data is read, so a typo costs one line, not a run.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from millrace.contracts.arrow import arrow_type
from millrace.contracts.loader import read_yaml
from millrace.contracts.names import check_name
from millrace.contracts.project import Project
from millrace.features.errors import UnknownFeature
from millrace.features.spec import Features
from millrace.features.training_set import resolve_refs
from millrace.training.errors import ModelSpecError, UnknownModel

# Metrics each family reports; the direction says which way is better.
HIGHER_IS_BETTER = {"recall_at_10": True, "ndcg_at_10": True, "auc": True, "accuracy": True,
                    "logloss": False, "rmse": False, "mae": False}
FAMILY_METRICS = {"two_tower": ("recall_at_10", "ndcg_at_10"),
                  ("tabular", "classification"): ("auc", "accuracy", "logloss"),
                  ("tabular", "regression"): ("rmse", "mae")}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Examples(_Frozen):
    source: str = Field(description="Source (from millrace.yaml) whose committed rows are the examples; "
                                    "its event time is each example's prediction time.")


class Label(_Frozen):
    column: str = Field(description="Field of the examples source the label comes from.")
    op: Literal[">=", ">", "<=", "<", "=="] | None = Field(
        None, description="Binary label: column <op> value. two_tower: the positives. Omit for regression.")
    value: float | None = Field(None, description="Threshold of the binary label.")


class Split(_Frozen):
    holdout: float = Field(0.1, gt=0, lt=1, description="Share of examples, the latest by event time, held out "
                                                        "for evaluation (a time split: no holdout row precedes a "
                                                        "training row).")


class Tower(_Frozen):
    key: str = Field(description="Entity key column of the examples; gets an id embedding.")
    features: list[str] = Field(default_factory=list, description="Feature references, 'view:feature' or 'view'.")
    history: str | None = Field(None, description="user tower: a 'view:feature' list of item keys the user "
                                                  "interacted with; embedded with the item tower's id embedding.")


class Hyperparameters(_Frozen):
    embedding_dim: int = Field(32, ge=2, le=1024, description="Output size (two_tower) and categorical embedding size.")
    hidden: list[int] = Field(default_factory=lambda: [256, 128], description="Hidden layer widths of each MLP.")
    epochs: int = Field(5, ge=1, le=1000, description="Passes over the training examples.")
    batch_size: int = Field(512, ge=2, le=1 << 16, description="Examples per step (two_tower: in-batch negatives).")
    learning_rate: float = Field(0.003, gt=0, description="Adam learning rate.")
    temperature: float = Field(0.1, gt=0, description="two_tower: softmax temperature.")
    id_dropout: float = Field(0.1, ge=0, lt=1, description="two_tower: share of training ids replaced by "
                                                           "'unseen', so new users and items get a learned embedding.")
    max_vocabulary: int = Field(50_000, ge=1, description="Most frequent values kept per categorical feature.")
    seed: int = Field(7, description="Seeds torch, numpy and the example order: same seed, same metrics.")


class Gates(_Frozen):
    primary: str | None = Field(None, description="Metric that decides (default: the family's first).")
    thresholds: dict[str, float] = Field(default_factory=dict, description="Minimum (or maximum, for lower-is-"
                                                                           "better metrics) a version must reach.")
    beat_baseline: bool = Field(True, description="two_tower: must beat the popularity baseline on the holdout.")
    min_improvement: float = Field(0.0, description="How much better than the champion, on the same holdout, "
                                                    "the primary metric must be to move `champion`.")


class Quantization(_Frozen):
    method: Literal["dynamic", "static", "none"] = Field("dynamic", description="onnxruntime INT8: dynamic "
                                                         "(weights INT8, activations quantized at run time) or "
                                                         "static QDQ (calibrated on training examples).")
    max_metric_drop: float = Field(0.01, ge=0, description="Largest loss of the primary metric INT8 may cause "
                                                           "against FP32 (0.01 = one point).")
    calibration_examples: int = Field(2048, ge=16, description="static: examples used to calibrate.")


class Recall(_Frozen):
    k: int | None = Field(None, ge=1, le=1000, description="recall@k of the gate; default: the k of the primary "
                                                           "metric (recall_at_10: 10), else 10.")
    min: float = Field(0.95, gt=0, le=1, description="Smallest recall@k, against exact search on the holdout "
                                                     "users' embeddings, a build must reach to be stored.")
    queries: int = Field(2000, ge=10, le=1_000_000, description="Holdout users the gate searches for (at most; "
                                                                "the gate costs one exact search per query).")


class IndexSpec(_Frozen):
    factory: str = Field("auto", description="FAISS index factory string ('Flat', 'IVF1024,Flat', "
                                             "'IVF4096,PQ32', 'HNSW32'), or 'auto': chosen by catalogue size "
                                             "(see docs/indexing.md).")
    exact_up_to: int = Field(100_000, ge=0, description="auto: catalogues up to this many items get an exact "
                                                        "(Flat) index.")
    compress_above: int = Field(5_000_000, ge=0, description="auto: catalogues above this many items get IVF-PQ "
                                                             "(compressed codes) instead of IVF-Flat.")
    train_sample: int = Field(262_144, ge=1_000, description="Most vectors sampled to train IVF centroids and PQ "
                                                             "codebooks.")
    batch: int = Field(4096, ge=1, le=1 << 20, description="Items embedded per onnxruntime call.")
    recall: Recall = Field(default_factory=Recall, description="The recall gate.")


class Drift(_Frozen):
    share: float = Field(0.5, gt=0, le=1, description="Share of the model's input columns that must drift for "
                         "`millrace drift` to record a retraining trigger (more than this share).")
    reference_rows: int = Field(5000, ge=100, le=1_000_000, description="The reference: the newest rows of the "
                                "champion's training period. Above 1,000 Evidently compares by distance "
                                "(Wasserstein, Jensen-Shannon), which a larger sample does not make more sensitive; "
                                "at 1,000 or fewer by p-value tests, which flag ever smaller differences as n grows.")
    column_threshold: float | None = Field(None, gt=0, le=1, description="A column drifts past this score "
                                           "(default: Evidently's own: 0.1 for distances, 0.05 for p-values).")
    min_rows: int = Field(1000, ge=50, description="Fewest current rows compared: the newest partition, widened back "
                          "over earlier partitions until it holds this many (a small day alone is noise).")


class ModelSpec(_Frozen):
    family: Literal["two_tower", "tabular"] = Field(description="two_tower retrieval or tabular MLP.")
    task: Literal["classification", "regression"] = Field("classification", description="tabular: what to predict.")
    description: str = Field("", description="What the model is for.")
    examples: Examples = Field(description="Where the examples come from.")
    label: Label = Field(description="Label definition.")
    split: Split = Field(default_factory=Split, description="Time-based holdout.")
    features: list[str] = Field(default_factory=list, description="tabular: feature references.")
    request: list[str] = Field(default_factory=list, description="tabular: columns of the example row itself "
                               "(contract fields or derived columns), passed by the caller at request time.")
    user: Tower | None = Field(None, description="two_tower: the query tower.")
    item: Tower | None = Field(None, description="two_tower: the candidate tower.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Training settings.")
    gates: Gates = Field(default_factory=Gates, description="What a version must reach to become champion.")
    quantization: Quantization = Field(default_factory=Quantization, description="INT8 settings.")
    index: IndexSpec = Field(default_factory=IndexSpec, description="two_tower: the FAISS index of the item "
                                                                    "catalogue (`millrace index`).")
    drift: Drift = Field(default_factory=Drift, description="`millrace drift`: when the inputs have moved enough "
                                                            "to retrain.")

    @property
    def input_features(self) -> list[str]:
        """The feature references the model reads (tabular: its features; two_tower: both towers')."""
        if self.family == "two_tower":
            return [*(self.user.features if self.user else []), *(self.item.features if self.item else [])]
        return list(self.features)

    @property
    def metrics(self) -> tuple[str, ...]:
        return FAMILY_METRICS["two_tower" if self.family == "two_tower" else ("tabular", self.task)]

    @property
    def primary(self) -> str:
        return self.gates.primary or self.metrics[0]

    @property
    def recall_k(self) -> int:
        """k of the index's recall gate: its own, else the primary metric's (recall_at_10: 10), else 10."""
        found = re.fullmatch(r"(?:recall|ndcg)_at_(\d+)", self.primary)
        return self.index.recall.k or (int(found.group(1)) if found else 10)


class ModelsFile(_Frozen):
    models: dict[str, ModelSpec] = Field(description="Models by name.")


class Models:
    """A checked models.yaml."""

    def __init__(self, path: Path, models: dict[str, ModelSpec]):
        self.path, self.models = path, models

    def get(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise UnknownModel(f"unknown model '{name}' in {self.path} (fix: use one of {sorted(self.models)})")
        return self.models[name]

    @property
    def names(self) -> list[str]:
        return list(self.models)


def load_models(project: Project, features: Features) -> Models:
    path = project.root / "models.yaml"
    if not path.exists():
        raise ModelSpecError(path, "(file)", "does not exist", "declare models in models.yaml "
                             "(see docs/training.md)")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ModelSpecError(path, "(top level)", _kind(data), "write `models:` followed by "
                             "one entry per model (see docs/training.md)")
    if isinstance(data.get("models"), dict):
        for name in data["models"]:
            check_name(name, path, f"models.{name}")  # a model name becomes an experiment and a folder name
    try:
        parsed = ModelsFile(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ModelSpecError(path, loc, first["msg"].lower(), "see docs/training.md") from None
    for name, spec in parsed.models.items():
        _check(path, project, features, f"models.{name}", spec)
    return Models(path, parsed.models)


def _kind(value) -> str:
    if value is None:
        return "is empty"
    return f"is a {({list: 'list', str: 'string'}).get(type(value), type(value).__name__)}, not a map"


def _check(path: Path, project: Project, features: Features, where: str, spec: ModelSpec) -> None:
    if spec.examples.source not in project.sources:
        raise ModelSpecError(path, f"{where}.examples.source", f"unknown source '{spec.examples.source}'",
                             f"use one of {project.sources}")
    contract = project.contract(spec.examples.source)
    columns = features.source_types(spec.examples.source)  # the contract's fields and the derived columns
    if contract.event_time is None:
        raise ModelSpecError(path, f"{where}.examples.source", f"source '{spec.examples.source}' has no event time",
                             "use a source whose contract declares eventTime (a time split needs it)")
    label = spec.label
    if label.column not in columns:
        raise ModelSpecError(path, f"{where}.label.column", f"source '{spec.examples.source}' has no field "
                             f"'{label.column}'", f"use one of {sorted(columns)}")
    if not (pa.types.is_integer(columns[label.column]) or pa.types.is_floating(columns[label.column])
            or pa.types.is_boolean(columns[label.column])):
        raise ModelSpecError(path, f"{where}.label.column", f"'{label.column}' is {columns[label.column]}, "
                             "not numeric", "label a numeric or boolean field")
    binary = spec.family == "two_tower" or spec.task == "classification"
    if binary and (label.op is None or label.value is None):
        raise ModelSpecError(path, f"{where}.label", "a binary label needs op and value",
                             "write e.g. {column: rating, op: '>=', value: 4}")
    if not binary and label.op is not None:
        raise ModelSpecError(path, f"{where}.label.op", "a regression label takes the column as it is",
                             "remove op and value, or use task: classification")
    if spec.primary not in spec.metrics:
        raise ModelSpecError(path, f"{where}.gates.primary", f"'{spec.primary}' is not a metric of this model",
                             f"use one of {list(spec.metrics)}")
    unknown = [m for m in spec.gates.thresholds if m not in spec.metrics]
    if unknown:
        raise ModelSpecError(path, f"{where}.gates.thresholds", f"unknown metric(s) {unknown}",
                             f"use some of {list(spec.metrics)}")
    _check_request(path, f"{where}.request", spec, columns)
    if spec.family == "two_tower":
        for side in ("user", "item"):
            tower = getattr(spec, side)
            if tower is None:
                raise ModelSpecError(path, f"{where}.{side}", "a two_tower model needs a user and an item tower",
                                     "add {key: <entity key>, features: [...]}")
            _check_key(path, f"{where}.{side}.key", tower.key, columns, spec.examples.source)
            _check_refs(path, features, f"{where}.{side}.features", tower.features, [tower.key])
        if spec.item.history:
            raise ModelSpecError(path, f"{where}.item.history", "history belongs to the user tower",
                                 "move it to user.history")
        if spec.user.history:
            _check_history(path, features, f"{where}.user.history", spec.user, columns[spec.item.key])
        if spec.features:
            raise ModelSpecError(path, f"{where}.features", "two_tower models take features per tower",
                                 "move them under user.features or item.features")
    else:
        if spec.user or spec.item:
            raise ModelSpecError(path, f"{where}.user", "towers are for two_tower models", "list features: instead")
        if not spec.features:
            raise ModelSpecError(path, f"{where}.features", "a tabular model needs features",
                                 "list 'view:feature' references")
        _check_refs(path, features, f"{where}.features", spec.features, list(columns))


def _check_request(path, where: str, spec: ModelSpec, columns: dict) -> None:
    """Request-time inputs: typed from the examples source, encoded like view features."""
    if spec.request and spec.family == "two_tower":
        raise ModelSpecError(path, where, "request inputs are for tabular models (a two_tower query is a "
                             "user, not one example row)", "move them to a tabular model, or use user features")
    for i, column in enumerate(spec.request):
        at = f"{where}[{i}]"
        if column not in columns:
            raise ModelSpecError(path, at, f"source '{spec.examples.source}' has no field '{column}'",
                                 f"use one of {sorted(columns)} (contract fields or derived columns)")
        if column == spec.label.column:
            raise ModelSpecError(path, at, f"'{column}' is the label", "a model cannot take its label as an input")
        dtype = columns[column]
        if not (pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)
                or pa.types.is_string(dtype) or pa.types.is_large_string(dtype)):
            raise ModelSpecError(path, at, f"'{column}' is {dtype}", "request inputs are numbers, booleans or "
                                 "text; derive e.g. hour(<timestamp>) for a time")
    if len(set(spec.request)) != len(spec.request):
        raise ModelSpecError(path, where, f"{spec.request} repeats a column", "list each column once")


def _check_history(path, features: Features, where: str, user: Tower, item_key_type: pa.DataType) -> None:
    ref = user.history
    if ":" not in ref:
        raise ModelSpecError(path, where, f"'{ref}' names no single feature", "write 'view:feature'")
    _check_refs(path, features, where, [ref], [user.key])
    if ref in user.features:
        raise ModelSpecError(path, where, f"'{ref}' is also in user.features", "list it once, as history")
    view, name = ref.split(":")
    typ = features.types[view][name]
    if not (pa.types.is_list(typ) and typ.value_type == item_key_type):
        raise ModelSpecError(path, where, f"'{ref}' is {typ}, not a list of item keys ({item_key_type})",
                             "use a last_n feature over the item key, e.g. recent_movies")


def _check_key(path, where: str, key: str, columns: dict, source: str) -> None:
    if key not in columns:
        raise ModelSpecError(path, where, f"source '{source}' has no field '{key}'", f"use one of {sorted(columns)}")


def _check_refs(path, features: Features, where: str, refs: list[str], spine_columns: list[str]) -> None:
    try:
        wanted = resolve_refs(features, refs) if refs else {}
    except UnknownFeature as exc:
        raise ModelSpecError(path, where, str(exc).split(" (fix:")[0], str(exc).partition("(fix: ")[2].rstrip(")")
                             or "see features.yaml") from None
    for view in wanted:
        keys = features.join_keys(view)
        missing = [k for k in keys if k not in spine_columns]
        if missing:
            joins = f"'{keys[0]}'" if len(keys) == 1 else f"{keys} ({missing} missing)"
            raise ModelSpecError(path, where, f"view '{view}' joins on {joins}, which the examples do not have",
                                 f"use views keyed by some of {spine_columns}")
