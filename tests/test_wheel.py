"""The built wheel works on its own: the bundled example lands and runs from an install, not a checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", ".millrace", "__pycache__",
                                    ".pytest_cache", ".hypothesis", "bench", "tests", "docs")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the source tree (the shared checkout gets no build/), installed
    with ``pip install --target``."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=NOT_SOURCE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(tmp / "src")],
                   check=True, capture_output=True, timeout=300)
    wheels = list((tmp / "dist").glob("millrace-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run(pip + ["install", "--no-deps", "--target", str(tmp / "site"), str(wheels[0])],
                   check=True, capture_output=True, timeout=300)
    return tmp


def millrace(installed: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env.update(PYTHONPATH=f"{installed / 'site'}{os.pathsep}{sysconfig.get_paths()['purelib']}",
               XDG_DATA_HOME=str(installed / "xdg"), COLUMNS="120")
    elsewhere = installed / "cwd"
    elsewhere.mkdir(exist_ok=True)  # outside the repository: nothing resolves from a checkout
    return subprocess.run([sys.executable, "-m", "millrace.pipelines.cli", *args], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_wheel_ships_the_example_and_runs_it_from_the_user_data_folder(installed):
    site, copy = installed / "site", installed / "xdg" / "millrace" / "examples" / "movielens"
    shipped = site / "millrace" / "examples" / "movielens"
    assert sorted(p.name for p in shipped.rglob("*.yaml")) == sorted(p.name for p in (ROOT / "examples" / "movielens")
                                                                      .rglob("*.yaml"))
    where = millrace(installed, "--help")
    assert where.returncode == 0 and "nightly" in where.stdout, where.stderr

    landed = millrace(installed, "example", "land")
    assert landed.returncode == 0, landed.stdout + landed.stderr
    assert "ratings: 100,504 records in 3,840 files" in landed.stdout, landed.stdout
    assert "movies: 9,111 records in 1 files" in landed.stdout, landed.stdout
    assert f"runs from {copy}" in landed.stderr  # said once, where the project now lives
    assert list((copy / ".millrace" / "landing" / "ratings").glob("*/*"))
    assert list((copy / ".millrace" / "landing" / "movies").glob("*/*"))
    assert not (shipped / ".millrace").exists()  # the install is never written to

    listed = millrace(installed, "lake", "ls", "--source", "ratings")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "0 committed partitions" in listed.stdout and "runs from" not in listed.stderr
    lint = millrace(installed, "contracts", "lint", str(copy / "contracts" / "ratings.yaml"))
    assert lint.returncode == 0 and lint.stdout.startswith("ok"), lint.stdout + lint.stderr
    code = "import millrace.pipelines.cli as c; print(c.__file__)"
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{sysconfig.get_paths()['purelib']}")
    imported = subprocess.run([sys.executable, "-c", code], cwd=installed / "cwd", env=env, capture_output=True,
                              text=True, check=True).stdout.strip()
    assert imported.startswith(str(site)), imported  # the wheel ran, not the checkout
