"""An index on disk: written whole or not at all, loaded back only when the manifest's sizes and
SHA-256 match, its file names stay in the folder, it is under the size bound, and it was built
from the encoder being served. Every refusal is one line."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pytest

from millrace.contracts.errors import EXIT_BAD_INPUT, MillraceError, exit_code
from millrace.indexing import build, manifest
from millrace.indexing.errors import EncoderMismatch, IndexCorrupt
from millrace.indexing.manifest import EncoderRef, RecallRecord

DIM = 16
REG = "movielens.retrieval"


def encoder_ref(**changes) -> EncoderRef:
    fields = dict(model="retrieval", registered_name=REG, version="3", run_id="r" * 32, variant="fp32",
                  item_sha256="a" * 64, user_sha256="b" * 64)
    return EncoderRef(**{**fields, **changes})


def manifest_fields(index, factory: str, search: dict, **changes) -> dict:
    """The fields pipelines/index.py passes to ``manifest.write`` (all but the files' sizes and hashes)."""
    fields = dict(
        build_id=manifest.new_build_id(), encoder=encoder_ref(), dim=int(index.d), metric="cosine", factory=factory,
        search=search, items=int(index.ntotal), item_key="movie_id", key_type="int64",
        recall=RecallRecord(k=10, min=0.9, achieved=0.95, queries=100, seconds=0.1,
                            tried=[{"params": search, "recall": 0.95}]),
        as_of="2026-01-01T00:00:00+00:00", built_at="2026-01-01T00:00:05+00:00", build_seconds=0.5,
        embed_seconds=1.0, train_rows=1000, device="cpu", gpus=0, faiss_version=faiss.__version__, note="")
    return {**fields, **changes}


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def store_ivf(root: Path, n: int = 2_000, nlist: int = 16, nprobe: int = 4, **changes) -> tuple[str, object, pa.Array]:
    """An IVF-Flat index of ``n`` vectors written under ``root``: (build folder, the index, its ids)."""
    built = build.build(vectors(n), f"IVF{nlist},Flat", n)
    ids = pa.array(np.arange(n, dtype=np.int64) * 7 + 1000)
    folder, _ = manifest.write(str(root), built.index, ids,
                               manifest_fields(built.index, f"IVF{nlist},Flat", {"nprobe": nprobe}, **changes))
    return folder, built.index, ids


@pytest.fixture
def stored(tmp_path):
    return store_ivf(tmp_path)


def edit_manifest(folder: str, **changes) -> None:
    path = os.path.join(folder, manifest.MANIFEST)
    data = json.loads(Path(path).read_text())
    data.update(changes)
    Path(path).write_text(json.dumps(data))


def refused(folder: str, *, naming: str, **kwargs) -> IndexCorrupt:
    with pytest.raises(IndexCorrupt) as caught:
        manifest.load(folder, **kwargs)
    text = str(caught.value)
    assert "\n" not in text and naming in text and "fix:" in text, text
    assert exit_code(caught.value) == EXIT_BAD_INPUT == 2
    return caught.value


def test_round_trip_searches_like_the_original(stored):
    folder, original, ids = stored
    loaded = manifest.load(folder, encoder_ref())
    assert loaded.folder == folder and loaded.manifest.items == 2_000 and loaded.manifest.dim == DIM
    assert faiss.extract_index_ivf(loaded.index).nprobe == 4, "the gate's search settings are applied"
    assert loaded.ids.equals(ids)
    faiss.extract_index_ivf(original).nprobe = 4
    queries = vectors(50, seed=9)
    assert all(np.array_equal(a, b) for a, b in zip(original.search(queries, 10), loaded.index.search(queries, 10)))


def test_manifest_records_the_files_it_binds(stored):
    folder, _, _ = stored
    m = manifest.read_manifest(folder)
    data = Path(folder, manifest.INDEX_FILE).read_bytes()
    assert (m.index_bytes, m.index_sha256) == (len(data), hashlib.sha256(data).hexdigest())
    ids_data = Path(folder, manifest.IDS_FILE).read_bytes()
    assert (m.ids_bytes, m.ids_sha256) == (len(ids_data), hashlib.sha256(ids_data).hexdigest())
    assert manifest.IndexManifest.from_json(m.to_json()) == m


def test_a_flipped_byte_in_the_index_is_refused_before_faiss_reads_it(stored):
    folder, _, _ = stored
    path = Path(folder, manifest.INDEX_FILE)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    refused(folder, naming=f"{path}: SHA-256 does not match")


def test_a_truncated_index_is_refused_by_its_size(stored):
    folder, _, _ = stored
    path = Path(folder, manifest.INDEX_FILE)
    path.write_bytes(path.read_bytes()[:-100])
    refused(folder, naming="the manifest says")


def test_a_missing_index_is_refused(stored):
    folder, _, _ = stored
    Path(folder, manifest.INDEX_FILE).unlink()
    refused(folder, naming="cannot be read")


def test_an_altered_id_mapping_is_refused(stored):
    folder, _, _ = stored
    path = Path(folder, manifest.IDS_FILE)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(folder, naming=f"{path}: SHA-256 does not match")


@pytest.mark.parametrize("cut", [0, 1, 0.5])
def test_a_truncated_manifest_is_refused(stored, cut):
    folder, _, _ = stored
    path = Path(folder, manifest.MANIFEST)
    text = path.read_text()
    path.write_text(text[:int(len(text) * cut)] if isinstance(cut, float) else text[:cut])
    refused(folder, naming=f"{path}: not a valid IndexManifest")


def test_a_manifest_that_is_not_json_is_refused(stored):
    folder, _, _ = stored
    Path(folder, manifest.MANIFEST).write_bytes(b"\x00\xffnot json at all")
    refused(folder, naming="truncated or not JSON")


@pytest.mark.parametrize("field", ["index_file", "ids_file"])
@pytest.mark.parametrize("name", ["../index.faiss", "/etc/passwd", "sub/index.faiss", "..", ""])
def test_file_names_that_leave_the_folder_are_refused(stored, field, name):
    folder, _, _ = stored
    edit_manifest(folder, **{field: name})
    refused(folder, naming=f"{field}: bad file name")


def test_an_index_over_the_size_bound_is_refused_before_it_is_read(stored):
    folder, _, _ = stored
    size = manifest.read_manifest(folder).index_bytes
    error = refused(folder, naming="over the bound of 1,000", max_bytes=1_000)
    assert error.file.endswith(manifest.INDEX_FILE) and f"{size:,} bytes" in str(error)
    assert "MILLRACE_MAX_INDEX_BYTES" in str(error)
    assert manifest.load(folder, max_bytes=size + 100).index.ntotal == 2_000


def test_an_index_of_another_shape_is_refused(stored, tmp_path):
    """A valid index file swapped in, with the manifest's size and hash updated to match."""
    folder, _, _ = stored
    other = faiss.IndexFlatIP(DIM)
    other.add(vectors(10, seed=4))
    data = faiss.serialize_index(other).tobytes()
    Path(folder, manifest.INDEX_FILE).write_bytes(data)
    edit_manifest(folder, index_bytes=len(data), index_sha256=hashlib.sha256(data).hexdigest())
    refused(folder, naming="holds 10 vectors of dimension 16, the manifest says 2000 of 16")


def test_an_index_of_another_dimension_is_refused(stored):
    folder, _, _ = stored
    other = faiss.IndexFlatIP(8)
    other.add(np.ones((2_000, 8), np.float32))
    data = faiss.serialize_index(other).tobytes()
    Path(folder, manifest.INDEX_FILE).write_bytes(data)
    edit_manifest(folder, index_bytes=len(data), index_sha256=hashlib.sha256(data).hexdigest())
    refused(folder, naming="of dimension 8")


def test_ids_of_another_length_are_refused(stored):
    folder, _, _ = stored
    import io

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"movie_id": pa.array(np.arange(5, dtype=np.int64))}), buffer)
    data = buffer.getvalue()
    Path(folder, manifest.IDS_FILE).write_bytes(data)
    edit_manifest(folder, ids_bytes=len(data), ids_sha256=hashlib.sha256(data).hexdigest())
    refused(folder, naming="maps 5 rows, the index holds 2000")


