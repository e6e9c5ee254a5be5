"""Writers of a source are serialized by a lock that names its holder and survives kill -9;
readers see whole commits while a writer replaces partitions under them. Real processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from millrace.contracts.loader import load_contract
from millrace.pipelines import lake, lock
from millrace.pipelines.decode import LandingFile, decode_file
from millrace.pipelines.errors import SourceBusy
from millrace.pipelines.write import Locations, write_partition
from tests.conftest import EXAMPLE
from tests.pipelines.test_kill import (FAST, MONTHS, SOURCE, assert_equals_clean, build_landing, leftovers,
                                       snapshot)

RATINGS = EXAMPLE / "contracts" / "ratings.yaml"
HOLD = textwrap.dedent("""
    import sys, time
    from millrace.pipelines.lock import source_lock
    with source_lock(sys.argv[1], "ratings", command="test holder"):
        print("held", flush=True)
        time.sleep(120)
""")


def _cli(project: Path, state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "millrace.pipelines.cli", "--project", str(project), "ingest", "--source", SOURCE,
            *args]


def _env(state: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env["MILLRACE_STATE_DIR"] = str(state)
    return env


def _holder(state: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(state)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_fails_with_75_naming_the_holder_and_kill_9_frees_the_lock(tmp_path):
    state = tmp_path / "state"
    holder = _holder(state)
    try:
        with pytest.raises(SourceBusy) as info:
            with lock.source_lock(str(state), "ratings"):
                pass
        message = str(info.value)
        assert f"pid {holder.pid} on " in message and "(`test holder`)" in message
        assert message.startswith(f"{state}/locks/ratings.lock: source 'ratings' is being written by")
        assert "\n" not in message and info.value.retryable
        assert lock.holder(str(state), "ratings").pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.holder(str(state), "ratings") is None       # the kernel dropped it with the process
    with lock.source_lock(str(state), "ratings") as me:
        assert me.pid == os.getpid()
        with pytest.raises(SourceBusy):                      # flock is per open file: even this process waits
            with lock.source_lock(str(state), "ratings"):
                pass


def test_a_writer_given_a_wait_queues_at_the_lock_and_gives_up_after_it(tmp_path):
    state = tmp_path / "state"
    holder = _holder(state)
    try:
        began = time.monotonic()
        with pytest.raises(SourceBusy):
            with lock.source_lock(str(state), "ratings", wait=1.0):
                pass
        assert time.monotonic() - began >= 1.0
        threading.Timer(1.0, holder.send_signal, (signal.SIGKILL,)).start()
        began = time.monotonic()
        with lock.source_lock(str(state), "ratings", wait=30.0) as me:  # the holder dies a second later
            assert me.pid == os.getpid() and 0.9 <= time.monotonic() - began < 30
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def setup(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "millrace.yaml").write_text((EXAMPLE / "millrace.yaml").read_text())
    (project / "contracts").mkdir()
    (project / "contracts" / "ratings.yaml").write_text(RATINGS.read_text())
    (project / "contracts" / "movies.yaml").write_text((EXAMPLE / "contracts" / "movies.yaml").read_text())
    state = tmp_path / "state"
    expected = build_landing(state / "landing")
    return project, state, expected


@pytest.mark.slow
def test_ingest_while_another_writer_holds_the_lock_exits_75_in_one_line(setup):
    project, state, _ = setup
    holder = _holder(state)
    try:
        proc = subprocess.run(_cli(project, state, *FAST), env=_env(state), capture_output=True, text=True,
                              timeout=300)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode == 75, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and f"pid {holder.pid}" in errors[0]
    assert not (state / "lake").exists()
    proc = subprocess.run(_cli(project, state, *FAST), env=_env(state), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_ingests_of_one_range_lose_nothing(setup):
    """Both started at once over the same range: one may be refused (75, naming the other); the
    lake ends complete, with nothing deleted by the other run's cleanup."""
    project, state, expected = setup
    span = ("--from", "2015-01-01", "--to", "2015-03-31", *FAST)
    procs = [subprocess.Popen(_cli(project, state, *span), env=_env(state), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes in ([0, 0], [0, 75]), [(p.returncode, err) for p, _, err in results]
    for p, _, err in results:
        if p.returncode == 75:
            other = next(q for q, _, _ in results if q is not p)
            assert f"pid {other.pid} on " in err
    snap = snapshot(project, state)
    assert sorted(snap.manifests) == list(MONTHS) and snap.rows == expected.rows
    assert [q[:4] for q in snap.quarantine] == expected.quarantine
    assert leftovers(state, snap) == {}
    again = subprocess.run(_cli(project, state, *FAST), env=_env(state), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert_equals_clean(snapshot(project, state), snap, state)


# -- readers while a writer commits ---------------------------------------------------------------

HEADER = "userId,movieId,rating,timestamp\n"
WRITER = textwrap.dedent("""
    import sys, time
    from millrace.contracts.loader import load_contract
    from millrace.pipelines.decode import LandingFile, decode_file
    from millrace.pipelines.write import Locations, write_partition
    contract, root, path, until = load_contract(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    where = Locations(root + "/lake", root + "/q", root + "/state")
    landing = LandingFile(path, "2009-12-14", "2009-12")
    data = open(path, "rb").read()
    n = 0
    while time.time() < until:
        decoded = decode_file(contract, "ratings", landing, data, 2**62, f"w{n}")
        write_partition(contract, "ratings", "2009-12", [decoded], where, f"w{n:05d}")
        n += 1
    print(n)
""")


def _committed(tmp_path: Path, rows: int, run_id: str):
    """One landing file of ``rows`` good rows and one bad one, committed as 2009-12 by ``run_id``."""
    path = tmp_path / "landing" / "2009-12-14" / "r.csv"
    path.parent.mkdir(parents=True)
    path.write_text(HEADER + "".join(f"{u},{u % 97 + 1},4.0,1260759144\n" for u in range(1, rows + 1))
                    + "1,x,4.0,1260759144\n")
    contract = load_contract(RATINGS)
    where = Locations(str(tmp_path / "lake"), str(tmp_path / "q"), str(tmp_path / "state"))
    decoded = decode_file(contract, "ratings", LandingFile(str(path), "2009-12-14", "2009-12"), path.read_bytes(),
                          2**62, "w")
    write_partition(contract, "ratings", "2009-12", [decoded], where, run_id)
    return path, contract, where, decoded


@pytest.mark.slow
def test_readers_see_whole_commits_while_a_writer_replaces_the_partition(tmp_path):
    path, _, where, _ = _committed(tmp_path, 3000, "first")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(RATINGS), str(tmp_path), str(path),
                               str(time.time() + 8)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads, runs = 0, set()
    try:
        while writer.poll() is None:
            [(committed, table)] = lake.snapshot(where.lake, "ratings", "month")
            quarantine = lake.read_quarantine(where.quarantine, where.lake, "ratings", "month")
            assert table.num_rows == committed.manifest.rows == 3000
            assert quarantine.num_rows == 1 and quarantine.column("reason").to_pylist() == ["type_mismatch"]
            runs.add(committed.manifest.run_id)
            reads += 1
    finally:
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    commits = int(out)
    assert commits >= 5 and reads >= 5, (commits, reads)
    assert len(runs) >= 3, "the reader saw the partition change under it"


def test_a_reader_whose_files_are_replaced_mid_read_retries_at_the_new_manifest(tmp_path, monkeypatch):
    _, contract, where, decoded = _committed(tmp_path, 100, "old")
    [old] = lake.committed_partitions(where.lake, "ratings", "month")
    real_read = lake.read_bytes
    state = {"replaced": False}

    def read_bytes(p):
        if p.endswith("part-old-00000.parquet") and not state["replaced"]:
            state["replaced"] = True  # another run commits and cleans up between manifest and data read
            write_partition(contract, "ratings", "2009-12", [decoded], where, "new")
        return real_read(p)

    monkeypatch.setattr(lake, "read_bytes", read_bytes)
    [(committed, table)] = lake.snapshot(where.lake, "ratings", "month")
    assert state["replaced"] and committed.manifest.run_id == "new" and table.num_rows == 100
    assert lake.read_partition(old).num_rows == 100   # an old handle reads the newer commit whole
