"""What a family hands back after fitting: the parts to export and how to judge any version of them.

A *part* is one exported network: ``model`` (tabular) or ``user_encoder`` and ``item_encoder``
(two_tower). An *evaluator* scores a version given a function that runs a part on encoded inputs,
so torch, onnxruntime FP32, INT8 and the registered champion are all judged by the same code on
the same holdout.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from millrace.training.encode import Encoded, InputSpec

Runner = Callable[[str, Encoded], np.ndarray]  # (part name, inputs) -> outputs


@dataclass
class Part:
    module: object  # a training.nets.FeatureMLP
    specs: list[InputSpec]
    output: str
    sample: Encoded  # holdout inputs: parity checks, calibration and latency use them


@dataclass
class Fitted:
    parts: dict[str, Part]
    evaluate: Callable[[Runner], dict[str, float]]
    baseline: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    calibration: dict[str, Encoded] = field(default_factory=dict)


def columns_of(refs: dict[str, list[str]]) -> list[str]:
    """Training-set column names ("view__feature") of resolved references."""
    return [f"{view}__{name}" for view, names in refs.items() for name in names]


def with_sources(specs: list[InputSpec], refs: dict[str, list[str]], request: list[str] = (),
                 keys: list[str] = ()) -> list[InputSpec]:
    """Each input tagged with where serving gets its value (recorded in the bundle's manifest)."""
    sources = {f"{view}__{name}": f"{view}:{name}" for view, names in refs.items() for name in names}
    sources |= {column: f"request:{column}" for column in request} | {key: f"key:{key}" for key in keys}
    return [replace(s, source=sources.get(s.name, s.source)) for s in specs]


def spread(rows: int, limit: int) -> np.ndarray:
    """Up to ``limit`` row numbers evenly spread over ``rows`` (examples are in time order, so
    calibration sees every period, not only the oldest)."""
    return np.unique(np.linspace(0, rows - 1, min(rows, limit)).astype(np.int64)) if rows else np.zeros(0, np.int64)