def test_another_encoder_version_is_refused_naming_both_and_the_fix(stored):
    folder, _, _ = stored
    with pytest.raises(EncoderMismatch) as caught:
        manifest.load(folder, encoder_ref(version="4"))
    text = str(caught.value)
    assert "\n" not in text and exit_code(caught.value) == 2
    assert f"built from {REG} version 3" in text and f"served encoder is {REG} version 4" in text
    assert "`millrace index --model retrieval --version 4`" in text


@pytest.mark.parametrize("side", ["item", "user"])
def test_another_encoder_file_of_the_same_version_is_refused(stored, side):
    folder, _, _ = stored
    with pytest.raises(EncoderMismatch) as caught:
        manifest.load(folder, encoder_ref(**{f"{side}_sha256": "c" * 64}))
    text = str(caught.value)
    assert f"another {side} encoder file" in text and "c" * 12 in text and "\n" not in text
    assert "millrace index --model retrieval --version 3" in text


def test_the_binding_is_checked_before_the_index_is_read(stored):
    folder, _, _ = stored
    Path(folder, manifest.INDEX_FILE).write_bytes(b"garbage")
    with pytest.raises(EncoderMismatch):
        manifest.load(folder, encoder_ref(version="4"))


def test_a_build_folder_appears_only_complete(tmp_path):
    first, _, _ = store_ivf(tmp_path, n=800, build_id="20260101T000000Z-aaaaaa")
    second, _, _ = store_ivf(tmp_path, n=800, build_id="20260102T000000Z-000000")
    parent = manifest.version_folder(str(tmp_path), REG, "3")
    assert sorted(os.listdir(parent)) == ["20260101T000000Z-aaaaaa", "20260102T000000Z-000000"], "no .tmp- left"
    assert sorted(os.listdir(first)) == sorted([manifest.INDEX_FILE, manifest.IDS_FILE, manifest.MANIFEST])
    # a write that died before its rename, and a folder without a manifest, are not builds
    os.makedirs(os.path.join(parent, ".tmp-20260103T000000Z-bbbbbb"))
    Path(parent, ".tmp-20260103T000000Z-bbbbbb", manifest.INDEX_FILE).write_bytes(b"partial")
    os.makedirs(os.path.join(parent, "20260104T000000Z-cccccc"))
    assert manifest.builds(str(tmp_path), REG, "3") == [first, second]
    assert manifest.builds(str(tmp_path), REG, "9") == []


