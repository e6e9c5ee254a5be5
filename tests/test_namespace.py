"""Every package imports as ``millrace.<name>``; the bare names must never come back.

From the repository root a bare ``contracts`` would still resolve (the folder is on sys.path), and
one file loaded as two modules makes ``except ContractError`` miss the other copy's errors.
"""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("contracts", "validation", "features", "training", "pipelines", "indexing", "serving")
SKIP = {".venv", ".git", "build", "dist", ".millrace"}


def _python_files():
    for path in ROOT.rglob("*.py"):
        if not SKIP.intersection(path.relative_to(ROOT).parts):
            yield path


def _old_spellings(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # module paths inside strings: `python -m pipelines.cli`, mock targets, `-c "import x"` code
            text = node.value
            names = [w.strip(",") for w in text.replace(";", " ").split()
                     if "import " + w in text or text == w and _names_a_module(w)]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in PACKAGES]
    return found


def _names_a_module(dotted: str) -> bool:
    parts = dotted.split(".")
    return len(parts) > 1 and parts[0] in PACKAGES and (
        (ROOT / parts[0] / f"{parts[1]}.py").exists() or (ROOT / parts[0] / parts[1]).is_dir())


def test_no_bare_package_imports():
    found = [hit for path in _python_files() for hit in _old_spellings(path)]
    assert found == [], "use millrace.<package>:\n" + "\n".join(found)


def test_importing_everything_from_the_repo_root_loads_no_bare_package():
    modules = sorted(
        "millrace." + ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for pkg in PACKAGES if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {PACKAGES!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
