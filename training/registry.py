"""MLflow as the metadata store: experiments, runs, registered versions, aliases and their history.

Registered model names are ``<project>.<model>`` so projects can share one registry. Aliases:
``challenger`` (the latest version that passed its export and INT8 gates) and ``champion`` (the
version to serve). A version's source is its MLflow LoggedModel (``models:/<model_id>``, what
``mlflow.pyfunc.load_model("models:/<name>@champion")`` loads); its tag ``millrace.bundle`` names
the bundle the serving tier reads (``download``). Experiments are created as classic ML
experiments (tag ``mlflow.experimentKind``).

MLflow keeps only the current target of an alias, so every move is also appended to the alias
log: one JSON file per move, ``<experiment artifact location>/alias-log/<seq>.json`` = {seq,
alias, version, previous, by, at, why, prev}. Artifacts are never editable from the MLflow UI, and
the log is a checksum chain: ``prev`` is the SHA-256 of the previous file, and the registered-model
tag ``millrace.alias_head`` = "<seq> <sha256>" names the last one, so an edited, removed or added
entry (or head) is reported (``AliasLog.problem``). "Which version was champion on date X" reads it.

A move is one step that survives a kill: the intended event is first written as
``millrace.alias_pending.<alias>``, then the alias moves, then the log entry and the head are
written and the intent removed. ``reconcile`` (run at the start of every training run and models
command) finishes a move whose log entry is missing and drops one that never happened, so the
history always ends at the alias's real target. ``close_orphans`` marks runs whose process died
while RUNNING as FAILED, with the reason in a tag.
"""
from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass, replace

from millrace.contracts.errors import is_unreachable
from millrace.contracts.faults import checkpoint
from millrace.contracts.names import check_inside
from millrace.contracts.project import Project
from millrace.training.errors import NothingToRollBackTo, RegistryError, RegistryUnavailable, UnknownModel

CHAMPION, CHALLENGER = "champion", "challenger"
LOG_PREFIX = "millrace.alias_log."   # the log as registered-model tags, before it moved to artifacts
PENDING_PREFIX = "millrace.alias_pending."
HEAD_TAG = "millrace.alias_head"   # "<seq> <sha256>" of the alias log's last entry
LOG_FOLDER = "alias-log"
GATE_TAG, RUN_TAG = "millrace.gate", "millrace.run"   # version tags: passed | failed; interrupted
BUNDLE_TAG = "millrace.bundle"     # version tag: the artifact URI of the version's bundle
KIND_TAG, KIND_CLASSIC = "mlflow.experimentKind", "custom_model_development"  # MLflow UI: "Machine learning"
STALE_AFTER = dt.timedelta(hours=24)  # a RUNNING run whose process cannot be checked is orphaned after this


def tracking_uri(project: Project) -> str:
    configured = os.environ.get("MILLRACE_MLFLOW_URI") or project.config.mlflow.tracking_uri
    if configured:
        return configured
    path = os.path.join(project.state_dir, "mlflow.db")
    os.makedirs(project.state_dir, exist_ok=True)
    return f"sqlite:///{path}"


def artifact_root(project: Project) -> str:
    return (os.environ.get("MILLRACE_MLFLOW_ARTIFACTS") or project.config.mlflow.artifact_root
            or os.path.join(project.state_dir, "mlartifacts"))


def registered_name(project: Project, model: str) -> str:
    return f"{project.name}.{model}"


def actor() -> str:
    try:
        return os.environ.get("MILLRACE_USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return "unknown"


def connect(project: Project):
    """An MlflowClient on the project's tracking/registry URI (also set for mlflow's fluent API)."""
    import logging

    import mlflow
    from mlflow import MlflowClient

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri(project)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        _ping(uri)
        client = MlflowClient(uri, uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - name the store and the fix, not the driver's traceback
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        fix = "(fix: check mlflow.tracking_uri in millrace.yaml or MILLRACE_MLFLOW_URI)"
        if is_unreachable(exc):
            raise RegistryUnavailable(f"cannot reach the MLflow store at {_redact(uri)}: {first} {fix}") from None
        raise RegistryError(f"cannot use the MLflow store at {_redact(uri)}: {first} {fix}") from None
    return client


def _ping(uri: str) -> None:
    """Fail in seconds on an unreachable database (MLflow itself retries for minutes)."""
    scheme = uri.split(":", 1)[0]
    if not scheme.startswith(("postgresql", "mysql", "mssql")):
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 5}, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def experiment_id(client, project: Project, model: str) -> str:
    name = registered_name(project, model)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if KIND_TAG not in found.tags:  # created before millrace marked its experiments
            client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND_CLASSIC)
        return found.experiment_id
    root = artifact_root(project)
    location = str(check_inside(root, name, "models.yaml", "models")) if "://" not in root else f"{root}/{name}"
    return client.create_experiment(name, artifact_location=location,
                                    tags={"millrace.project": project.name, KIND_TAG: KIND_CLASSIC})


