"""Releases: model versions, the index built from exactly their encoder, and the feature builds
the online store was materialized from, committed as one unit behind one pointer.

    <releases>/<release id>/release.json       the Release document
    <releases>/<release id>/models/<model>/    each model's bundle (manifest.json + ONNX files)
    <releases>/<release id>/indexes/<model>/   each retrieval model's index build
    <releases>/CURRENT                         {"release": id, "sha256": of release.json, ...}

A release folder is staged under a temporary name and renamed whole; then ``CURRENT`` is
replaced by rename. A reader that resolves ``CURRENT`` sees the old release or the new one,
complete, never a mixture. Release folders are never changed afterwards, so a rollback is only a
pointer move. ``verify`` checks what the inference tier will load: every bundle file's SHA-256,
every index's files, and that each index was built by the encoder bytes of the release's model.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import Field

from millrace.contracts.faults import checkpoint
from millrace.contracts.records import Record
from millrace.indexing.errors import EncoderMismatch, ReleaseCorrupt, ReleaseError
from millrace.indexing.manifest import EncoderRef, IndexManifest, LoadedIndex
from millrace.training.bundle import Manifest

DOCUMENT: Final = "release.json"
POINTER: Final = "CURRENT"
FORMAT_VERSION: Final = 1
MAX_DOCUMENT_BYTES = 4 << 20
_FIX = "roll back to another release (`millrace release rollback`) or create a new one (`millrace release create`)"


class ReleaseRecord(Record):
    corrupt = ReleaseCorrupt


class ModelRef(ReleaseRecord):
    model: str
    registered_name: str
    version: str
    alias: str = "champion"
    run_id: str
    family: str
    role: Literal["retrieval", "ranking"]
    bundle: str = Field(description="The bundle's folder, relative to the release folder.")
    bundle_sha256: str = Field(description="SHA-256 of the bundle's manifest.json (which holds each file's).")


class IndexRef(ReleaseRecord):
    model: str
    folder: str = Field(description="The index build's folder, relative to the release folder.")
    manifest_sha256: str
    build_id: str
    factory: str
    items: int
    recall: float
    k: int


class FeatureViewRef(ReleaseRecord):
    sha256: str = Field(description="The offline table's SHA-256 (its OfflineManifest).")
    run_id: str
    rows: int
    built_at: str
    online_store: str = Field("", description="The online store last materialized from it ('' if never).")
    materialized_at: str = ""


class ContractRef(ReleaseRecord):
    id: str
    version: str


class Release(ReleaseRecord):
    format_version: Literal[1] = FORMAT_VERSION
    id: str
    created_at: str
    created_by: str
    project: str
    git_sha: str
    models: dict[str, ModelRef]
    indexes: dict[str, IndexRef] = Field(default_factory=dict, description="Retrieval model -> its index.")
    feature_views: dict[str, FeatureViewRef] = Field(default_factory=dict)
    contracts: dict[str, ContractRef] = Field(default_factory=dict)


class Pointer(ReleaseRecord):
    format_version: Literal[1] = FORMAT_VERSION
    release: str
    sha256: str
    since: str
    by: str
    reason: str


@dataclass(frozen=True)
class VerifiedRelease:
    folder: str
    release: Release
    bundles: dict[str, tuple[str, Manifest]]   # model -> (bundle folder, manifest)
    indexes: dict[str, LoadedIndex]            # retrieval model -> its loaded, bound index


def release_root(state_dir: str) -> str:
    """Where a project's releases live: ``<state>/releases``."""
    return os.path.join(state_dir, "releases")


