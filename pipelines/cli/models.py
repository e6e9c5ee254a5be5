"""``millrace models ...``: registered versions, aliases, promotion, rollback, the MLflow UI."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer(no_args_is_help=True, help="Registered models: versions, aliases, promotion, rollback.")


def _client_and_name(model: str):
    from millrace.features.spec import load_features
    from millrace.training import registry
    from millrace.training.spec import load_models

    project = common.project()
    load_models(project, load_features(project)).get(model)
    client, reg = registry.connect(project), registry.registered_name(project, model)
    registry.reconcile(client, reg)  # finish an alias move a killed process left without its log entry
    return project, client, reg


@app.command("list")
def list_models(as_json: bool = common.json_option()):
    """Each model of models.yaml: versions, champion, challenger and the champion's primary metric."""
    from millrace.features.spec import load_features
    from millrace.training import registry
    from millrace.training.errors import UnknownModel
    from millrace.training.spec import load_models

    project = common.project()
    models = load_models(project, load_features(project))
    client = registry.connect(project)
    rows = []
    for name in models.names:
        reg = registry.registered_name(project, name)
        try:
            found = registry.versions(client, reg)
            registry.reconcile(client, reg)
        except UnknownModel:
            rows.append({"model": name, "registered_name": reg, "versions": 0})
            if not as_json:
                typer.echo(f"{name:<20} not trained yet (millrace train --model {name})")
            continue
        champion = registry.alias_target(client, reg, registry.CHAMPION)
        challenger = registry.alias_target(client, reg, registry.CHALLENGER)
        primary = models.get(name).primary
        metric, value = "", None
        if champion:
            value = client.get_run(registry.get_version(client, reg, champion).run_id).data.metrics.get(primary)
            metric = f"  {primary}={value:.4f}" if value is not None else ""
        rows.append({"model": name, "registered_name": reg, "versions": len(found), "champion": champion,
                     "challenger": challenger, "primary": primary, "champion_metric": value})
        if not as_json:
            typer.echo(f"{name:<20} {len(found)} version(s)  champion={champion or '-'}  "
                       f"challenger={challenger or '-'}{metric}")
    if as_json:
        common.print_json(rows)


@app.command("show")
def show(model: str = typer.Argument(..., help="Model name from models.yaml."),
         version: Optional[str] = typer.Option(None, help="Version (default: the champion, else the latest)."),
         at: Optional[str] = typer.Option(None, help="Which version was champion at this date/time (UTC)?"),
         as_json: bool = common.json_option()):
    """A version's metrics, gates, lineage and files, and the model's alias history."""
    from millrace.training import registry

    project, client, reg = _client_and_name(model)
    if at:
        when = _when(at)
        found = registry.alias_at(client, reg, registry.CHAMPION, when)
        note = ""
        if found and not registry.gate_passed(registry.get_version(client, reg, found)):
            note = " (its gates failed: it was promoted by hand with --force)"
        if as_json:
            common.print_json({"registered_name": reg, "at": when.isoformat(), "champion": found,
                               "forced": bool(note)})
        else:
            typer.echo(f"champion of {reg} at {when.isoformat()}: {found or 'none'}{note}")
        _check_history(client, reg)
        return
    all_versions = registry.versions(client, reg)
    v = version or registry.alias_target(client, reg, registry.CHAMPION) or (all_versions[-1].version
                                                                              if all_versions else None)
    if v is None:
        common.fail(f"{reg} has no versions (fix: millrace train --model {model})", 2)
    mv = registry.get_version(client, reg, v)
    run_ = client.get_run(mv.run_id)
    if as_json:
        shown = {k: val for k, val in sorted(run_.data.metrics.items()) if "." not in k or k.startswith("baseline.")}
        common.print_json({
            "registered_name": reg, "version": str(mv.version), "aliases": list(mv.aliases), "run_id": mv.run_id,
            "mlflow_model": mv.source if mv.source.startswith("models:/") else None,
            "bundle": registry.bundle_uri(mv), "gate": run_.data.tags.get("millrace.gate"), "metrics": shown,
            "lineage": {k[len("millrace."):]: val for k, val in sorted(run_.data.tags.items())
                        if k.startswith(("millrace.contract.", "millrace.feature_view.", "millrace.git_sha"))},
            "alias_history": list(registry.history(client, reg))})
        _check_history(client, reg)
        return
    aliases = ", ".join(mv.aliases) or "-"
    typer.echo(f"{reg} version {mv.version}  aliases: {aliases}  run: {mv.run_id}")
    if mv.source.startswith("models:/"):  # else registered before LoggedModels: the source is the bundle
        typer.echo(f"  mlflow model: {mv.source} (loads with mlflow.pyfunc.load_model(\"models:/{reg}/{mv.version}\"))")
    typer.echo(f"  bundle: {registry.bundle_uri(mv)}")
    typer.echo(f"  gate: {run_.data.tags.get('millrace.gate', '?')}")
    if "millrace.orphan" in run_.data.tags:
        typer.echo(f"  interrupted: {run_.data.tags['millrace.orphan']}")
    shown = {k: v for k, v in sorted(run_.data.metrics.items()) if "." not in k or k.startswith("baseline.")}
    typer.echo("  metrics: " + ", ".join(f"{k}={val:.4f}" for k, val in shown.items()))
    for key in sorted(run_.data.tags):
        if key.startswith(("millrace.contract.", "millrace.feature_view.", "millrace.git_sha")):
            typer.echo(f"  {key[len('millrace.'):]}: {run_.data.tags[key]}")
    typer.echo("  alias history:")
    for e in registry.history(client, reg):
        typer.echo(f"    {e.at}  {e.alias:<10} -> v{e.version} (was {e.previous or '-'}) by {e.by}: {e.why}")
    _check_history(client, reg)