@dataclass(frozen=True)
class AliasEvent:
    seq: int
    alias: str
    version: str
    previous: str | None
    by: str
    at: str
    why: str


@dataclass(frozen=True)
class AliasLog:
    events: list[AliasEvent]
    problem: str | None = None   # why the checksum chain does not hold (the log was edited)
    head: tuple[int, str] | None = None   # (seq, sha256) of the last entry actually stored
    legacy: bool = False   # read from registered-model tags (written before the log moved)


def history(client, name: str) -> list[AliasEvent]:
    return read_log(client, name).events


def read_log(client, name: str, model=None) -> AliasLog:
    """The alias log of ``name``, checked: each entry's ``prev`` is the SHA-256 of the one before,
    sequence numbers run 1, 2, ... and the last entry is the one the head tag names."""
    model = model or _registered(client, name)
    files = _read_files(_log_uri(client, name))
    head = model.tags.get(HEAD_TAG)
    if not files:
        legacy = _legacy_events(model)
        problem = f"the head tag {HEAD_TAG} names entry {head.split()[0]} but the log is empty" if head else None
        return AliasLog(legacy, problem, legacy=bool(legacy))
    events, problem, digest = [], None, ""
    for seq, data in files:
        try:
            entry = json.loads(data)
            prev = entry.pop("prev")
            event = AliasEvent(**entry)
        except (ValueError, TypeError, KeyError):
            problem = problem or f"entry {seq} is not a valid log entry"
            digest = _sha(data)
            continue
        if problem is None and (event.seq != seq or seq != len(events) + 1):
            problem = f"entry {seq} is out of sequence (entries were removed or renamed)"
        elif problem is None and prev != digest:
            problem = f"entry {seq} does not match the checksum of entry {seq - 1} (one of them was edited)"
        events.append(event)
        digest = _sha(data)
    last = (files[-1][0], digest)
    if problem is None:
        if head is None and len(files) > 1:
            problem = f"the head tag {HEAD_TAG} was removed"
        elif head is not None and head != f"{last[0]} {last[1]}" and not _one_behind(head, files):
            problem = (f"the last entry is not the one the head tag {HEAD_TAG} names "
                       f"(entries were edited, removed or added)")
    return AliasLog(events, problem, last)


def _one_behind(head: str, files: list[tuple[int, bytes]]) -> bool:
    """An append killed after its entry and before the head moved: the head names the entry before."""
    if len(files) < 2:
        return False
    seq, data = files[-2]
    return head == f"{seq} {_sha(data)}" and json.loads(files[-1][1]).get("prev") == _sha(data)


def tampered(client, name: str) -> str | None:
    """One line saying how the alias log was altered after it was written, or None."""
    problem = read_log(client, name).problem
    return None if problem is None else (
        f"the alias history of {name} was altered: {problem} (fix: do not trust `--at` answers for it; "
        f"restore {LOG_FOLDER}/ from a backup, or compare with the runs' millrace.promoted tags)")


