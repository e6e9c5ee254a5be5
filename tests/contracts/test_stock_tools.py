"""Stock ODCS tools read the example contracts as millrace does: `datacontract lint` accepts them, and
`datacontract test` passes on a lake made by a real ingest of the example (two months of ratings and
the movie catalogue), reading it through the contracts' own `lake` server (local Parquet, a path
relative to the project folder). datacontract-cli lives in its own virtual environment (see
datacontract-requirements.txt beside this file); without it these tests skip, except under CI."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE, MILLRACE, ROOT, cli_env, in_ci

pytestmark = pytest.mark.slow

REQUIREMENTS = Path(__file__).with_name("datacontract-requirements.txt")
INSTALL = f"python3 -m venv .venv-datacontract && .venv-datacontract/bin/pip install -q -r {REQUIREMENTS.relative_to(ROOT)}"
DATACONTRACT = Path(os.environ.get("MILLRACE_DATACONTRACT", ROOT / ".venv-datacontract" / "bin" / "datacontract"))
CONTRACTS = {name: EXAMPLE / "contracts" / f"{name}.yaml" for name in ("ratings", "movies")}
# datacontract-cli 1.2.8 casts Parquet files into the contract's types, so it reports each field's
# type check as this warning instead of running it (a column that does not cast fails the whole test).
TYPES_NOT_CHECKED = "Checking types in parquet files is not supported yet."


@pytest.fixture(scope="module")
def datacontract() -> Path:
    """The datacontract executable, at the version pinned in the requirements file."""
    if not DATACONTRACT.exists():
        reason = f"datacontract-cli is not installed at {DATACONTRACT} (install it: {INSTALL})"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    pinned = re.search(r"^datacontract-cli\S*==(\S+)", REQUIREMENTS.read_text(), re.M).group(1)
    version = subprocess.run([DATACONTRACT, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    assert version == pinned, f"datacontract-cli {version} at {DATACONTRACT}, pinned {pinned} (reinstall: {INSTALL})"
    return DATACONTRACT


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder standing for the project folder as stock tools see it: the example's state folder
    (`.millrace`, as the contracts' servers name it) after landing the example and ingesting a few
    partitions with the millrace CLI."""
    folder = tmp_path_factory.mktemp("stock-tools")
    env = cli_env(folder / ".millrace")
    land = subprocess.run(MILLRACE + ["example", "land"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert land.returncode == 0, land.stdout + land.stderr
    # The two sources side by side (each run locks only its own source).
    runs = [subprocess.Popen(MILLRACE + ["ingest", "--source", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env, cwd=ROOT)
            for args in (["ratings", "--from", "1996-04-01", "--to", "1996-05-31"], ["movies"])]
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output
    return folder


def _run(datacontract: Path, command: str, contract: Path, cwd: Path, *args: str) -> tuple[int, dict]:
    out = cwd / f"{command}-{contract.stem}.json"
    proc = subprocess.run([datacontract, command, "--no-inline-references", "--output-format", "json",
                           "--output", out, *args, contract], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert out.exists(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(out.read_text())


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_datacontract_lint_accepts_the_example_contract(datacontract, tmp_path, name):
    code, result = _run(datacontract, "lint", CONTRACTS[name], tmp_path)
    assert (code, result["result"]) == (0, "passed"), result["checks"]
    assert result["dataContractId"] == f"urn:millrace:movielens:{name}"


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_datacontract_test_passes_on_the_ingested_lake(datacontract, project, name):
    code, result = _run(datacontract, "test", CONTRACTS[name], project, "--server", "lake")
    assert code == 0, result["checks"]
    checks = result["checks"]
    odd = [(c["result"], c["name"], c["reason"]) for c in checks
           if c["result"] != "passed" and c["reason"] != TYPES_NOT_CHECKED]
    assert not odd
    spec = yaml.safe_load(CONTRACTS[name].read_text())
    fields = [p["name"] for p in spec["schema"][0]["properties"]]
    names = " | ".join(c["name"] for c in checks if c["result"] == "passed")
    for field in fields:  # read from the files, not only planned
        assert f"Check that field '{field}' is present" in names
    assert "Check that primary key" in names
    assert result["server"] == "lake"


def test_datacontract_test_reads_the_rows(datacontract, project):
    """The same run on a contract that the lake's rows break (ratings up to 4 stars) fails on that rule."""
    spec = yaml.safe_load(CONTRACTS["ratings"].read_text())
    rating = next(p for p in spec["schema"][0]["properties"] if p["name"] == "rating")
    rating["logicalTypeOptions"]["maximum"] = 4.0
    rating.pop("enum")
    contract = project / "ratings-at-most-4.yaml"
    contract.write_text(yaml.safe_dump(spec, sort_keys=False))
    code, result = _run(datacontract, "test", contract, project, "--server", "lake")
    failed = [c["name"] for c in result["checks"] if c["result"] == "failed"]
    assert code != 0 and failed == ["Check that field rating has a maximum of 4.0"], result["checks"]