def _check_history(client, reg: str) -> None:
    """Say so, in one line and with exit 1, when the alias history was altered after it was written."""
    from millrace.training import registry

    problem = registry.tampered(client, reg)
    if problem:
        common.fail(problem, 1)


@app.command("promote")
def promote(model: str = typer.Argument(..., help="Model name."),
            version: str = typer.Argument(..., help="Version to make champion."),
            reason: str = typer.Option(..., "--reason", help="Why (kept in the alias history)."),
            force: bool = typer.Option(False, help="Promote even a version whose gates failed.")):
    """Move `champion` to a version by hand (its gates must have passed unless --force)."""
    from millrace.training import registry

    _, client, reg = _client_and_name(model)
    mv = registry.get_version(client, reg, version)
    if not registry.gate_passed(mv) and not force:
        common.fail(f"{reg} version {version} failed its gates ({mv.description}) (fix: pass --force to promote "
                    f"it anyway)", 1)
    event = registry.move_alias(client, reg, registry.CHAMPION, version, f"promoted by hand: {reason}")
    typer.echo(f"{reg}: champion v{event.previous or '-'} -> v{event.version}")


@app.command("rollback")
def rollback(model: str = typer.Argument(..., help="Model name."),
             to: Optional[str] = typer.Option(None, "--to", help="Version to go back to (default: the latest "
                                              "earlier champion that passed its gates)."),
             reason: str = typer.Option(..., "--reason", help="Why (kept in the alias history).")):
    """Point `champion` back at an earlier version."""
    from millrace.training import registry

    _, client, reg = _client_and_name(model)
    target = registry.rollback_target(client, reg, to)
    event = registry.move_alias(client, reg, registry.CHAMPION, target, f"rollback: {reason}")
    typer.echo(f"{reg}: champion v{event.previous or '-'} -> v{event.version}")


@app.command("ui")
def ui(port: int = typer.Option(5000, help="Port of the MLflow UI."),
       host: str = typer.Option("127.0.0.1", help="Interface to listen on.")):
    """Open the runs, metrics, artifacts and registry in the MLflow UI (this project's store).

    The UI runs in its own process (exec), so the CLI never imports the server it launches.
    """
    import os
    import sys

    from millrace.training.registry import tracking_uri

    uri = tracking_uri(common.project())
    # MLflow 3's UI opens experiments in its GenAI view unless told otherwise (a per-browser switch)
    typer.echo(f"MLflow UI for {uri} at http://{host}:{port}/#/experiments?workflowType=machine_learning "
               f"(Ctrl-C to stop)")
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)])


def _when(text: str):
    import datetime as dt

    from millrace.pipelines.errors import PipelineError

    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise PipelineError(f"--at: '{text}' is not a date or time (fix: write e.g. 2026-11-01 or "
                            f"2026-11-01T12:00:00)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    if len(text) <= 10:  # a bare date means the end of that day
        value += dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    return value
