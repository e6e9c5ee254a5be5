"""``millrace stream produce`` against the real Redis: the landed records, one per entry, in landing
order, at the asked rate; late ones held back and sent last, bad ones cut short; each entry readable
by the batch reader as a JSON-lines record."""
from __future__ import annotations

import json
import secrets
import subprocess
from collections import Counter
from itertools import islice

import pytest
import redis
import yaml

from millrace.contracts.project import load_project
from millrace.pipelines.example import land
from millrace.pipelines.readers import read_records
from millrace.pipelines.stream_produce import landed_records, produce
from tests.conftest import MILLRACE, cli_env

pytestmark = pytest.mark.redis


@pytest.fixture
def streamed(project_dir, redis_url):
    """The example landed, its streams under a prefix of this test's own (deleted afterwards)."""
    prefix = f"mrt_{secrets.token_hex(5)}"
    config = yaml.safe_load((project_dir / "millrace.yaml").read_text())
    config["streaming"] = {"redis": redis_url, "prefix": prefix}
    (project_dir / "millrace.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    project = load_project(project_dir)
    land(project)
    client = redis.Redis.from_url(redis_url)
    yield project, client
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()


def _landed_text(project, n: int) -> list[dict]:
    """The text of the first ``n`` landed records that the batch reader can read, as it reads them."""
    from millrace.pipelines import landing, lake

    contract, rows, seen = project.contract("ratings"), [], 0
    for f in landing.scan(project.landing, "ratings", contract).files:
        records = read_records(f.path, lake.read_bytes(f.path), contract.field_names, contract.landing)
        ok = records.reason.is_null().to_numpy(zero_copy_only=False)[: n - seen]
        rows += [r for r, good in zip(records.text.slice(0, n - seen).to_pylist(), ok) if good]
        seen += min(len(ok), n - seen)
        if seen >= n:
            return rows
    return rows


def _entries(client, key: str) -> list[dict]:
    return [{k.decode(): v for k, v in fields.items()} for _, fields in client.xrange(key)]


def test_the_landed_records_go_one_per_entry_in_landing_order(streamed):
    project, client = streamed
    report = produce(project, "ratings", rate=50_000, limit=2_000, client=client)
    expected = list(islice(landed_records(project, "ratings"), 2_000))
    entries = _entries(client, project.stream_key("ratings"))
    assert (report.entries, report.late, report.bad, len(entries)) == (2_000, 0, 0, 2_000)
    assert [e["record"] for e in entries] == expected
    assert all(float(e["produced_at"]) > 1.7e9 for e in entries)
    fields = project.contract("ratings").field_names
    read = read_records("stream", b"\n".join(expected), fields, project.contract("ratings").landing, fmt="jsonl")
    assert read.text.num_rows == 2_000
    readable = read.reason.is_null().to_numpy(zero_copy_only=False)
    assert readable.sum() > 1_900  # the example's few planted unreadable records stay unreadable
    assert read.text.filter(readable).to_pylist() == _landed_text(project, 2_000)


def test_late_records_are_held_back_and_sent_last(streamed):
    project, client = streamed
    report = produce(project, "ratings", rate=50_000, late_share=0.05, limit=2_000, client=client)
    expected = list(islice(landed_records(project, "ratings"), 2_000))
    records = [e["record"] for e in _entries(client, project.stream_key("ratings"))]
    assert report.entries == 2_000 and 50 < report.late < 160 and Counter(records) == Counter(expected)
    on_time, late = records[: -report.late], records[-report.late:]
    rest = iter(expected)
    assert all(any(r == e for e in rest) for r in on_time)  # the others keep landing order

    def newest(batch):
        stamps = (str(_json(r).get("timestamp", "")) for r in batch)
        return max(int(t) for t in stamps if t.isdigit())
    assert newest(late) <= newest(on_time)  # behind the stream's event time


def test_bad_entries_are_records_cut_short(streamed):
    project, client = streamed
    report = produce(project, "ratings", rate=50_000, bad_share=0.02, limit=2_000, client=client)
    expected = list(islice(landed_records(project, "ratings"), 2_000))
    records = [e["record"] for e in _entries(client, project.stream_key("ratings"))]
    cut = [i for i, (r, e) in enumerate(zip(records, expected)) if r != e]
    assert 15 < report.bad == len(cut) < 70
    assert all(expected[i].startswith(records[i]) and len(records[i]) < len(expected[i]) for i in cut)


def test_the_rate_is_kept(streamed):
    project, client = streamed
    report = produce(project, "ratings", rate=4_000, limit=2_000, client=client)
    assert 0.45 < report.seconds < 1.5, report


def test_the_cli_reports_what_it_sent_and_an_unreachable_redis_is_retryable(streamed, tmp_path):
    project, _ = streamed
    root = str(project.root)
    ok = subprocess.run(MILLRACE + ["--project", root, "stream", "produce", "--source", "ratings", "--limit", "50",
                                    "--rate", "1000", "--json"], capture_output=True, text=True,
                        env=cli_env(project.state_dir), timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["entries"] == 50
    down = subprocess.run(MILLRACE + ["--project", root, "stream", "produce", "--source", "ratings", "--limit", "5"],
                          capture_output=True, text=True, timeout=120,
                          env=cli_env(project.state_dir, MILLRACE_STREAM_REDIS="redis://127.0.0.1:6390/0"))
    assert down.returncode == 75, down.stdout + down.stderr
    assert down.stderr.count("\n") == 1 and down.stderr.startswith("error: "), down.stderr
    unknown = subprocess.run(MILLRACE + ["--project", root, "stream", "produce", "--source", "nope"],
                             capture_output=True, text=True, env=cli_env(project.state_dir), timeout=120)
    assert unknown.returncode == 2 and "unknown source 'nope'" in unknown.stderr, unknown.stderr


def _json(record: bytes) -> dict:
    try:
        return json.loads(record)
    except ValueError:  # the example's planted unreadable records
        return {}
