"""Damaged index files are refused, and reading them never takes the caller down.

FAISS's reader is a memory-corruption surface, so ``manifest.load`` checks the size and the SHA-256
before FAISS sees a byte. The first set (bit flips, truncations, appended bytes, the manifest left
as written) must all be refused by those checks, in one child process that must exit normally.
The second set rewrites the manifest's size and hash to match the damaged bytes (whoever damaged
the file controls the manifest too), so the bytes do reach FAISS: each is loaded in a process of
its own, and whatever happens there the test process carries on; those refused must be refused
with IndexCorrupt.
"""
from __future__ import annotations

import collections
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from millrace.indexing import manifest
from tests.conftest import ROOT
from tests.indexing.test_manifest import edit_manifest, store_ivf

CHILD_TIMEOUT_S = 120

# One interpreter loads every folder and prints one JSON line each.
LOAD_ALL = textwrap.dedent("""
    import json, sys
    from millrace.indexing import manifest
    for folder in json.load(open(sys.argv[1])):
        try:
            loaded = manifest.load(folder)
            out = {"folder": folder, "outcome": "loaded", "ntotal": loaded.index.ntotal}
        except Exception as exc:
            out = {"folder": folder, "outcome": "refused", "error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(out), flush=True)
""")

# Each folder in a process of its own, forked from one that has imported FAISS already (a fresh
# interpreter per case costs about a second of imports here). The forked process gets an address
# space bound (a size field FAISS trusts must fail, not swap) and an alarm (a reader must not spin).
LOAD_EACH_FORKED = textwrap.dedent("""
    import json, os, resource, signal, sys
    from millrace.indexing import factory, manifest  # noqa: F401
    import faiss, pyarrow.dataset  # noqa: F401  (what load imports lazily, imported once before the forks)

    def in_child(folder):
        if folder == SEGFAULT:  # the harness's own check: a crash is reported, and the next case runs
            os.kill(os.getpid(), signal.SIGSEGV)
        try:
            loaded = manifest.load(folder)
            return {"outcome": "loaded", "ntotal": loaded.index.ntotal}
        except Exception as exc:
            return {"outcome": "refused", "error": type(exc).__name__, "message": str(exc)}

    SEGFAULT = "<segfault>"
    mapped = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    for folder in json.load(open(sys.argv[1])):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), mapped + (2 << 30)))
            signal.alarm(20)
            try:
                out = in_child(folder)
            except BaseException as exc:  # MemoryError and the like: report them, do not hide them
                out = {"outcome": "raised", "error": type(exc).__name__, "message": str(exc)[:300]}
            os.write(write, json.dumps(out).encode())
            os._exit(0)
        os.close(write)
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        os.close(read)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            out = {"outcome": "crashed", "signal": os.WTERMSIG(status)}
        else:
            out = json.loads(b"".join(chunks)) if chunks else {"outcome": "crashed", "exit": os.WEXITSTATUS(status)}
        out["folder"] = folder
        print(json.dumps(out), flush=True)
""")


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    folder, _, _ = store_ivf(tmp_path_factory.mktemp("fuzz-original"), n=2_000, nlist=16)
    return Path(folder)


