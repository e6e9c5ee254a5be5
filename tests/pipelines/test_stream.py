"""``millrace stream`` end to end against the real Redis: produce -> stream -> lake + online store,
then a batch nightly that neither doubles the rows nor disagrees with the online values."""
from __future__ import annotations

import datetime as dt
import json

import pyarrow.compute as pc
import pytest
import redis

from tests.conftest import MILLRACE, cli_env
from tests.pipelines import streams as S

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, redis_url):
    return S.make_setup(tmp_path_factory.mktemp("stream"), redis_url)


@pytest.fixture
def stream(setup, redis_url):
    prefix = S.new_prefix()
    S.with_prefix(setup, prefix)
    yield f"{prefix}:ratings"
    S.drop_stream(redis_url, prefix)


def test_produce_stream_then_nightly(setup, stream, redis_url, tmp_path):
    sent = S.produce(setup, 6000, late=0.02, bad=0.01)
    state = setup.fresh_consumer(tmp_path / "state")
    proc = S.consume(setup, state)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["entries"] == report["acknowledged"] == sent["entries"] == 6000
    assert report["good"] + report["quarantined"] + report["too_late"] == 6000
    assert 0 < report["too_late"] <= sent["late"]  # held back far behind the stream: their windows had closed
    assert report["lake_commits"] >= 1 and report["partitions"]
    # all 6,000 waited: reads of 500, then 1,000 and 2,000 (a full read doubles the next), then the rest
    assert report["batches"] == 4
    assert report["freshness_p99_s"] is not None
    client = redis.Redis.from_url(redis_url)
    assert client.xpending(stream, "millrace")["pending"] == 0
    client.close()

    lake = S.lake_rows(setup, state)
    # the windows stand at the newest event time read: no committed row is newer
    assert dt.datetime.fromisoformat(report["watermark"]) >= pc.max(lake.column("timestamp")).as_py()
    quarantine = S.quarantined(setup, state)
    reasons = {r for r, _ in quarantine}
    assert {"too_late", "malformed_record"} <= reasons
    # every entry is a lake row, a quarantined row or a superseded duplicate of a lake row
    assert lake.num_rows + len(quarantine) == 6000
    assert lake.num_rows == len(set(zip(lake.column("userId").to_pylist(), lake.column("movieId").to_pylist())))

    users, movies = S.entities(lake)
    online = S.online_values(setup, state, users, movies)
    nightly = S.millrace(setup, state, "nightly", "--stages", "ingest,features,materialize")
    assert nightly.returncode == 0, nightly.stdout + nightly.stderr
    assert "ratings: nothing to ingest" in nightly.stdout  # the stream's files are committed already
    assert S.lake_rows(setup, state).equals(lake)
    # what the stream wrote online is what the batch computes from the same lake
    assert online == S.offline_latest(setup, state, users, movies)
    assert S.online_values(setup, state, users, movies) == online

    # a forced batch re-ingest of the same partitions reads the same landing files: no doubling
    again = S.millrace(setup, state, "ingest", "--source", "ratings", "--from", "1990-01-01", "--to", "2030-01-01",
                       "--no-expectations")
    assert again.returncode == 0, again.stdout + again.stderr
    assert S.lake_rows(setup, state).equals(lake)
    # and a consumer started again finds nothing to do
    proc = S.consume(setup, state)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["entries"] == 0
    assert S.lake_rows(setup, state).equals(lake)


def test_a_batch_writer_holding_the_source_defers_the_lake_commit_not_the_online_update(setup, stream, redis_url,
                                                                                       tmp_path):
    """A nightly's ingest holding the source's write lock: the stream keeps landing and updating the
    online store, its lake commits (and so its acknowledgements) wait until the lock is free."""
    import subprocess
    import time

    from millrace.pipelines.lock import source_lock

    state = setup.fresh_consumer(tmp_path / "state")
    consumer = subprocess.Popen(MILLRACE + ["--project", str(setup.project), "stream", "--source", "ratings",
                                              "--until-idle", "3", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(state))
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 120
        while not _registered(client, stream) and time.monotonic() < deadline:  # started and ready
            time.sleep(0.1)
        with source_lock(str(state), "ratings", command="a nightly's ingest"):
            S.produce(setup, 2000, late=0.0, bad=0.0)
            time.sleep(3)  # three commit intervals with the lock held
            assert client.xpending(stream, "millrace")["pending"] == 2000  # landed, not acknowledged
        out, err = consumer.communicate(timeout=300)
    finally:
        consumer.kill()
        client.close()
    assert consumer.returncode == 0, out + err
    report = json.loads(out)
    assert report["commits_deferred"] >= 1 and "lake commit deferred" in err
    assert report["entries"] == report["acknowledged"] == 2000 and report["online_written"]
    assert S.lake_rows(setup, state).num_rows + len(S.quarantined(setup, state)) == 2000


def _registered(client, stream: str) -> bool:
    try:
        return bool(client.xinfo_consumers(stream, "millrace"))
    except redis.ResponseError:
        return False  # no group yet
