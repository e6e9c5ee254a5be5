"""``millrace nightly``: the scheduled job. Land the example if needed; ingest and validate every
source (only partitions with new or changed landing files); rebuild the feature views when the
lake changed (or they were never built); apply the Feast repository; materialize what changed;
train the models of models.yaml when triggered: on the first run (no registered version yet),
when the features were rebuilt from new data, or when asked (``--train``); then index every
retrieval champion that has no index and release the champions when they or their indexes
changed (``_release``: idempotent, so a run killed after training releases on the next one).

What is still owed survives a kill: ``<state>/nightly/pending.json`` says whether the feature views
must be rebuilt and which models must be trained. It is written before the work it names and
cleared step by step as each step finishes (a model only once it is registered and gated), so a
run killed after the feature rebuild, or in the middle of a model's first training, leaves the
next run the same work instead of "nothing new"."""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, replace

from millrace.contracts.faults import checkpoint
from millrace.contracts.project import Project
from millrace.pipelines.errors import CorruptFile, RunFailed


@dataclass(frozen=True)
class Pending:
    """The work a nightly owes. ``ingesting`` is set while ingest runs: found set, the last run
    died there and may have committed partitions, so the features are rebuilt to be sure."""

    features: bool = False
    train: tuple[str, ...] = ()
    ingesting: bool = False
    since: str = ""
    version: int = 1
    reasons: tuple[str, ...] = ()


def pending_path(project: Project) -> str:
    return os.path.join(project.state_dir, "nightly", "pending.json")


def read_pending(project: Project) -> Pending:
    path = pending_path(project)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return Pending(features=bool(data["features"]), train=tuple(data["train"]), ingesting=bool(data["ingesting"]),
                       since=str(data.get("since", "")), reasons=tuple(data.get("reasons", ())))
    except FileNotFoundError:
        return Pending()
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFile(path, f"not a pending-work record ({exc})",
                          "delete it and run `millrace nightly --train` to redo every step") from None


def write_pending(project: Project, pending: Pending) -> None:
    """Atomically (a temp file renamed), so a kill leaves the old record or the new one."""
    path = pending_path(project)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(pending), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _owe(pending: Pending, reason: str, features: bool = False, train: tuple[str, ...] = ()) -> Pending:
    names = pending.train + tuple(n for n in train if n not in pending.train)
    return replace(pending, features=pending.features or features, train=names,
                   since=pending.since or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   reasons=pending.reasons + ((reason,) if reason not in pending.reasons else ()))


def _settled(pending: Pending) -> Pending:
    return pending if pending.features or pending.train else replace(pending, since="", reasons=())


def nightly(console, project: Project, beam_args: list[str], expectations: bool = True, bundled: bool = False,
            train: bool | None = None) -> list:
    """``train``: True always trains, False never, None when triggered."""
    from millrace.pipelines.summary import run_ingest_with_summary

    if bundled:
        from millrace.pipelines.example import already_landed, land

        if not already_landed(project):
            console.print("landing the MovieLens example (first run)...")
            for source, landed in land(project).items():
                console.print(f"  {source}: {landed.records:,} records in {landed.files:,} files "
                              f"({landed.planted} planted bad records)")
    has_features = (project.root / "features.yaml").exists()
    models = _model_names(project) if has_features and (project.root / "models.yaml").exists() else []
    pending = read_pending(project)
    died_ingesting = pending.ingesting
    write_pending(project, replace(pending, ingesting=True))
    results, failures = [], []
    for source in project.sources:
        try:
            results.append(run_ingest_with_summary(console, project, source, None, None, beam_args, expectations))
        except RunFailed as exc:  # keep going: one bad source must not hold back the others
            failures.append(str(exc))
    if any(r.committed for r in results) or died_ingesting:
        why = "new data in the lake" if not died_ingesting else "the last run died during ingest"
        pending = _owe(pending, why, features=has_features, train=tuple(models))
    pending = _settled(replace(pending, ingesting=False))
    write_pending(project, pending)  # what this ingest changed is owed before anything else can fail
    if failures:
        raise RunFailed("; ".join(failures))
    if has_features:
        pending = _features(console, project, beam_args, pending, tuple(models))
        checkpoint("before_training")
        failed = []
        if models and train is not False:
            failed = _models(console, project, pending, models, always=bool(train))
        elif pending.train:
            console.print(f"  models: not training (--no-train); still owed: {', '.join(pending.train)}")
        current = _release(console, project, models) if models else None
        if failed:
            raise RunFailed("training failed: " + "; ".join(failed))
    else:
        current = None
    release = f", release {current} current (millrace release show)" if current else ""
    console.print(f"nightly done: lake at {project.lake}, data docs at {project.state_dir}/data_docs, "
                  f"Feast repository at {project.state_dir}/feast{release}")
    return results


def _model_names(project: Project) -> list[str]:
    from millrace.features.spec import load_features
    from millrace.training.spec import load_models

    return list(load_models(project, load_features(project)).names)


