"""The serving tier's online read stays light: importing ``millrace.features.online`` and reading a
materialized store loads neither Feast, Beam, torch nor MLflow, and the import takes a fraction of
``import feast`` (measured in a fresh interpreter, both in the same run). The online write
(``millrace.features.online_write``, for the streaming job) is as light."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.features.typed_state import typed_state

FORBIDDEN = ("feast", "apache_beam", "torch", "mlflow")


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_and_read_load_no_heavy_package(tmp_path, monkeypatch):
    project, _, _ = typed_state(tmp_path, monkeypatch)
    got = _run(f"""
        import json, sys, time
        t = time.perf_counter()
        import millrace.features.online as online
        seconds = time.perf_counter() - t
        from millrace.contracts.project import load_project
        from millrace.features.spec import load_features
        project = load_project({str(project.root)!r})
        rows = online.OnlineReader(project, load_features(project)).read("user_typed", [1, 2]).to_pylist()
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({FORBIDDEN!r}))
        print(json.dumps({{"seconds": seconds, "heavy": heavy, "rows": len(rows), "count": rows[0]["events_all"]}}))
    """)
    assert got["heavy"] == [], got
    assert got["rows"] == 2 and got["count"] > 0, got


def test_online_write_loads_no_heavy_package(tmp_path, monkeypatch):
    project, _, _ = typed_state(tmp_path, monkeypatch)
    got = _run(f"""
        import datetime as dt, json, sys
        import pyarrow as pa
        from millrace.contracts.project import load_project
        from millrace.features.online import OnlineReader
        from millrace.features.online_write import OnlineWriter
        from millrace.features.spec import load_features
        project = load_project({str(project.root)!r})
        features = load_features(project)
        at = dt.datetime(2022, 1, 1, tzinfo=dt.timezone.utc)
        batch = pa.table({{"user": [1, 99], "event_timestamp": pa.array([at, at], pa.timestamp("us", tz="UTC")),
                           "events_all": [7, 8], "accounts": [1, 2], "label_last": ["x", None],
                           "amount_sum": [1.5, None]}})
        written = OnlineWriter(project, features).write("user_typed", batch)
        rows = OnlineReader(project, features).read("user_typed", [99]).to_pylist()
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({FORBIDDEN!r}))
        print(json.dumps({{"heavy": heavy, "written": written, "rows": rows}}))
    """)
    assert got["heavy"] == [], got
    assert got["written"] == 2
    assert got["rows"] == [{"user": 99, "events_all": 8, "accounts": 2, "label_last": None, "amount_sum": None}]


def test_import_time_is_a_fraction_of_feasts():
    probe = """
        import json, re, time
        t = time.perf_counter()
        import {module}
        seconds = time.perf_counter() - t
        peak = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)  # peak RSS of this process
        print(json.dumps({{"seconds": seconds, "rss_mb": int(peak) / 1024}}))
    """
    ours = _run(probe.format(module="millrace.features.online"))
    feast = _run(probe.format(module="feast"))
    print(f"import millrace.features.online: {ours['seconds']:.2f} s, {ours['rss_mb']:.0f} MB; "
          f"import feast: {feast['seconds']:.2f} s, {feast['rss_mb']:.0f} MB")
    assert ours["seconds"] < feast["seconds"] / 4, (ours, feast)
    assert ours["rss_mb"] < feast["rss_mb"] / 2, (ours, feast)
