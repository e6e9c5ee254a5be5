"""The bundle reader: light (its import set and time, measured in a fresh interpreter; the
import-linter contract), and strict (path checks and SHA-256 before any bytes are returned)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from millrace.contracts.errors import MillraceError
from millrace.training import bundle
from tests.conftest import ROOT
from tests.training.test_records import manifest_v2

HEAVY = ("torch", "mlflow", "apache_beam", "feast", "onnx", "onnxruntime", "numpy", "pyarrow",
         "great_expectations", "sklearn")
# Measured here (2 shared cores): ~0.35-0.47 s alone, most of it pydantic, which the serving tier
# pays anyway to read millrace.yaml (millrace.contracts.project); ~20-25 ms on top of that. For
# scale: torch alone takes ~3 s, mlflow ~3 s.
ALONE_BUDGET_S, AFTER_PROJECT_BUDGET_S = 1.5, 0.2
LIGHT = {"millrace", "yaml", "cython_runtime", "pydantic", "pydantic_core", "typing_extensions", "annotated_types",
         "typing_inspection"}


def _fresh_import(before: str = "") -> dict:
    code = textwrap.dedent(f"""
        import json, sys, time
        {before}
        start = time.perf_counter()
        import millrace.training.bundle
        took = time.perf_counter() - start
        top = {{m.split(".")[0] for m in sys.modules}}
        print(json.dumps({{"s": took, "third_party": sorted(m for m in top - set(sys.stdlib_module_names)
                                                              if not m.startswith("_"))}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_reader_imports_no_heavy_package_and_imports_fast():
    alone = [_fresh_import() for _ in range(3)]
    loaded = set(alone[0]["third_party"])
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert loaded <= LIGHT, loaded - LIGHT
    after = [_fresh_import("import millrace.contracts.project") for _ in range(3)]
    best_alone, best_after = min(r["s"] for r in alone), min(r["s"] for r in after)
    print(f"import millrace.training.bundle: {best_alone * 1000:.0f} ms alone, {best_after * 1000:.0f} ms after "
          f"millrace.contracts.project (best of 3)")
    assert best_alone < ALONE_BUDGET_S and best_after < AFTER_PROJECT_BUDGET_S


CONTRACT = """
[tool.importlinter]
root_packages = ["millrace.contracts", "millrace.validation", "millrace.features", "millrace.training",
                 "millrace.pipelines"]
include_external_packages = true

[[tool.importlinter.contracts]]
name = "the bundle reader loads no torch, MLflow, onnx, Beam or Feast"
type = "forbidden"
source_modules = ["millrace.training.bundle", "millrace.training.lineage"]
forbidden_modules = ["torch", "mlflow", "onnx", "onnxruntime", "apache_beam", "feast"]
"""


def test_import_linter_contract_for_the_reader_holds(tmp_path):
    """The contract requested for pyproject.toml, checked on its own (and shown to bite)."""
    lint = Path(sys.executable).parent / "lint-imports"
    config = tmp_path / "importlinter.toml"
    config.write_text(CONTRACT)
    ok = subprocess.run([str(lint), "--config", str(config)], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "1 kept, 0 broken" in ok.stdout, ok.stdout + ok.stderr
    config.write_text(CONTRACT.replace('"millrace.training.bundle",', '"millrace.training.artifacts",'))
    broken = subprocess.run([str(lint), "--config", str(config)], cwd=ROOT, capture_output=True, text=True)
    assert broken.returncode != 0 and "millrace.training.artifacts -> onnx" in broken.stdout, broken.stdout


def _bundle(folder: Path, data: bytes = b"onnx bytes", name: str = "user_encoder.int8.onnx", **part) -> None:
    (folder / "user_encoder.int8.onnx").write_bytes(data)
    manifest = json.loads(manifest_v2().to_json())
    entry = manifest["parts"]["user_encoder"]
    entry["files"]["int8"] = name
    entry["sha256"] = {name: hashlib.sha256(b"onnx bytes").hexdigest()}
    entry.update(part)
    (folder / bundle.MANIFEST).write_text(json.dumps(manifest))


def test_reads_a_part_after_checking_its_checksum(tmp_path):
    _bundle(tmp_path)
    manifest = bundle.read_manifest(str(tmp_path))
    assert manifest.parts["user_encoder"].served == "int8"
    assert bundle.load_part(str(tmp_path), manifest, "user_encoder") == b"onnx bytes"


def test_a_bundle_of_the_first_writer_still_reads(tmp_path):
    """Bundles written before the manifest was typed spell the version "format"."""
    data = json.loads(manifest_v2().to_json())
    data["format"] = data.pop("format_version")
    (tmp_path / bundle.MANIFEST).write_text(json.dumps(data))
    assert bundle.read_manifest(str(tmp_path)) == manifest_v2()


@pytest.mark.parametrize("name", ["../user_encoder.int8.onnx", "/etc/passwd", "sub/../../x.onnx", "..", ""])
def test_file_names_outside_the_bundle_are_refused(tmp_path, name):
    folder = tmp_path / "bundle"
    folder.mkdir()
    _bundle(folder, name=name)
    (tmp_path / "user_encoder.int8.onnx").write_bytes(b"onnx bytes")  # what a traversal would reach
    with pytest.raises(MillraceError, match="bad file name") as exc:
        bundle.load_part(str(folder), bundle.read_manifest(str(folder)), "user_encoder")
    assert "\n" not in str(exc.value)


def test_a_symlink_out_of_the_bundle_is_refused(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    _bundle(folder, name="link.onnx")
    (tmp_path / "outside.onnx").write_bytes(b"onnx bytes")
    os.symlink(tmp_path / "outside.onnx", folder / "link.onnx")
    with pytest.raises(MillraceError, match="outside"):
        bundle.load_part(str(folder), bundle.read_manifest(str(folder)), "user_encoder")


def test_a_changed_file_is_refused_before_its_bytes_are_returned(tmp_path):
    _bundle(tmp_path, data=b"onnx bytez")
    with pytest.raises(MillraceError, match="SHA-256 does not match manifest.json") as exc:
        bundle.load_part(str(tmp_path), bundle.read_manifest(str(tmp_path)), "user_encoder")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("part, kind, words", [("nope", None, "no part 'nope'"), ("user_encoder", "fp16", "no 'fp16'"),
                                               ("user_encoder", "fp32", "no checksum")])
def test_unknown_part_kind_or_checksum(tmp_path, part, kind, words):
    _bundle(tmp_path)
    with pytest.raises(MillraceError, match=words):
        bundle.load_part(str(tmp_path), bundle.read_manifest(str(tmp_path)), part, kind)


@pytest.mark.parametrize("text", ["", '{"format_version": 1', "[1, 2]", '{"format_version": 2}'],
                         ids=["empty", "truncated", "list", "unknown-version"])
def test_a_corrupt_manifest_is_one_line(tmp_path, text):
    (tmp_path / bundle.MANIFEST).write_text(text)
    with pytest.raises(MillraceError) as exc:
        bundle.read_manifest(str(tmp_path))
    assert "manifest.json: " in str(exc.value) and "\n" not in str(exc.value) and "(fix:" in str(exc.value)


def test_a_missing_manifest_is_one_line(tmp_path):
    with pytest.raises(MillraceError, match="manifest.json: cannot be read"):
        bundle.read_manifest(str(tmp_path))
