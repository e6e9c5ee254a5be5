"""Training killed (SIGKILL) at each of its crash points, then run again: the registry, the
aliases, the alias history and the run statuses agree (no RUNNING orphan, the history ends at
each alias's real target, the killed run is FAILED with the reason)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from millrace.contracts.faults import TRAINING_POINTS
from millrace.training import registry
from tests.conftest import ROOT

MODEL = "stars"  # the quickest tiny model: regression, no INT8
TRAIN = ("import sys; from pathlib import Path; from tests.training.conftest import Tiny, synthetic; "
         f"Tiny(Path(sys.argv[1]), *synthetic()).train({MODEL!r})")
# after_alias_move: the 1st move is challenger, the 2nd champion (the one the history got wrong)
KILLS = {"after_run_start": "after_run_start", "after_register": "after_register",
         "after_alias_move": "after_alias_move:2"}


def test_every_training_point_is_killed_here():
    assert set(KILLS) == set(TRAINING_POINTS)


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILLS))
def test_killed_training_converges_on_rerun(tiny, point):
    env = {**os.environ, "MILLRACE_KILL_AT": KILLS[point]}
    killed = subprocess.run([sys.executable, "-c", TRAIN, str(tiny.root)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    rerun = tiny.train(MODEL)

    client = registry.connect(tiny.project)
    reg = registry.registered_name(tiny.project, MODEL)
    runs = client.search_runs([registry.experiment_id(client, tiny.project, MODEL)])
    assert len(runs) == 2 and not [r for r in runs if r.info.status == "RUNNING"]
    dead = next(r for r in runs if r.info.run_id != rerun.run_id)
    assert dead.info.status == "FAILED" and "ended without closing it" in dead.data.tags["millrace.orphan"]

    model = client.get_registered_model(reg)
    assert not [k for k in model.tags if k.startswith(registry.PENDING_PREFIX)]
    log = registry.history(client, reg)
    for alias, version in model.aliases.items():  # the history ends where each alias points
        assert [e.version for e in log if e.alias == alias][-1] == str(version), (alias, log)
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    champion = registry.alias_target(client, reg, registry.CHAMPION)
    assert champion is not None and registry.gate_passed(registry.get_version(client, reg, champion))
    assert registry.alias_target(client, reg, registry.CHALLENGER) == rerun.version

    dead_versions = client.search_model_versions(f"run_id = '{dead.info.run_id}'")
    if point == "after_run_start":
        assert dead_versions == [] and rerun.version == "1" and champion == "1"
    elif point == "after_register":  # registered, never aliased: marked, never served
        assert [v.tags[registry.RUN_TAG] for v in dead_versions] == ["interrupted"]
        assert rerun.version == "2" and champion == "2" and "1" not in [e.version for e in log]
    else:  # champion had moved to v1; its log entry was written from the intent on the rerun
        assert [str(v.version) for v in dead_versions] == ["1"]
        moves = [e for e in log if e.alias == registry.CHAMPION]
        assert moves[0].version == "1" and moves[0].why.startswith("gate passed")
        assert champion in ("1", "2") and len(moves) == (2 if champion == "2" else 1)
