"""The package layering holds, and the CLI stays light to start."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ('apache_beam', 'great_expectations', 'pyarrow', 'torch', 'mlflow', 'onnxruntime', 'feast')


def test_import_layers_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_cli_help_imports_no_heavy_library():
    code = ("import sys, millrace.pipelines.cli; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_running_help_imports_no_heavy_library():
    """Not only importing the CLI: running `millrace --help` (and a group's help) loads none either."""
    for args in (["--help"], ["models", "--help"], ["features", "--help"]):
        code = ("import atexit, sys\n"
                f"atexit.register(lambda: print(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
                f"sys.argv = ['millrace', *{args!r}]\n"
                "from millrace.pipelines.cli import main\n"
                "main()\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "[]", (args, proc.stdout[-300:])