def new_id(root: str, now: dt.datetime | None = None) -> str:
    """``r<n>-<UTC time>``: n one more than the newest release's, so ids sort in creation order
    (two creates racing for one n: the second's rename fails and it says so)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    known = ids(root)
    return f"r{_number(known[-1]) + 1 if known else 1:04d}-{now:%Y%m%dT%H%M%S}Z"


def _number(release_id: str) -> int:
    head = release_id.split("-", 1)[0].removeprefix("r")
    return int(head) if head.isdigit() else 0


def commit(root: str, release: Release, stage: Callable[[str], None], by: str, reason: str = "created") -> str:
    """Write ``release`` (``stage(folder)`` puts its bundles and indexes in the folder first), then
    point ``CURRENT`` at it; returns the release folder."""
    final = os.path.join(root, release.id)
    if os.path.exists(final):
        raise ReleaseError(f"{final}: a release with this id exists (fix: create the release again)")
    tmp = os.path.join(root, f".tmp-{release.id}")
    os.makedirs(tmp)
    try:
        stage(tmp)
        _write(os.path.join(tmp, DOCUMENT), release.to_json().encode())
        verify_folder(tmp, release)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ReleaseError(f"{final}: cannot be written ({exc.strerror or exc}): another release took this id "
                           f"(fix: create the release again)") from None
    checkpoint("after_release_written")
    point(root, release.id, by, reason)
    return final


def point(root: str, release_id: str, by: str, reason: str) -> Pointer:
    """Swap ``CURRENT`` to ``release_id`` (a temp file renamed over it: one atomic step)."""
    document = _bounded(os.path.join(root, release_id, DOCUMENT))
    pointer = Pointer(release=release_id, sha256=hashlib.sha256(document).hexdigest(),
                      since=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), by=by, reason=reason)
    path = os.path.join(root, POINTER)
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(2)}"
    _write(tmp, pointer.to_json().encode())
    os.replace(tmp, path)
    _append_log(root, pointer)
    checkpoint("after_pointer_swap")
    return pointer


def current(root: str) -> Pointer | None:
    path = os.path.join(root, POINTER)
    if not os.path.exists(path):
        return None
    return Pointer.from_json(_bounded(path), path, "point it at a release again: `millrace release rollback --to ID`")


def read(root: str, release_id: str) -> Release:
    if not release_id or os.path.basename(release_id) != release_id or release_id.startswith("."):
        raise ReleaseError(f"'{release_id}' is not a release id (fix: use one of `millrace release list`)")
    path = os.path.join(root, release_id, DOCUMENT)
    if not os.path.exists(path):
        known = ", ".join(r for r in ids(root)[-5:]) or "none yet"
        raise ReleaseError(f"no release '{release_id}' in {root} (fix: use one of `millrace release list`: {known})")
    return Release.from_json(_bounded(path), path, _FIX)


def ids(root: str) -> list[str]:
    """Every committed release, oldest first (ids sort by creation time)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    found = [n for n in names if not n.startswith(".") and os.path.isfile(os.path.join(root, n, DOCUMENT))]
    return sorted(found, key=lambda n: (_number(n), n))


def rollback_target(root: str, to: str | None = None) -> str:
    """``to`` when given, else the release created just before the current one."""
    pointer = current(root)
    if to is not None:
        read(root, to)
        if pointer and pointer.release == to:
            raise ReleaseError(f"release {to} is already current (fix: name another with --to)")
        return to
    known = ids(root)
    if pointer is None or pointer.release not in known:
        raise ReleaseError(f"no current release in {root} to roll back from (fix: name one with --to)")
    earlier = known[:known.index(pointer.release)]
    if not earlier:
        raise ReleaseError(f"release {pointer.release} is the first one: there is nothing before it (fix: name "
                           f"another with --to)")
    return earlier[-1]


def served_encoder(model: ModelRef, bundle: Manifest) -> EncoderRef:
    """The encoder a release's retrieval model serves: the bytes its index must have been built with."""
    def sha(part: str) -> str:
        entry = bundle.parts[part]
        return entry.sha256[entry.files[entry.served]]

    missing = [p for p in ("item_encoder", "user_encoder") if p not in bundle.parts]
    if missing:
        raise EncoderMismatch(f"{model.registered_name} v{model.version} has no {' or '.join(missing)}: it cannot "
                              f"be a retrieval model (fix: release a two_tower model's index)")
    served = bundle.parts["item_encoder"].served
    return EncoderRef(model=model.model, registered_name=model.registered_name, version=model.version,
                      run_id=model.run_id, variant=served, item_sha256=sha("item_encoder"),
                      user_sha256=sha("user_encoder"))


