"""MLflow as the metadata store: experiments, runs, registered versions, aliases and their history.

Registered model names are ``<project>.<model>`` so projects can share one registry. Aliases:
``challenger`` (the latest version that passed its export and INT8 gates) and ``champion`` (the
version to serve). MLflow keeps only the current target of an alias, so every move is also
recorded as a registered-model tag ``millrace.alias_log.<seq>`` = JSON {alias, version, previous,
by, at, why}; "which version was champion on date X" reads that log.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from dataclasses import dataclass

from millrace.contracts.project import Project
from millrace.training.errors import RegistryUnavailable, UnknownModel

CHAMPION, CHALLENGER = "champion", "challenger"
LOG_PREFIX = "millrace.alias_log."


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
        raise RegistryUnavailable(f"cannot reach the MLflow store at {_redact(uri)}: {first} "
                                  f"(fix: check mlflow.tracking_uri in millrace.yaml or MILLRACE_MLFLOW_URI)") from None
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
    location = os.path.join(artifact_root(project), name)
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
    model = _registered(client, name)
    events = []
    for key, value in model.tags.items():
        if key.startswith(LOG_PREFIX):
            data = json.loads(value)
            events.append(AliasEvent(int(key[len(LOG_PREFIX):]), **data))
    return sorted(events, key=lambda e: e.seq)


def move_alias(client, name: str, alias: str, version: str, why: str, by: str | None = None) -> AliasEvent:
    """Point ``alias`` at ``version`` and append the move to the alias log."""
    previous = alias_target(client, name, alias)
    client.set_registered_model_alias(name, alias, version)
    events = history(client, name)
    event = AliasEvent(events[-1].seq + 1 if events else 1, alias, str(version), previous, by or actor(),
                       dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), why[:2000])
    payload = {k: v for k, v in event.__dict__.items() if k != "seq"}
    client.set_registered_model_tag(name, f"{LOG_PREFIX}{event.seq:06d}", json.dumps(payload))
    return event


def alias_target(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def alias_at(client, name: str, alias: str, when: dt.datetime) -> str | None:
    """The version ``alias`` pointed at, at time ``when`` (None: not set yet)."""
    target = None
    for event in history(client, name):
        if dt.datetime.fromisoformat(event.at) <= when:
            target = event.version
    return target


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