def _legacy_events(model) -> list[AliasEvent]:
    events = [AliasEvent(int(key[len(LOG_PREFIX):]), **json.loads(value))
              for key, value in model.tags.items() if key.startswith(LOG_PREFIX)]
    return sorted(events, key=lambda e: e.seq)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _log_uri(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise RegistryError(f"no experiment '{name}' to keep the alias history of {name} in "
                            f"(fix: train it with `millrace train --model {name.split('.', 1)[-1]}`)")
    return f"{experiment.artifact_location.rstrip('/')}/{LOG_FOLDER}"


def _read_files(uri: str) -> list[tuple[int, bytes]]:
    """The log's entry files as (seq, bytes), in order; one download of the folder."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(uri)
    names = [f.path.rsplit("/", 1)[-1] for f in repo.list_artifacts() if not f.is_dir]
    names = sorted(n for n in names if n.endswith(".json") and n[:-5].isdigit())
    if not names:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        local = repo.download_artifacts("", tmp)
        out = []
        for n in names:
            with open(os.path.join(local, n), "rb") as f:
                out.append((int(n[:-5]), f.read()))
    return sorted(out)


def move_alias(client, name: str, alias: str, version: str, why: str, by: str | None = None) -> AliasEvent:
    """Point ``alias`` at ``version`` and append the move to the alias log (see the module doc)."""
    previous = alias_target(client, name, alias)
    log = read_log(client, name)
    event = AliasEvent(len(log.events) + 1, alias, str(version), previous, by or actor(),
                       dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), why[:2000])
    client.set_registered_model_tag(name, PENDING_PREFIX + alias, json.dumps(asdict(event)))
    client.set_registered_model_alias(name, alias, version)
    checkpoint("after_alias_move")
    event = _append(client, name, event, log)
    client.delete_registered_model_tag(name, PENDING_PREFIX + alias)
    return event


def _append(client, name: str, event: AliasEvent, log: AliasLog | None = None) -> AliasEvent:
    """Write ``event`` as the next entry file, chained to the last one, then move the head tag;
    returns it with its sequence number. A log still in registered-model tags is first copied
    into files (renumbered 1, 2, ...) and its tags removed."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    log = log or read_log(client, name)
    repo = get_artifact_repository(_log_uri(client, name))
    head = log.head
    if log.legacy:
        for i, old in enumerate(log.events, 1):
            head = _write(repo, replace(old, seq=i), head)
    event = replace(event, seq=head[0] + 1 if head else 1)
    head = _write(repo, event, head)
    client.set_registered_model_tag(name, HEAD_TAG, f"{head[0]} {head[1]}")
    if log.legacy:
        for old in log.events:
            client.delete_registered_model_tag(name, f"{LOG_PREFIX}{old.seq:06d}")
    return event


def _write(repo, event: AliasEvent, head: tuple[int, str] | None) -> tuple[int, str]:
    data = json.dumps({**asdict(event), "prev": head[1] if head else ""}, sort_keys=True).encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{event.seq:06d}.json")
        with open(path, "wb") as f:
            f.write(data)
        repo.log_artifact(path)
    return event.seq, _sha(data)


def reconcile(client, name: str) -> list[AliasEvent]:
    """Make the alias log end at each alias's real target after an interrupted move; returns the
    entries it wrote. Reads only when nothing was interrupted."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    log = read_log(client, name, model)
    events, written = list(log.events), []
    if log.problem is None and log.head and model.tags.get(HEAD_TAG) != f"{log.head[0]} {log.head[1]}":
        client.set_registered_model_tag(name, HEAD_TAG, f"{log.head[0]} {log.head[1]}")  # killed before the head moved

    def last(alias: str) -> str | None:
        moves = [e.version for e in events if e.alias == alias]
        return moves[-1] if moves else None

    def append(event: AliasEvent) -> None:
        event = _append(client, name, event)
        events.append(event)
        written.append(event)

    for key, value in sorted(model.tags.items()):
        if not key.startswith(PENDING_PREFIX):
            continue
        intent = AliasEvent(**json.loads(value))
        if str(model.aliases.get(intent.alias)) == intent.version and last(intent.alias) != intent.version:
            append(replace(intent, seq=events[-1].seq + 1 if events else 1))  # moved, killed before the log entry
        client.delete_registered_model_tag(name, key)  # done, or never moved: nothing to log
    for alias, version in sorted(model.aliases.items()):
        logged = last(alias)
        if logged != str(version):  # moved outside millrace (the MLflow UI, an older millrace)
            append(AliasEvent(events[-1].seq + 1 if events else 1, alias, str(version), logged, "millrace",
                              dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "reconciled: the alias pointed here but the log did not say so"))
    return written


def alias_target(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def alias_at(client, name: str, alias: str, when: dt.datetime) -> str | None:
    """The version ``alias`` pointed at, at time ``when`` (None: not set yet). Only moves of
    ``alias`` count (every registered version, failed gates included, becomes challenger)."""
    target = None
    for event in history(client, name):
        if event.alias == alias and dt.datetime.fromisoformat(event.at) <= when:
            target = event.version
    return target


def gate_passed(version) -> bool:
    """Whether a registered version passed its gates (a failed one is champion only by --force)."""
    return version.tags.get(GATE_TAG) == "passed" and version.tags.get(RUN_TAG) != "interrupted"


def rollback_target(client, name: str, to: str | None = None) -> str:
    """The version a rollback of ``champion`` goes to: ``to`` when given (it must exist), else the
    most recent earlier champion that still exists and passed its gates."""
    current = alias_target(client, name, CHAMPION)
    if to is not None:
        get_version(client, name, to)
        if str(to) == current:
            raise NothingToRollBackTo(f"{name} version {to} is already champion (fix: name another with --to)")
        return str(to)
    existing = {str(v.version): v for v in versions(client, name)}
    seen = set()
    for event in reversed(history(client, name)):
        v = event.version
        if event.alias != CHAMPION or v == current or v in seen:
            continue
        seen.add(v)
        if v in existing and gate_passed(existing[v]):
            return v
    raise NothingToRollBackTo(f"{name} has no earlier champion that passed its gates to roll back to "
                              f"(fix: name a version with --to)")


def process_tags() -> dict[str, str]:
    """Tags that let a later run tell whether this run's process is still alive."""
    return {"millrace.host": socket.gethostname(), "millrace.pid": str(os.getpid())}


def close_orphans(client, experiment: str, now: dt.datetime | None = None) -> list[str]:
    """Mark RUNNING runs of ``experiment`` whose process is gone as FAILED (tag ``millrace.orphan``
    says why), their LoggedModels FAILED, and the versions they registered as interrupted; returns
    their run ids."""
    now = now or dt.datetime.now(dt.timezone.utc)
    closed = []
    for run in client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'"):
        why = _orphaned(run, now)
        if why is None:
            continue
        run_id = run.info.run_id
        client.set_tag(run_id, "millrace.orphan", why)
        client.set_tag(run_id, "millrace.error", f"interrupted: {why}; closed as FAILED by a later run")
        for mv in client.search_model_versions(f"run_id = '{run_id}'"):
            client.set_model_version_tag(mv.name, mv.version, RUN_TAG, "interrupted")
        for logged in client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'"):
            client.finalize_logged_model(logged.model_id, "FAILED")  # the UI lists it as failed, like its run
        client.set_terminated(run_id, "FAILED")
        closed.append(run_id)
    return closed


def _orphaned(run, now: dt.datetime) -> str | None:
    host, pid = run.data.tags.get("millrace.host"), run.data.tags.get("millrace.pid", "")
    if host == socket.gethostname() and pid.isdigit():
        return None if _alive(int(pid)) else f"its process {pid} on {host} ended without closing it"
    started = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.timezone.utc)
    if now - started > STALE_AFTER:
        return f"RUNNING since {started:%Y-%m-%dT%H:%M}Z on {host or 'an unknown host'}, longer than {STALE_AFTER}"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_registered(client, name: str, description: str = "") -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description, tags={"millrace.managed": "true"})


