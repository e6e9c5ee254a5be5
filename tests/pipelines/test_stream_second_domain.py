"""``millrace stream`` on the second domain (tests/domains/flights), which nothing in millrace knows:
its ';'-separated landing files replayed as JSON records (null tokens as the producer wrote them),
monthly partitions, derived columns, and views keyed on a composite key (origin, dest) and on a
derived one (origin, dep_hour). What the stream writes online equals the batch's offline tables of
the same lake, view by view and entity by entity."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import MILLRACE, ROOT, cli_env
from tests.domains.flights_data import PROJECT, land
from tests.pipelines import streams as S

pytestmark = [pytest.mark.redis, pytest.mark.slow]
VIEWS = ("route_delays", "carrier_delays", "slot_delays")


def _cli(project: Path, state: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(MILLRACE + ["--project", str(project), *args], capture_output=True, text=True,
                          env=cli_env(state), timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _online_and_offline(project: Path, state: Path) -> dict[str, tuple[list, list]]:
    """Per view: (what the online store holds, the newest offline row) for every entity the batch built."""
    from millrace.contracts.project import load_project
    from millrace.features import offline
    from millrace.features.materialize import latest_per_key
    from millrace.features.online import OnlineReader
    from millrace.features.spec import load_features

    out = {}
    with S.state_dir(state):
        p = load_project(project)
        features = load_features(p)
        reader = OnlineReader(p, features, clock=None)
        for view in VIEWS:
            keys = features.join_keys(view)
            keys = [keys] if isinstance(keys, str) else list(keys)
            columns = [*keys, *features.feature_names(view)]
            latest = latest_per_key(offline.read_view(p.offline, view), keys, None)
            latest = latest.sort_by([(k, "ascending") for k in keys])
            online = reader.read(view, latest.select(keys))
            out[view] = (online.select(columns).to_pylist(), latest.select(columns).to_pylist())
    return out


@pytest.fixture
def flights_stream(tmp_path, redis_url):
    project = tmp_path / "flights"
    shutil.copytree(PROJECT, project)
    prefix = S.new_prefix()
    config = yaml.safe_load((project / "millrace.yaml").read_text())
    config["streaming"] = {"redis": redis_url, "prefix": prefix, "commit_seconds": 1, "batch_entries": 500}
    (project / "millrace.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    producer, consumer = tmp_path / "producer", tmp_path / "consumer"
    landed = land(producer / "landing")
    yield project, producer, consumer, landed
    S.drop_stream(redis_url, prefix)


def test_stream_on_composite_and_derived_keys_equals_batch(flights_stream):
    project, producer, consumer, landed = flights_stream
    sent = json.loads(_cli(project, producer, "stream", "produce", "--source", "flights", "--rate", "50000",
                           "--late-share", "0.02", "--bad-share", "0.01", "--json").stdout)
    assert sent["entries"] == landed.rows
    report = json.loads(_cli(project, consumer, "stream", "--source", "flights", "--until-idle", "1",
                             "--json").stdout)
    assert report["entries"] == report["acknowledged"] == landed.rows
    assert report["good"] + report["quarantined"] + report["too_late"] == landed.rows
    assert report["too_late"] > 0 and report["quarantined"] >= landed.bad
    assert set(report["online_written"]) == set(VIEWS) and all(report["online_written"].values())

    # the batch features of the same lake (no materialize: the online store stays as the stream left it)
    nightly = _cli(project, consumer, "nightly", "--stages", "ingest,features")
    assert "flights: nothing to ingest" in nightly.stdout
    for view, (online, offline) in _online_and_offline(project, consumer).items():
        assert len(online) > 1, view
        assert online == offline, view
