"""`millrace example land` writes the bundled MovieLens example's files: on any other project it
refuses with one line naming the project and the fix (exit 2), and lands nothing."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import EXAMPLE, MILLRACE, ROOT, cli_env

OTHER = Path(__file__).parents[1] / "features" / "typed"  # a small project that is not the example


def _land(project: Path, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(MILLRACE + ["--project", str(project), "example", "land"], capture_output=True,
                          text=True, env=cli_env(state), timeout=120, cwd=ROOT)


def test_example_land_refuses_another_project(tmp_path):
    for name, source in (("typed", OTHER), ("movielens", EXAMPLE)):  # a copy of the example is not it either
        root = tmp_path / name
        shutil.copytree(source, root, ignore=shutil.ignore_patterns(".millrace"))
        proc = _land(root, tmp_path / f"state-{name}")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        project = re.search(r"(?m)^name: (\S+)", (root / "millrace.yaml").read_text()).group(1)
        assert f"project '{project}' is not the bundled example" in lines[0] and "(fix: " in lines[0], lines[0]
        assert str(root / "millrace.yaml") in lines[0]
        assert not proc.stdout.strip()
        assert not [p for p in tmp_path.joinpath(f"state-{name}").rglob("*") if p.is_file()]
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == \
            sorted(p.relative_to(source) for p in source.rglob("*") if ".millrace" not in p.parts)