def _registered(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise UnknownModel(f"no registered model '{name}' (fix: train it first: `millrace train --model "
                           f"{name.split('.', 1)[-1]}`)") from None


def versions(client, name: str) -> list:
    _registered(client, name)
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version))


def get_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    _registered(client, name)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        known = [v.version for v in versions(client, name)]
        raise UnknownModel(f"'{name}' has no version {version} (fix: use one of {known})") from None


def register(client, name: str, model_id: str, run_id: str, bundle_uri: str, tags: dict[str, str],
             description: str):
    """A new version of ``name`` whose source is the LoggedModel ``model_id`` (so MLflow loads and
    shows it), tagged with the bundle it was built from; the LoggedModel lists the version."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    mv = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id,
                                     tags={**tags, BUNDLE_TAG: bundle_uri}, description=description)
    known = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
        known + [{"name": name, "version": str(mv.version)}])})
    return mv


def bundle_uri(version) -> str:
    """Where a version's bundle is: its tag, or its source for versions registered before the tag."""
    return version.tags.get(BUNDLE_TAG) or version.source


def download(client, name: str, version: str, target: str) -> str:
    """The bundle of a registered version, copied into ``target``; returns the local folder."""
    import mlflow

    mv = get_version(client, name, version)
    return mlflow.artifacts.download_artifacts(artifact_uri=bundle_uri(mv), dst_path=target)


def _redact(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else uri
    return uri
