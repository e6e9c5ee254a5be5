"""Models travel as ONNX: no module of ours unpickles anything or calls torch.load unsafely."""
from __future__ import annotations

import re

from tests.conftest import ROOT

PACKAGES = ("contracts", "validation", "features", "training", "pipelines")


def test_no_pickle_loads_and_only_weights_only_torch_load():
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            if re.search(r"\b(pickle|cloudpickle|dill|joblib)\.loads?\(", text):
                offenders.append(f"{path}: unpickles")
            for call in re.findall(r"torch\.load\([^)]*\)", text):
                if "weights_only=True" not in call:
                    offenders.append(f"{path}: {call}")
    assert offenders == []
