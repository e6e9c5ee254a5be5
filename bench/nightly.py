"""Wall time per stage of a fresh nightly on the bundled example, and of the incremental nightly
after one new day lands.

    .venv/bin/python bench/nightly.py                  # ~4 min: both runs, one table
    .venv/bin/python bench/nightly.py --json out.json  # the two run reports as well

The example is landed into a temporary state folder, its newest day of ratings held back; the
fresh run is ``millrace nightly`` on the rest (every stage, models trained, a release made); then
the held-back day lands and ``millrace nightly --date <that day>`` runs, as a scheduler's next
daily run would. Both are the CLI in a subprocess, as a user runs them: the seconds per stage
come from each run's report, the totals include the process start. Target: the incremental run
takes <= 10% of the fresh one. The incremental run retrains only when a trigger fires (drift over
a model's threshold): the table says which triggers fired, and the ratio is given with and
without the stages such a trigger adds (train, index, release)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MILLRACE = [sys.executable, "-m", "millrace.pipelines.cli"]
TRIGGERED = ("train", "index", "release")


def _run(args: list[str], state: Path) -> tuple[dict, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env["MILLRACE_STATE_DIR"] = str(state)
    began = time.perf_counter()
    proc = subprocess.run(MILLRACE + args, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        sys.exit(f"`millrace {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return (json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}), seconds


def _seconds(report: dict) -> dict[str, float]:
    return {s["stage"]: s["seconds"] or 0.0 for s in report["stages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="Write both run reports here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="millrace-bench-nightly-") as tmp:
        state = Path(tmp) / "state"
        _, land_s = _run(["example", "land"], state)
        days = sorted((state / "landing" / "ratings").iterdir())
        newest, held = days[-1], Path(tmp) / "held-back"
        shutil.move(str(newest), held)

        fresh, fresh_s = _run(["nightly", "--json"], state)
        shutil.move(str(held), newest)
        incremental, incremental_s = _run(["nightly", "--date", newest.name, "--json"], state)

    f, i = _seconds(fresh), _seconds(incremental)
    outcomes = {s["stage"]: s["outcome"] for s in incremental["stages"]}
    print(f"example landed in {land_s:.1f} s; newest day held back and landed after the fresh run: {newest.name}")
    print(f"{'stage':<12} {'fresh s':>9} {'incremental s':>14}  incremental outcome")
    for stage in f:
        print(f"{stage:<12} {f[stage]:>9.1f} {i.get(stage, 0.0):>14.1f}  {outcomes.get(stage, '')}")
    data_path = sum(v for k, v in i.items() if k not in TRIGGERED)
    print(f"{'total':<12} {fresh_s:>9.1f} {incremental_s:>14.1f}  (wall, process start included)")
    print(f"incremental / fresh: {incremental_s / fresh_s:.1%} (target <= 10%)")
    print(f"incremental without triggered training (stages {', '.join(s for s in f if s not in TRIGGERED)}): "
          f"{data_path:.1f} s = {data_path / fresh_s:.1%} of fresh")
    print(f"training triggers of the incremental run: {incremental['training_triggers'] or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"fresh": fresh, "incremental": incremental, "land_seconds": land_s,
                                         "fresh_seconds": fresh_s, "incremental_seconds": incremental_s}, indent=1))


if __name__ == "__main__":
    main()
