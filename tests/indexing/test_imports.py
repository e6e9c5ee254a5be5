"""The indexing package stays light: importing it (in a fresh interpreter) loads no torch, Beam,
MLflow, Feast or Great Expectations, and the import-linter contract that says so holds and bites.

tests/test_layers.py runs lint-imports over pyproject.toml's contracts; pyproject.toml has no
forbidden contract for millrace.indexing yet, so the one below is checked here on its own (the way
tests/training/test_bundle.py checks the bundle reader's)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT

HEAVY = ("torch", "apache_beam", "mlflow", "feast", "great_expectations")
MODULES = ["millrace.indexing", "millrace.indexing.errors", "millrace.indexing.factory", "millrace.indexing.build",
           "millrace.indexing.embed", "millrace.indexing.manifest"]
OPTIONAL = ["millrace.indexing.release"]  # when it is there, it is held to the same rule

CONTRACT = """
[tool.importlinter]
root_packages = ["millrace.contracts", "millrace.validation", "millrace.features", "millrace.training",
                 "millrace.indexing", "millrace.pipelines"]
include_external_packages = true

[[tool.importlinter.contracts]]
name = "indexing loads no torch, Beam, MLflow, Feast or Great Expectations"
type = "forbidden"
source_modules = ["millrace.indexing"]
forbidden_modules = ["torch", "apache_beam", "mlflow", "feast", "great_expectations"]
"""


def present_modules() -> list[str]:
    return MODULES + [m for m in OPTIONAL if importlib.util.find_spec(m) is not None]


def fresh_import(modules: list[str], before: str = "") -> dict:
    code = textwrap.dedent(f"""
        import importlib, json, sys
        {before}
        for name in {modules!r}:
            importlib.import_module(name)
        top = {{m.split(".")[0] for m in sys.modules}}
        print(json.dumps({{"heavy": sorted(top & set({HEAVY!r})), "faiss": "faiss" in top,
                          "loaded": sorted(m for m in {modules!r} if m in sys.modules)}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_importing_indexing_loads_no_heavy_package():
    modules = present_modules()
    result = fresh_import(modules)
    assert result["loaded"] == sorted(modules)
    assert result["heavy"] == [], result["heavy"]
    assert not result["faiss"], "FAISS is imported where it is used, not at import time"


def test_the_check_sees_a_heavy_import():
    """The same helper reports a heavy package once one is in sys.modules (so the test above can fail)."""
    stub = "import types; sys.modules['torch'] = types.ModuleType('torch')"
    assert fresh_import(["millrace.indexing.errors"], before=stub)["heavy"] == ["torch"]


def test_import_linter_contract_for_indexing_holds_and_bites(tmp_path):
    lint = Path(sys.executable).parent / "lint-imports"
    config = tmp_path / "importlinter.toml"
    config.write_text(CONTRACT)
    ok = subprocess.run([str(lint), str(config)], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "1 kept, 0 broken" in ok.stdout, ok.stdout + ok.stderr
    # pipelines.index resolves versions through the MLflow registry: the same contract refuses it
    config.write_text(CONTRACT.replace('["millrace.indexing"]', '["millrace.indexing", "millrace.pipelines.index"]'))
    broken = subprocess.run([str(lint), str(config)], cwd=ROOT, capture_output=True, text=True)
    assert broken.returncode != 0 and "millrace.pipelines.index is not allowed to import mlflow" in broken.stdout, \
        broken.stdout
