"""An index on disk: the FAISS file, the id mapping and the manifest that binds them to an encoder.

    <indexes>/<registered name>/v<version>/<build id>/
        index.faiss      faiss.serialize_index bytes (a CPU index)
        ids.parquet      one column, the item key of each FAISS row (row i -> key i)
        index.json       IndexManifest: encoder, SHA-256 and size of both files, metric, factory,
                         search parameters, recall achieved, build facts

A build folder is written under a temporary name and renamed whole, so it is there complete or
not at all. Loading trusts nothing but the manifest: file names must stay in the folder, each
file's size must be the manifest's (and under a bound) before a byte is read, each SHA-256 must
match before FAISS parses the bytes (its reader is a memory-corruption surface), and the encoder
that built the index must be the one being served.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import secrets
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from millrace.contracts.errors import ContractError
from millrace.contracts.names import check_inside
from millrace.contracts.records import Record
from millrace.indexing.errors import EncoderMismatch, IndexCorrupt

MANIFEST: Final = "index.json"
INDEX_FILE: Final = "index.faiss"
IDS_FILE: Final = "ids.parquet"
FORMAT_VERSION: Final = 1
MAX_MANIFEST_BYTES = 1 << 20
MAX_INDEX_BYTES = int(os.environ.get("MILLRACE_MAX_INDEX_BYTES", 64 << 30))  # no index this size is legitimate here


class IndexRecord(Record):
    corrupt = IndexCorrupt


class EncoderRef(IndexRecord):
    """The encoder version an index belongs to: it is served only beside exactly these bytes."""

    model: str
    registered_name: str
    version: str
    run_id: str
    variant: Literal["fp32", "int8"]
    item_sha256: str = Field(description="SHA-256 of the item encoder's ONNX file the catalogue was embedded with.")
    user_sha256: str = Field(description="SHA-256 of the user encoder's ONNX file whose vectors query the index.")


class RecallRecord(IndexRecord):
    k: int
    min: float
    achieved: float
    queries: int = Field(description="Holdout users the gate searched for.")
    seconds: float
    tried: list[dict] = Field(default_factory=list, description="Each setting tried and its recall, in order.")


class IndexManifest(IndexRecord):
    format_version: Literal[1] = FORMAT_VERSION
    build_id: str
    encoder: EncoderRef
    dim: int
    metric: Literal["inner_product", "cosine"]
    factory: str
    search: dict[str, int] = Field(description="Search parameters the gate chose (nprobe, efSearch, k_factor).")
    items: int
    item_key: str
    key_type: Literal["int64", "string"]
    index_file: str = INDEX_FILE
    index_bytes: int
    index_sha256: str
    ids_file: str = IDS_FILE
    ids_bytes: int
    ids_sha256: str
    recall: RecallRecord
    as_of: str = Field(description="The catalogue's features are the offline store's values as of this time.")
    built_at: str
    build_seconds: float = Field(description="Train + add, seconds (embedding and gate not included).")
    embed_seconds: float
    train_rows: int
    device: Literal["cpu", "gpu"]
    gpus: int
    faiss_version: str
    note: str = ""


@dataclass(frozen=True)
class LoadedIndex:
    folder: str
    manifest: IndexManifest
    index: object       # faiss.Index, search parameters applied
    ids: pa.Array       # FAISS row -> item key


def new_build_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(3)}"  # microseconds: two builds a second still sort


def version_folder(root: str, registered_name: str, version: str) -> str:
    return os.path.join(root, registered_name, f"v{version}")


def write(root: str, index, ids: pa.Array, fields: dict) -> tuple[str, IndexManifest]:
    """Store a built index; ``fields`` are the manifest's fields but the files' names, sizes and
    hashes. Returns the build folder and its manifest."""
    import faiss

    encoder: EncoderRef = fields["encoder"]
    if not (index.ntotal == len(ids) == fields["items"]) or index.d != fields["dim"]:
        raise ValueError(f"an index of {index.ntotal} vectors of dimension {index.d}, {len(ids)} ids, described as "
                         f"{fields['items']} of {fields['dim']}: refusing to store it")
    parent = version_folder(root, encoder.registered_name, encoder.version)
    final = os.path.join(parent, fields["build_id"])
    tmp = os.path.join(parent, f".tmp-{fields['build_id']}")
    os.makedirs(tmp, exist_ok=True)
    data = faiss.serialize_index(index).tobytes()
    buffer = io.BytesIO()
    pq.write_table(pa.table({fields["item_key"]: ids}), buffer)
    id_bytes = buffer.getvalue()
    for name, blob in ((INDEX_FILE, data), (IDS_FILE, id_bytes)):
        _write_file(os.path.join(tmp, name), blob)
    manifest = IndexManifest(**fields, index_bytes=len(data), index_sha256=_sha(data), ids_bytes=len(id_bytes),
                             ids_sha256=_sha(id_bytes))
    _write_file(os.path.join(tmp, MANIFEST), manifest.to_json().encode())
    os.rename(tmp, final)
    return final, manifest


def read_manifest(folder: str) -> IndexManifest:
    path = os.path.join(folder, MANIFEST)
    return IndexManifest.from_json(_bounded(path, MAX_MANIFEST_BYTES), path)


def load(folder: str, expected: EncoderRef | None = None, *, max_bytes: int | None = None) -> LoadedIndex:
    """The index of ``folder``, checked (see the module docstring). ``expected``: the encoder being
    served; any difference from the one that built the index is an EncoderMismatch."""
    import faiss

    manifest = read_manifest(folder)
    if expected is not None:
        check_binding(folder, manifest.encoder, expected)
    limit = MAX_INDEX_BYTES if max_bytes is None else max_bytes
    data = _checked(folder, manifest.index_file, "index_file", manifest.index_bytes, manifest.index_sha256, limit)
    ids_data = _checked(folder, manifest.ids_file, "ids_file", manifest.ids_bytes, manifest.ids_sha256, limit)
    where = os.path.join(folder, manifest.index_file)
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].split("Error: ", 1)[-1][:160]  # past FAISS's C++ location
        raise IndexCorrupt(where, f"FAISS cannot read it ({reason})") from None
    if index.ntotal != manifest.items or index.d != manifest.dim:
        raise IndexCorrupt(where, f"holds {index.ntotal} vectors of dimension {index.d}, the manifest says "
                                  f"{manifest.items} of {manifest.dim}")
    try:
        ids = pq.read_table(io.BytesIO(ids_data)).column(0).combine_chunks()
    except (pa.ArrowException, IndexError, OSError) as exc:
        raise IndexCorrupt(os.path.join(folder, manifest.ids_file), f"not an id mapping ({exc})") from None
    if len(ids) != manifest.items:
        raise IndexCorrupt(os.path.join(folder, manifest.ids_file),
                           f"maps {len(ids)} rows, the index holds {manifest.items}")
    from millrace.indexing.factory import apply

    apply(index, manifest.search)
    return LoadedIndex(folder, manifest, index, ids)


def check_binding(folder: str, built: EncoderRef, served: EncoderRef) -> None:
    """One line when an index would be served beside another encoder than the one that built it."""
    if built.registered_name != served.registered_name or built.version != served.version:
        raise EncoderMismatch(
            f"{os.path.join(folder, MANIFEST)}: the index was built from {built.registered_name} version "
            f"{built.version}, the served encoder is {served.registered_name} version {served.version} (fix: build "
            f"its index: `millrace index --model {served.model} --version {served.version}`)")
    for side in ("item", "user"):
        if getattr(built, f"{side}_sha256") != getattr(served, f"{side}_sha256"):
            raise EncoderMismatch(
                f"{os.path.join(folder, MANIFEST)}: the index was built with another {side} encoder file than "
                f"{served.registered_name} version {served.version} serves ({built.variant} "
                f"{getattr(built, f'{side}_sha256')[:12]} vs {served.variant} {getattr(served, f'{side}_sha256')[:12]}) "
                f"(fix: rebuild it: `millrace index --model {served.model} --version {served.version}`)")


def builds(root: str, registered_name: str, version: str) -> list[str]:
    """The complete build folders of a version, oldest first (build ids sort by time)."""
    parent = version_folder(root, registered_name, version)
    try:
        names = sorted(n for n in os.listdir(parent) if not n.startswith("."))
    except FileNotFoundError:
        return []
    return [os.path.join(parent, n) for n in names if os.path.isfile(os.path.join(parent, n, MANIFEST))]


def _checked(folder: str, name: str, field: str, size: int, digest: str, limit: int) -> bytes:
    where = os.path.join(folder, MANIFEST)
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise IndexCorrupt(where, f"{field}: bad file name {name!r} (an index names files inside its folder only)")
    try:
        path = check_inside(folder, name, where, field)
    except ContractError:
        raise IndexCorrupt(where, f"{field}: {name!r} leads outside the index folder") from None
    if size > limit:
        raise IndexCorrupt(path, f"the manifest says {size:,} bytes, over the bound of {limit:,} "
                                 f"(fix: raise MILLRACE_MAX_INDEX_BYTES if this index is genuine)")
    try:
        actual = os.stat(path).st_size
    except OSError as exc:
        raise IndexCorrupt(path, f"cannot be read ({exc.strerror or exc})") from None
    if actual != size:
        raise IndexCorrupt(path, f"is {actual:,} bytes, the manifest says {size:,} (truncated or replaced)")
    data = _bounded(path, limit)
    if _sha(data) != digest:
        raise IndexCorrupt(path, f"SHA-256 does not match {MANIFEST} (altered or damaged)")
    return data


def _bounded(path: str, limit: int) -> bytes:
    """The file's bytes, refused before reading when it is over ``limit`` (and if it grows meanwhile)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise IndexCorrupt(path, f"is {size:,} bytes, over the bound of {limit:,}")
            data = f.read(size + 1)
    except OSError as exc:
        raise IndexCorrupt(path, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > size:
        raise IndexCorrupt(path, "changed while it was read")
    return data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
