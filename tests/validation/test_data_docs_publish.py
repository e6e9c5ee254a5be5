"""Publishing to the project's GX site: runs of two sources that end together both land in it."""
import fcntl
import multiprocessing
import os
import time

import pyarrow as pa
import pytest

from millrace.contracts.loader import load_contract
from millrace.validation import data_docs
from tests.conftest import EXAMPLE

pytest.importorskip("great_expectations")


def _stage(state: str, source: str, run_id: str, table: pa.Table):
    from millrace.validation.expectations import SuiteRunner

    contract = load_contract(EXAMPLE / "contracts" / f"{source}.yaml")
    result = SuiteRunner(contract).validate(table)
    key = contract.partitioning.key
    page = data_docs.stage(state, source, run_id, f"{key}=p", result.report.great_expectations, key, ["p"])
    return contract, page


def _publish(state: str, source: str, run_id: str, contract, go) -> None:
    from millrace.validation.expectations import build_suite

    go.wait(60)
    data_docs.publish(state, source, run_id, build_suite(contract))


def test_two_runs_publishing_at_once_both_reach_the_site(tmp_path):
    import great_expectations as gx

    state = str(tmp_path / "state")
    movies = pa.table({"movieId": [1], "title": ["Heat (1995)"], "year": [1995], "genres": ["Action|Crime"]})
    ratings = pa.table({"userId": [1], "movieId": [2], "rating": [4.0],
                        "timestamp": pa.array([1257159144_000000], pa.timestamp("us", tz="UTC"))})
    runs = {"movies": ("20261201T000000Z-aaaaaa", movies), "ratings": ("20261201T000001Z-bbbbbb", ratings)}
    staged = {s: _stage(state, s, run, table) for s, (run, table) in runs.items()}
    # Forked, so both start at once with GX already imported; the first run also creates the context.
    # While another publisher holds the lock, neither touches the context or the site (the lock is
    # taken after the fork: a child holding the parent's descriptor would hold its lock too).
    fork = multiprocessing.get_context("fork")
    go = fork.Event()
    workers = [fork.Process(target=_publish, args=(state, s, runs[s][0], staged[s][0], go)) for s in runs]
    for w in workers:
        w.start()
    lock = os.path.join(state, "locks", "data_docs.lock")
    os.makedirs(os.path.dirname(lock))
    held = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    go.set()
    time.sleep(1.5)
    assert all(w.is_alive() for w in workers) and not os.path.exists(os.path.join(state, "gx"))
    os.close(held)
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    keys = gx.get_context(context_root_dir=os.path.join(state, "gx")).validation_results_store.list_keys()
    assert sorted(k.run_id.run_name for k in keys) == sorted(run for run, _ in runs.values())
    index = open(os.path.join(state, "data_docs", "index.html")).read()
    for source, (run, _) in runs.items():
        assert f"'run_name': '{run}'" in index and os.path.exists(staged[source][1])