def _models(console, project: Project, pending: Pending, names: list[str], always: bool) -> list[str]:
    """Train what is owed (or everything, ``always``); returns the failures, one line each."""
    from millrace.pipelines.train import train_with_summary
    from millrace.training import registry
    from millrace.training.errors import TrainingError, UnknownModel

    owed = [n for n in names if always or n in pending.train]
    if not always:
        client = registry.connect(project)
        for name in names:
            if name in owed:
                continue
            try:
                registry.versions(client, registry.registered_name(project, name))
            except UnknownModel:
                owed.append(name)
    owed = [n for n in names if n in owed]  # the order of models.yaml
    if not owed:
        console.print("  models: nothing new to train on (use --train to retrain anyway)")
        return []
    if pending.train and not always:
        console.print(f"  models: owed since {pending.since} ({'; '.join(pending.reasons) or 'first training'}): "
                      f"{', '.join(n for n in owed if n in pending.train)}")
    pending = _owe(pending, "asked (--train)" if always else "first training", train=tuple(owed))
    write_pending(project, pending)  # before training: a kill mid-training leaves the model owed
    failures = []
    for name in owed:
        try:
            train_with_summary(console, project, [name])
        except TrainingError as exc:  # one refused model must not hold back the others; it stays owed
            console.print(f"[red]  {name}: {exc}[/]")
            failures.append(f"{name}: {exc}")
            continue
        pending = _settled(replace(pending, train=tuple(n for n in pending.train if n != name)))
        write_pending(project, pending)
    return failures


def _release(console, project: Project, names: list[str]) -> str | None:
    """Index every retrieval champion that has no index yet, then release the champions unless the
    current release already holds exactly them and their indexes. Returns the current release id.
    Idempotent: a nightly killed after training releases on its next run."""
    from millrace.features.spec import load_features
    from millrace.indexing.errors import IndexingError
    from millrace.indexing.release import current, read
    from millrace.pipelines.index import index_with_summary, latest_index
    from millrace.pipelines.release import create, release_root
    from millrace.training import registry
    from millrace.training.errors import UnknownModel
    from millrace.training.spec import load_models

    models = load_models(project, load_features(project))
    client = registry.connect(project)
    champions = {}
    for name in names:
        reg = registry.registered_name(project, name)
        try:
            registry.versions(client, reg)
        except UnknownModel:
            console.print(f"  release: {name} left out (not trained yet)")
            continue
        version = registry.alias_target(client, reg, registry.CHAMPION)
        if version is None:
            console.print(f"  release: {name} left out (no version has passed its gates: no champion)")
            continue
        champions[name] = version
    if not champions:
        console.print("  release: none (no model has a champion yet)")
        return None
    indexes = {}
    for name, version in champions.items():
        if models.get(name).family != "two_tower":
            continue
        reg = registry.registered_name(project, name)
        folder = latest_index(project, reg, version)
        if folder is None:
            try:
                folder = index_with_summary(console, project, name, version=version).folder
            except IndexingError as exc:
                raise RunFailed(f"index of {reg} v{version}: {exc}; the current release stays") from None
        indexes[name] = os.path.basename(folder)
    root = release_root(project)
    pointer = current(root)
    if pointer is not None:
        held = read(root, pointer.release)
        if {n: m.version for n, m in held.models.items()} == champions and \
                {n: i.build_id for n, i in held.indexes.items()} == indexes:
            console.print(f"  release {held.id} is current (its champions and indexes are unchanged)")
            return held.id
    made = create(project, list(champions))
    what = ", ".join(f"{n} v{v}" for n, v in champions.items())
    console.print(f"  release {made.id} is current: {what}")
    return made.id


def _features(console, project: Project, beam_args: list[str], pending: Pending, models: tuple[str, ...]) -> Pending:
    """Rebuild (when owed or missing), apply Feast, materialize; returns what is still owed."""
    from millrace.features import offline
    from millrace.features.feast_repo import apply
    from millrace.features.materialize import materialize
    from millrace.features.spec import load_features
    from millrace.pipelines.features_build import build

    features = load_features(project)
    missing = [v for v in features.views if offline.read_manifest(project.offline, v) is None]
    if missing and not pending.features:
        pending = _owe(pending, "feature views never built", features=True, train=models)
        write_pending(project, pending)
    if pending.features:
        with console.status("building feature views..."):
            for r in build(project, features, beam_args=beam_args):
                detail = f"{r.rows:,} rows, {r.entities:,} entities" if r.status == "built" else r.problem
                console.print(f"  features {r.view}: {detail}")
    with console.status("applying Feast and materializing..."):
        apply(project, features)
        for r in materialize(project, features):
            console.print(f"  online {r.view}: {r.written:,} written, {r.skipped_unchanged:,} unchanged")
    if pending.features:
        pending = _settled(replace(pending, features=False))
        write_pending(project, pending)
    return pending
