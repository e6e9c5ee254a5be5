"""Corrupt state is one line naming the file and the fix (exit 2), never other features: a truncated,
swapped or unmanifested offline table, a garbled manifest, a garbled Feast registry. And a deleted
online store (SQLite file removed, Redis keys flushed) is refilled by the next materialize."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from millrace.contracts.errors import EXIT_BAD_INPUT
from millrace.features import feast_repo, offline, stores
from millrace.features.errors import CorruptTable, NothingBuilt
from millrace.features.materialize import materialize
from millrace.features.training_set import training_set
from tests.features.typed_state import assert_same_reads, typed_state

VIEW, OTHER = "account_typed", "user_typed"


@pytest.fixture
def typed(tmp_path, monkeypatch):
    return typed_state(tmp_path, monkeypatch)


def _data(project, view=VIEW) -> Path:
    return Path(offline.data_path(project.offline, view))


def _manifest(project, view=VIEW) -> Path:
    return Path(offline.view_dir(project.offline, view)) / offline.MANIFEST


def _assert_names(exc: BaseException, path: Path | str, *needles: str) -> None:
    message = str(exc)
    assert message.startswith(f"{path}: ") and "\n" not in message and "(fix: " in message, message
    for needle in needles:
        assert needle in message, message


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "truncated table": lambda p: _truncate(_data(p)),
    "swapped table": lambda p: shutil.copyfile(_data(p, OTHER), _data(p)),
    "table without a manifest": lambda p: _manifest(p).unlink(),
    "garbled manifest": lambda p: _manifest(p).write_text('{"view": "account_typed", "rows": 1'),
    "emptied manifest": lambda p: _manifest(p).write_text(""),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_offline_tables_are_refused_by_every_reader(typed, case):
    project, features, _ = typed
    CORRUPTIONS[case](project)
    where = _manifest(project) if "manifest" in case and "without" not in case else _data(project)
    for read in (lambda: offline.read_view(project.offline, VIEW),
                 lambda: materialize(project, features, views=[VIEW], full=True),
                 lambda: training_set(project, features, _spine(), [VIEW])):
        with pytest.raises(CorruptTable) as info:
            read()
        _assert_names(info.value, where, f"--view {VIEW}")
        assert info.value.exit_code == EXIT_BAD_INPUT
    offline.read_view(project.offline, OTHER)  # the other view is untouched and still reads


def _spine():
    import datetime as dt

    import pyarrow as pa

    return pa.table({"account": ["a1"], "event_timestamp": pa.array([dt.datetime(2021, 4, 1, tzinfo=dt.timezone.utc)],
                                                                     pa.timestamp("us", tz="UTC"))})


@pytest.mark.parametrize("garble", [lambda b: b[: len(b) // 2], lambda b: os.urandom(len(b)),
                                    lambda b: b[:60] + bytes([b[60] ^ 0xFF]) + b[61:]],
                         ids=["truncated", "random", "one byte flipped"])
def test_a_garbled_registry_is_one_line(typed, garble):
    project, features, _ = typed
    path = Path(feast_repo.registry_path(project))
    path.write_bytes(garble(path.read_bytes()))
    for run in (lambda: materialize(project, features), lambda: feast_repo.apply(project, features)):
        with pytest.raises(CorruptTable) as info:
            run()
        _assert_names(info.value, path, "registry", "millrace features build")


@pytest.mark.slow
def test_the_cli_says_it_in_one_line_with_exit_2(typed, tmp_path):
    project, _, _ = typed
    path = Path(feast_repo.registry_path(project))
    path.write_bytes(path.read_bytes()[:100])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env["MILLRACE_STATE_DIR"] = project.state_dir
    proc = subprocess.run([sys.executable, "-m", "millrace.pipelines.cli", "--project", str(project.root),
                           "features", "materialize"], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == EXIT_BAD_INPUT and len(lines) == 1, proc.stderr
    assert str(path) in lines[0] and "Traceback" not in proc.stderr, proc.stderr


# -- a deleted online store is refilled ---------------------------------------------------------------

def _refill_and_check(project, features) -> None:
    reports = materialize(project, features)
    assert all(r.refilled and r.written == r.entities > 0 for r in reports), reports
    assert_same_reads(project, features, feast_repo.feature_store(project))
    again = materialize(project, features)
    assert [r.written for r in again] == [0, 0] and not any(r.refilled for r in again), again


def test_a_deleted_sqlite_store_is_refilled(typed):
    from millrace.features.online import OnlineReader

    project, features, _ = typed
    reader = OnlineReader(project, features)  # a serving process that stays up throughout
    before = reader.read(VIEW, ["a1", "zoë"]).to_pylist()
    assert [r.written for r in materialize(project, features)] == [0, 0]  # the record is trusted...
    os.remove(stores.sqlite_path(project))
    with pytest.raises(NothingBuilt, match="does not exist"):
        reader.read(VIEW, ["a1"])
    _refill_and_check(project, features)  # ...until the store it describes is gone
    assert reader.read(VIEW, ["a1", "zoë"]).to_pylist() == before  # it reads the new file


def test_a_dropped_view_table_is_refilled(typed):
    import sqlite3

    project, features, _ = typed
    con = sqlite3.connect(stores.sqlite_path(project))
    con.execute(f'DROP TABLE "{project.name}_{VIEW}"')
    con.commit()
    con.close()
    reports = {r.view: r for r in materialize(project, features)}
    assert reports[VIEW].refilled and reports[VIEW].written == reports[VIEW].entities
    assert not reports[OTHER].refilled and reports[OTHER].written == 0
    assert_same_reads(project, features, feast_repo.feature_store(project))


@pytest.mark.redis
def test_a_flushed_redis_store_is_refilled(typed_redis):
    """Flushing is simulated on this project's keys only (the test Redis is shared): every key a
    FLUSHDB would remove for it, the marker included."""
    project, features, _, client = typed_redis
    keys = list(client.scan_iter(match=b"*" + project.name.encode(), count=1000))
    assert len(keys) > 1
    client.delete(*keys)
    _refill_and_check(project, features)
