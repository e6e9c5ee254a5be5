"""``millrace nightly``: the scheduled job. Land the example if needed; ingest and validate every
source (only partitions with new or changed landing files); rebuild the feature views when the
lake changed (or they were never built); apply the Feast repository; materialize what changed;
train the models of models.yaml when triggered: on the first run (no registered version yet),
when the features were rebuilt from new data, or when asked (``--train``)."""
from __future__ import annotations

from millrace.contracts.project import Project
from millrace.pipelines.errors import RunFailed


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
    results, failures = [], []
    for source in project.sources:
        try:
            results.append(run_ingest_with_summary(console, project, source, None, None, beam_args, expectations))
        except RunFailed as exc:  # keep going: one bad source must not hold back the others
            failures.append(str(exc))
    if failures:
        raise RunFailed("; ".join(failures))
    rebuilt = False
    if (project.root / "features.yaml").exists():
        lake_changed = any(r.committed for r in results)
        rebuilt = _features(console, project, beam_args, rebuild=lake_changed)
        if (project.root / "models.yaml").exists() and train is not False:
            _models(console, project, rebuilt or bool(train))
    console.print(f"nightly done: lake at {project.lake}, data docs at {project.state_dir}/data_docs, "
                  f"Feast repository at {project.state_dir}/feast")
    return results


def _models(console, project: Project, always: bool) -> None:
    from millrace.features.spec import load_features
    from millrace.pipelines.train import train_with_summary
    from millrace.training import registry
    from millrace.training.errors import TrainingError, UnknownModel
    from millrace.training.spec import load_models

    names = load_models(project, load_features(project)).names
    if not always:
        client = registry.connect(project)
        untrained = []
        for name in names:
            try:
                registry.versions(client, registry.registered_name(project, name))
            except UnknownModel:
                untrained.append(name)
        names = untrained
    if not names:
        console.print("  models: nothing new to train on (use --train to retrain anyway)")
        return
    failures = []
    for name in names:
        try:
            train_with_summary(console, project, [name])
        except TrainingError as exc:  # one refused model must not hold back the others
            console.print(f"[red]  {name}: {exc}[/]")
            failures.append(f"{name}: {exc}")
    if failures:
        raise RunFailed("training failed: " + "; ".join(failures))


def _features(console, project: Project, beam_args: list[str], rebuild: bool) -> bool:
    """Rebuild (when asked or missing), apply Feast, materialize; True if views were rebuilt."""
    from millrace.features import offline
    from millrace.features.feast_repo import apply
    from millrace.features.materialize import materialize
    from millrace.features.spec import load_features
    from millrace.pipelines.features_build import build

    features = load_features(project)
    missing = [v for v in features.views if offline.read_manifest(project.offline, v) is None]
    built = bool(rebuild or missing)
    if built:
        with console.status("building feature views..."):
            for r in build(project, features, beam_args=beam_args):
                detail = f"{r['rows']:,} rows, {r['entities']:,} entities" if r["status"] == "built" else r["problem"]
                console.print(f"  features {r['view']}: {detail}")
    with console.status("applying Feast and materializing..."):
        apply(project, features)
        for r in materialize(project, features):
            console.print(f"  online {r['view']}: {r['written']:,} written, {r['skipped_unchanged']:,} unchanged")
    return built
