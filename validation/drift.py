"""Data drift of a model's inputs: an Evidently report (data drift + data summary presets) of the
current rows against a reference, and the verdict read from it.

Arrow tables in, a :class:`DriftVerdict` out; the report itself is saved as HTML and JSON by the
caller. Which rows and columns are compared is the caller's business (pipelines.drift: the
newest partition's features as served against the champion's training period). Columns must be
scalars: numbers are compared as numerical, strings and booleans as categorical; anything else
(lists) is left out and named in the verdict.

Each column gets Evidently's default test for its type and the reference size: above 1,000
reference rows a distance (Wasserstein normed for numbers, Jensen-Shannon for categories,
drifted at >= 0.1); at or below, a p-value test (K-S, chi-square or Z, drifted below 0.05)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.types as pat


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftVerdict:
    share: float                    # drifted columns / compared columns
    threshold: float                # the share past which the model should be retrained
    columns: list[ColumnDrift]
    reference_rows: int
    current_rows: int
    left_out: list[str] = field(default_factory=list)  # columns Evidently cannot compare (lists)

    @property
    def drifted(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def triggered(self) -> bool:
        return self.share > self.threshold


def comparable(schema: pa.Schema, columns: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(numerical, categorical, left out) among ``columns``."""
    numerical, categorical, left_out = [], [], []
    for name in columns:
        kind = schema.field(name).type
        if pat.is_integer(kind) or pat.is_floating(kind) or pat.is_decimal(kind):
            numerical.append(name)
        elif pat.is_string(kind) or pat.is_large_string(kind) or pat.is_boolean(kind) or pat.is_dictionary(kind):
            categorical.append(name)
        else:
            left_out.append(name)
    return numerical, categorical, left_out


def drift_report(reference: pa.Table, current: pa.Table, columns: list[str], threshold: float,
                 column_threshold: float | None = None):
    """The Evidently snapshot (``save_html`` / ``save_json``) and its verdict. ``threshold``: the share
    of drifted columns past which the verdict triggers; ``column_threshold``: the score past which a
    column drifts (None: Evidently's default for its test)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    numerical, categorical, left_out = comparable(reference.schema, columns)
    compared = numerical + categorical
    if not compared:
        raise ValueError(f"no scalar column to compare among {columns}")
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    frames = [t.select(compared).to_pandas() for t in (reference, current)]
    report = Report([DataDriftPreset(columns=compared, drift_share=threshold, threshold=column_threshold), DataSummaryPreset(columns=compared)])
    snapshot = report.run(Dataset.from_pandas(frames[1], data_definition=definition),
                          Dataset.from_pandas(frames[0], data_definition=definition))
    found = []
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type") != "evidently:metric_v2:ValueDrift" or config.get("column") not in compared:
            continue
        method, limit, score = str(config["method"]), float(config["threshold"]), float(metric["value"])
        # p-value tests drift below their threshold, distances at or above it
        drifted = score < limit if "p_value" in method else score >= limit
        found.append(ColumnDrift(config["column"], method, score, limit, drifted))
    found.sort(key=lambda c: columns.index(c.column))  # the caller's order
    share = sum(c.drifted for c in found) / len(found) if found else 0.0
    verdict = DriftVerdict(share, threshold, found, reference.num_rows, current.num_rows, left_out)
    return snapshot, verdict