def test_builds_within_one_second_are_listed_oldest_first(tmp_path, monkeypatch):
    now = dt.datetime(2026, 1, 1, 12, 0, 0, 100, tzinfo=dt.timezone.utc)
    suffixes = iter(["ffffff", "000000"] + ["abcdef"] * 8)
    monkeypatch.setattr(manifest.secrets, "token_hex", lambda n: next(suffixes))
    older = manifest.new_build_id(now)
    newer = manifest.new_build_id(now + dt.timedelta(milliseconds=500))
    first, _, _ = store_ivf(tmp_path, n=800, build_id=older)
    second, _, _ = store_ivf(tmp_path, n=800, build_id=newer)
    assert manifest.builds(str(tmp_path), REG, "3") == [first, second]


def _rehashed_truncation(folder: str, keep: int) -> None:
    path = Path(folder, manifest.INDEX_FILE)
    data = path.read_bytes()[:keep]
    path.write_bytes(data)
    edit_manifest(folder, index_bytes=len(data), index_sha256=hashlib.sha256(data).hexdigest())


def test_bytes_faiss_cannot_parse_are_refused_in_one_line(stored):
    """Size and hash rewritten to match a cut file (whoever cut it controls the manifest too)."""
    folder, _, _ = stored
    _rehashed_truncation(folder, 5_000)
    refused(folder, naming="FAISS cannot read it")


def test_faiss_s_reason_is_in_the_message(stored):
    folder, _, _ = stored
    _rehashed_truncation(folder, 5_000)
    error = refused(folder, naming="FAISS cannot read it")
    assert "read error" in str(error)


def _index_as_symlink_to_outside(folder: str, tmp_path: Path) -> None:
    path = Path(folder, manifest.INDEX_FILE)
    outside = tmp_path / "outside.faiss"
    outside.write_bytes(path.read_bytes())  # the very bytes the manifest describes
    path.unlink()
    path.symlink_to(outside)


def test_an_index_file_that_links_out_of_the_folder_is_refused(stored, tmp_path):
    folder, _, _ = stored
    _index_as_symlink_to_outside(folder, tmp_path)
    with pytest.raises(MillraceError) as caught:
        manifest.load(folder)
    assert "outside" in str(caught.value) and "\n" not in str(caught.value)
    assert exit_code(caught.value) == 2


def test_an_index_file_that_links_out_of_the_folder_is_index_corrupt(stored, tmp_path):
    folder, _, _ = stored
    _index_as_symlink_to_outside(folder, tmp_path)
    with pytest.raises(IndexCorrupt):
        manifest.load(folder)
