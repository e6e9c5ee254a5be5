"""What the streaming tests share: a producer's landing zone of the example, a consumer state that
holds the movie catalogue but no ratings (the stream is their only way in), a stream of one test's
own, and the CLI runs and readings the tests compare."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import redis
import yaml

from tests.conftest import EXAMPLE, MILLRACE, cli_env

STREAM_VIEWS = ("user_activity", "user_genres", "movie_popularity")


@contextmanager
def state_dir(path: Path):
    before = os.environ.get("MILLRACE_STATE_DIR")
    os.environ["MILLRACE_STATE_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MILLRACE_STATE_DIR", None)
        else:
            os.environ["MILLRACE_STATE_DIR"] = before


@dataclass(frozen=True)
class StreamSetup:
    project: Path      # a copy of the example, streaming settings for tests
    producer: Path     # state whose landing zone holds the example (what `stream produce` replays)
    consumer: Path     # state with the movies committed and no ratings landed

    def fresh_consumer(self, target: Path) -> Path:
        shutil.copytree(self.consumer, target)
        return target


def make_setup(root: Path, redis_url: str, backlog_batch_entries: int = 4000) -> StreamSetup:
    """Micro-batches of 500 entries, growing to ``backlog_batch_entries`` while entries wait."""
    from millrace.contracts.project import load_project
    from millrace.pipelines.example import land
    from millrace.pipelines.ingest import ingest

    project = root / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".millrace", ".airflow"))
    config = yaml.safe_load((project / "millrace.yaml").read_text())
    config["streaming"] = {"redis": redis_url, "prefix": "unused", "commit_seconds": 1, "batch_entries": 500,
                           "backlog_batch_entries": backlog_batch_entries}
    (project / "millrace.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    producer, consumer = root / "producer", root / "consumer"
    with state_dir(producer):
        land(load_project(project))
    with state_dir(consumer):
        p = load_project(project)
        land(p)
        shutil.rmtree(Path(p.landing) / "ratings")
        ingest(p, "movies", validate=False)
    return StreamSetup(project, producer, consumer)


def with_prefix(setup: StreamSetup, prefix: str) -> Path:
    """The project's millrace.yaml pointed at a stream prefix of the caller's own."""
    config = yaml.safe_load((setup.project / "millrace.yaml").read_text())
    config["streaming"]["prefix"] = prefix
    (setup.project / "millrace.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return setup.project


def new_prefix() -> str:
    return f"mrt_{secrets.token_hex(5)}"


def produce(setup: StreamSetup, limit: int, late: float = 0.02, bad: float = 0.01) -> dict:
    proc = millrace(setup, setup.producer, "stream", "produce", "--source", "ratings", "--rate", "50000",
                    "--limit", str(limit), "--late-share", str(late), "--bad-share", str(bad), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def consume(setup: StreamSetup, state: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    return millrace(setup, state, "stream", "--source", "ratings", "--until-idle", "1", "--json", *args,
                    **env_extra)


def millrace(setup: StreamSetup, state: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(MILLRACE + ["--project", str(setup.project), *args], capture_output=True, text=True,
                          env=cli_env(state, **env_extra), timeout=600)


def drop_stream(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()


def lake_rows(setup: StreamSetup, state: Path) -> pa.Table:
    """The committed ratings, sorted (one table per state, comparable across runs)."""
    from millrace.contracts.project import load_project
    from millrace.pipelines import lake

    with state_dir(state):
        p = load_project(setup.project)
        table = lake.read_source(p.lake, "ratings", "month")
    return table.sort_by([("userId", "ascending"), ("movieId", "ascending")])


def quarantined(setup: StreamSetup, state: Path) -> list[tuple[str, bytes]]:
    """(reason, record) of every quarantined row: the lake's committed partitions' and the stream's own."""
    from millrace.contracts.project import load_project
    from millrace.pipelines import lake
    from millrace.pipelines.stream_files import read_stream_quarantine

    with state_dir(state):
        p = load_project(setup.project)
        both = pa.concat_tables([lake.read_quarantine(p.quarantine, p.lake, "ratings", "month"),
                                 read_stream_quarantine(p.quarantine, "ratings")])
    return sorted(zip(both.column("reason").to_pylist(), both.column("payload").to_pylist()))


def online_values(setup: StreamSetup, state: Path, users: list[int], movies: list[int]) -> dict[str, list[dict]]:
    from millrace.contracts.project import load_project
    from millrace.features.online import OnlineReader
    from millrace.features.spec import load_features

    with state_dir(state):
        p = load_project(setup.project)
        reader = OnlineReader(p, load_features(p), clock=None)
        return {v: reader.read(v, users if v.startswith("user") else movies).to_pylist() for v in STREAM_VIEWS}


def offline_latest(setup: StreamSetup, state: Path, users: list[int], movies: list[int]) -> dict[str, list[dict]]:
    """The newest offline row of each entity, in the online read's shape: what batch computed."""
    from millrace.contracts.project import load_project
    from millrace.features import offline
    from millrace.features.materialize import latest_per_key
    from millrace.features.spec import load_features

    out = {}
    with state_dir(state):
        p = load_project(setup.project)
        features = load_features(p)
        for v in STREAM_VIEWS:
            key = features.join_keys(v)
            key = key if isinstance(key, str) else key[0]  # the example's views have one key each
            latest = latest_per_key(offline.read_view(p.offline, v), key, None)
            wanted = users if v.startswith("user") else movies
            rows = {r[key]: r for r in latest.select([key, *features.feature_names(v)]).to_pylist()}
            out[v] = [rows.get(k, {key: k, **{n: None for n in features.feature_names(v)}}) for k in wanted]
    return out


def entities(table: pa.Table) -> tuple[list[int], list[int]]:
    return (sorted(pc.unique(table.column("userId")).to_pylist()),
            sorted(pc.unique(table.column("movieId")).to_pylist()))