def verify(root: str, release_id: str | None = None) -> VerifiedRelease:
    """The release (default: the current one), with every file checked and every index loaded
    beside the encoder it was built from."""
    if release_id is None:
        pointer = current(root)
        if pointer is None:
            raise ReleaseError(f"{root}: no release yet (fix: `millrace release create`)")
        release_id = pointer.release
        document = _bounded(os.path.join(root, release_id, DOCUMENT)) if release_id in ids(root) else b""
        if hashlib.sha256(document).hexdigest() != pointer.sha256:
            raise ReleaseError(f"{os.path.join(root, POINTER)}: points at {release_id}, whose release.json is missing "
                               f"or changed since it was released (fix: {_FIX})")
    release = read(root, release_id)
    return verify_folder(os.path.join(root, release_id), release)


def verify_folder(folder: str, release: Release) -> VerifiedRelease:
    from millrace.contracts.names import check_inside
    from millrace.indexing import manifest as indexes
    from millrace.training.bundle import MANIFEST, load_part, read_manifest

    where = os.path.join(folder, DOCUMENT)
    bundles = {}
    for name, ref in release.models.items():
        path = str(check_inside(folder, ref.bundle, where, f"models.{name}.bundle"))
        if hashlib.sha256(_bounded(os.path.join(path, MANIFEST))).hexdigest() != ref.bundle_sha256:
            raise ReleaseError(f"{os.path.join(path, MANIFEST)}: SHA-256 does not match {DOCUMENT} (fix: {_FIX})")
        manifest = read_manifest(path)
        for part, entry in manifest.parts.items():
            for kind in entry.files:
                load_part(path, manifest, part, kind)
        bundles[name] = (path, manifest)
    loaded = {}
    for name, ref in release.indexes.items():
        if name not in release.models:
            raise ReleaseError(f"{where}: indexes.{name}: no such model in the release (fix: {_FIX})")
        path = str(check_inside(folder, ref.folder, where, f"indexes.{name}.folder"))
        if hashlib.sha256(_bounded(os.path.join(path, indexes.MANIFEST))).hexdigest() != ref.manifest_sha256:
            raise ReleaseError(f"{os.path.join(path, indexes.MANIFEST)}: SHA-256 does not match {DOCUMENT} "
                               f"(fix: {_FIX})")
        expected = served_encoder(release.models[name], bundles[name][1])
        loaded[name] = indexes.load(path, expected)
    return VerifiedRelease(folder, release, bundles, loaded)


def index_ref(model: str, folder: str, manifest: IndexManifest, manifest_bytes: bytes) -> IndexRef:
    return IndexRef(model=model, folder=folder, manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
                    build_id=manifest.build_id, factory=manifest.factory, items=manifest.items,
                    recall=manifest.recall.achieved, k=manifest.recall.k)


def history(root: str) -> list[dict]:
    """Every pointer move, oldest first (``<releases>/pointer.log``, one JSON line each)."""
    path = os.path.join(root, "pointer.log")
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise ReleaseError(f"{path}: a line is not JSON ({exc}) (fix: remove the damaged line)") from None


def _append_log(root: str, pointer: Pointer) -> None:
    with open(os.path.join(root, "pointer.log"), "a", encoding="utf-8") as f:
        f.write(json.dumps(pointer.model_dump()) + "\n")


def _bounded(path: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot be read ({exc.strerror or exc}) (fix: {_FIX})") from None
    if len(data) > limit:
        raise ReleaseError(f"{path}: over {limit:,} bytes: not a release record (fix: {_FIX})")
    return data


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
