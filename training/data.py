"""Examples, labels and the time split shared by every family."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.training.errors import EmptyTrainingSet, TrainingError
from millrace.training.spec import Label, ModelSpec

_OPS = {">=": pc.greater_equal, ">": pc.greater, "<=": pc.less_equal, "<": pc.less, "==": pc.equal}


@dataclass(frozen=True)
class Split:
    train: pa.Table
    holdout: pa.Table
    cut: dt.datetime  # first instant of the holdout
    dropped_unlabelled: int


def label_column(table: pa.Table, label: Label) -> pa.Array:
    """The label of each row: bool for a binary label, float64 for regression."""
    if label.column not in table.column_names:
        raise TrainingError(f"the examples have no label column '{label.column}' "
                            f"(fix: name a field of the examples source; it has {table.column_names})")
    values = pc.cast(table.column(label.column), pa.float64())
    if label.op is None:
        return values.combine_chunks()
    return _OPS[label.op](values, pa.scalar(float(label.value))).combine_chunks()


def split(examples: pa.Table, spec: ModelSpec, time: str, name: str) -> Split:
    """Drop rows without a label or time, then hold out the latest ``split.holdout`` share by time."""
    if examples.num_rows == 0:
        raise EmptyTrainingSet(f"model '{name}': the examples source '{spec.examples.source}' has no committed "
                               f"rows (fix: ingest it first, e.g. `millrace ingest --source {spec.examples.source}`)")
    labels = label_column(examples, spec.label)
    ok = pc.and_(pc.is_valid(labels), pc.is_valid(examples.column(time)))
    dropped = examples.num_rows - pc.sum(ok).as_py()
    examples = examples.filter(ok).append_column("label", labels.filter(ok))
    if examples.num_rows == 0:
        raise EmptyTrainingSet(f"model '{name}': every example lacks its label '{spec.label.column}' or its time "
                               f"(fix: check the source's data)")
    times = np.sort(pc.cast(examples.column(time), pa.int64()).to_numpy())
    cut_ticks = times[min(len(times) - 1, int(len(times) * (1 - spec.split.holdout)))]
    cut = pa.scalar(cut_ticks, pa.int64()).cast(examples.schema.field(time).type)
    in_holdout = pc.greater_equal(examples.column(time), cut)
    train, holdout = examples.filter(pc.invert(in_holdout)), examples.filter(in_holdout)
    for part, what in ((train, "training"), (holdout, "holdout")):
        if part.num_rows == 0:
            raise EmptyTrainingSet(f"model '{name}': the {what} period is empty ({examples.num_rows} examples, "
                                   f"all at or after {cut.as_py()}) (fix: land more history or change split.holdout)")
    if spec.label.op is not None:
        positives = pc.sum(pc.cast(train.column("label"), pa.int64())).as_py()
        if positives == 0:
            raise EmptyTrainingSet(f"model '{name}': no training example has {spec.label.column} {spec.label.op} "
                                   f"{spec.label.value:g} (fix: check the label definition)")
    return Split(train, holdout, cut.as_py(), dropped)