def corruptions(data: bytes, count: int, seed: int, header: int = 64) -> list[tuple[str, bytes]]:
    """(kind, damaged bytes): single and multi bit flips (a third in the header), truncations
    (0 bytes and one byte short among them) and appended garbage."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, bytes]] = []

    def flipped(offsets) -> bytes:
        damaged = bytearray(data)
        for offset in offsets:
            damaged[offset] ^= 1 << int(rng.integers(0, 8))
        return bytes(damaged)

    for i in range(count):
        kind = ("flip", "flip", "multi-flip", "truncate", "append")[i % 5]
        if kind == "flip":
            limit = header if i % 3 == 0 else len(data)
            out.append((kind, flipped([int(rng.integers(0, limit))])))
        elif kind == "multi-flip":
            offsets = rng.choice(len(data), size=int(rng.integers(2, 32)), replace=False)
            out.append((kind, flipped(int(o) for o in offsets)))
        elif kind == "truncate":
            length = {3: 0, 8: len(data) - 1, 13: 1}.get(i, int(rng.integers(0, len(data))))
            out.append((kind, data[:length]))
        else:
            out.append((kind, data + rng.bytes(int(rng.integers(1, 1000)))))
    return out


def copies(original: Path, where: Path, cases: list[tuple[str, bytes]], *, rehash: bool) -> dict[str, str]:
    """One folder per case (the original manifest and ids, the damaged index): folder -> kind."""
    kinds = {}
    for i, (kind, data) in enumerate(cases):
        folder = where / f"case-{i:03d}-{kind}"
        shutil.copytree(original, folder)
        (folder / manifest.INDEX_FILE).write_bytes(data)
        if rehash:
            edit_manifest(str(folder), index_bytes=len(data), index_sha256=hashlib.sha256(data).hexdigest())
        kinds[str(folder)] = kind
    return kinds


def run_child(script: str, folders: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    (tmp_path / "child.py").write_text(script)
    (tmp_path / "folders.json").write_text(json.dumps(folders))
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "folders.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    return proc, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_damaged_index_files_are_refused_by_size_and_sha256(original, tmp_path):
    data = (original / manifest.INDEX_FILE).read_bytes()
    cases = corruptions(data, 300, seed=7)
    assert sum(damaged == data for _, damaged in cases) == 0, "every case differs from the original"
    kinds = copies(original, tmp_path / "cases", cases, rehash=False)
    proc, results = run_child(LOAD_ALL, list(kinds), tmp_path)
    assert proc.returncode == 0, f"the child did not exit normally ({proc.returncode}): {proc.stderr[-2000:]}"
    assert [r["folder"] for r in results] == list(kinds), "one answer per case, in order"
    by_check = collections.Counter()
    for r in results:
        assert r["outcome"] == "refused" and r["error"] == "IndexCorrupt", r
        path = str(Path(r["folder"]) / manifest.INDEX_FILE)
        assert r["message"].startswith(f"{path}: ") and "\n" not in r["message"] and "fix:" in r["message"], r
        size_changed = kinds[r["folder"]] in ("truncate", "append")
        expected = "the manifest says" if size_changed else "SHA-256 does not match"
        assert expected in r["message"], r
        by_check[expected] += 1
    print(f"\n{len(results)} damaged index files refused: {dict(by_check)}")


def test_the_forked_loader_reports_a_crash_and_goes_on(original, tmp_path):
    proc, results = run_child(LOAD_EACH_FORKED, ["<segfault>", str(original)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [(r["outcome"], r.get("signal"), r.get("ntotal")) for r in results] == [("crashed", 11, None),
                                                                                  ("loaded", None, 2_000)]


def test_damage_that_reaches_faiss_never_harms_the_caller(original, tmp_path):
    data = (original / manifest.INDEX_FILE).read_bytes()
    cases = corruptions(data, 50, seed=11, header=200)
    kinds = copies(original, tmp_path / "cases", cases, rehash=True)
    proc, results = run_child(LOAD_EACH_FORKED, list(kinds), tmp_path)
    assert proc.returncode == 0, f"the forking child did not exit normally ({proc.returncode}): {proc.stderr[-2000:]}"
    assert [r["folder"] for r in results] == list(kinds), "an answer for every case, crashed or not"
    outcomes = collections.Counter(r["outcome"] for r in results)
    for r in results:
        if r["outcome"] == "refused":
            assert r["error"] == "IndexCorrupt", r
            assert "\n" not in r["message"] and "fix:" in r["message"], r
    assert outcomes["raised"] == 0, [r for r in results if r["outcome"] == "raised"]
    assert outcomes["refused"] > 0, "truncated files at least reach FAISS's reader and are refused"
    print(f"\nhash-matching damaged files: {dict(outcomes)}; crashes by signal: "
          f"{collections.Counter(r.get('signal') for r in results if r['outcome'] == 'crashed')}")
