"""MLflow as the metadata store: experiments, runs, registered versions, aliases and their history.

Registered model names are ``<project>.<model>`` so projects can share one registry. Aliases:
``challenger`` (the latest version that passed its export and INT8 gates) and ``champion`` (the
version to serve). MLflow keeps only the current target of an alias, so every move is also
recorded as a registered-model tag ``millrace.alias_log.<seq>`` = JSON {alias, version, previous,
by, at, why}; "which version was champion on date X" reads that log.

A move is one step that survives a kill: the intended event is first written as
``millrace.alias_pending.<alias>``, then the alias moves, then the log entry is written and the
intent removed. ``reconcile`` (run at the start of every training run and models command)
finishes a move whose log entry is missing and drops one that never happened, so the history
always ends at the alias's real target. ``close_orphans`` marks runs whose process died while
RUNNING as FAILED, with the reason in a tag.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
from dataclasses import asdict, dataclass, replace

from millrace.contracts.errors import is_unreachable
from millrace.contracts.faults import checkpoint
from millrace.contracts.names import check_inside
from millrace.contracts.project import Project
from millrace.training.errors import NothingToRollBackTo, RegistryError, RegistryUnavailable, UnknownModel

CHAMPION, CHALLENGER = "champion", "challenger"
LOG_PREFIX = "millrace.alias_log."
PENDING_PREFIX = "millrace.alias_pending."
GATE_TAG, RUN_TAG = "millrace.gate", "millrace.run"   # version tags: passed | failed; interrupted
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
        return found.experiment_id
    root = artifact_root(project)
    location = str(check_inside(root, name, "models.yaml", "models")) if "://" not in root else f"{root}/{name}"
    return client.create_experiment(name, artifact_location=location, tags={"millrace.project": project.name})


@dataclass(frozen=True)
class AliasEvent:
    seq: int
    alias: str
    version: str
    previous: str | None
    by: str
    at: str
    why: str


def history(client, name: str) -> list[AliasEvent]:
    return _events(_registered(client, name))


def _events(model) -> list[AliasEvent]:
    events = [AliasEvent(int(key[len(LOG_PREFIX):]), **json.loads(value))
              for key, value in model.tags.items() if key.startswith(LOG_PREFIX)]
    return sorted(events, key=lambda e: e.seq)


def move_alias(client, name: str, alias: str, version: str, why: str, by: str | None = None) -> AliasEvent:
    """Point ``alias`` at ``version`` and append the move to the alias log (see the module doc)."""
    previous = alias_target(client, name, alias)
    event = AliasEvent(_next_seq(client, name), alias, str(version), previous, by or actor(),
                       dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), why[:2000])
    client.set_registered_model_tag(name, PENDING_PREFIX + alias, json.dumps(asdict(event)))
    client.set_registered_model_alias(name, alias, version)
    checkpoint("after_alias_move")
    _append(client, name, event)
    client.delete_registered_model_tag(name, PENDING_PREFIX + alias)
    return event


def _next_seq(client, name: str) -> int:
    events = history(client, name)
    return events[-1].seq + 1 if events else 1


def _append(client, name: str, event: AliasEvent) -> None:
    payload = {k: v for k, v in asdict(event).items() if k != "seq"}
    client.set_registered_model_tag(name, f"{LOG_PREFIX}{event.seq:06d}", json.dumps(payload))


def reconcile(client, name: str) -> list[AliasEvent]:
    """Make the alias log end at each alias's real target after an interrupted move; returns the
    entries it wrote. One read when nothing was interrupted."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    events, written = _events(model), []

    def last(alias: str) -> str | None:
        moves = [e.version for e in events if e.alias == alias]
        return moves[-1] if moves else None

    def append(event: AliasEvent) -> None:
        _append(client, name, event)
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
    says why), and the versions they registered as interrupted; returns their run ids."""
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


def download(client, name: str, version: str, target: str) -> str:
    """The artifacts of a registered version, copied into ``target``; returns the local folder."""
    import mlflow

    mv = get_version(client, name, version)
    return mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=target)


def _redact(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else uri
    return uri
