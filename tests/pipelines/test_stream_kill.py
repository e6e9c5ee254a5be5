"""Exactly-once effect: a stream consumer killed (SIGKILL) mid-window, after its landing files and
before its state, during the online update, and after the lake commit before the acknowledgement,
then started again, leaves the lake, the quarantine and the online store equal to a run that was
never killed: no row lost, none doubled."""
from __future__ import annotations

import json

import pytest

from tests.pipelines import streams as S

pytestmark = [pytest.mark.redis, pytest.mark.slow]

RECORDS = 3000   # six micro-batches of 500 (none bigger); the consumer commits the lake every second

POINTS = ["stream_mid_batch:3", "stream_after_landing:2", "stream_mid_online:4", "stream_after_lake_commit:1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, redis_url):
    return S.make_setup(tmp_path_factory.mktemp("stream-kill"), redis_url, backlog_batch_entries=500)


def _outcome(setup, state) -> dict:
    lake = S.lake_rows(setup, state)
    users, movies = S.entities(lake)
    return {"lake": lake, "quarantine": S.quarantined(setup, state),
            "online": S.online_values(setup, state, users, movies)}


def _streamed(setup, redis_url, state, kill_at: str | None) -> dict:
    prefix = S.new_prefix()
    S.with_prefix(setup, prefix)
    try:
        S.produce(setup, RECORDS, late=0.02, bad=0.01)
        if kill_at:
            killed = S.consume(setup, state, MILLRACE_KILL_AT=kill_at)
            assert killed.returncode == -9, f"{kill_at}: not killed\n{killed.stdout}{killed.stderr}"
        proc = S.consume(setup, state)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        import redis

        client = redis.Redis.from_url(redis_url)
        assert client.xpending(f"{prefix}:ratings", "millrace")["pending"] == 0
        client.close()
        return {"report": report, **_outcome(setup, state)}
    finally:
        S.drop_stream(redis_url, prefix)


@pytest.fixture(scope="module")
def reference(setup, redis_url, tmp_path_factory):
    state = setup.fresh_consumer(tmp_path_factory.mktemp("reference") / "state")
    return _streamed(setup, redis_url, state, None)


@pytest.mark.parametrize("point", POINTS)
def test_killed_and_restarted_ends_as_if_never_killed(setup, redis_url, reference, point, tmp_path):
    state = setup.fresh_consumer(tmp_path / "state")
    after = _streamed(setup, redis_url, state, point)
    assert after["report"]["reclaimed"] > 0 or point.startswith("stream_after_lake_commit"), after["report"]
    assert after["lake"].num_rows == reference["lake"].num_rows > 0
    assert after["lake"].equals(reference["lake"])
    assert after["quarantine"] == reference["quarantine"]
    assert after["online"] == reference["online"]
