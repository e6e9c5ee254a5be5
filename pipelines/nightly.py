"""``millrace nightly``: the scheduled job. Land the example if needed; ingest and validate every
source (only partitions with new or changed landing files); rebuild the feature views when the
lake changed (or they were never built); apply the Feast repository; materialize what changed."""
from __future__ import annotations

from contracts.project import Project
from pipelines.errors import RunFailed


def nightly(console, project: Project, beam_args: list[str], expectations: bool = True, bundled: bool = False) -> list:
    from pipelines.summary import run_ingest_with_summary

    if bundled:
        from pipelines.example import already_landed, land

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
    if (project.root / "features.yaml").exists():
        lake_changed = any(r.committed for r in results)
        _features(console, project, beam_args, rebuild=lake_changed)
    console.print(f"nightly done: lake at {project.lake}, data docs at {project.state_dir}/data_docs, "
                  f"Feast repository at {project.state_dir}/feast")
    return results


def _features(console, project: Project, beam_args: list[str], rebuild: bool) -> None:
    from features import offline
    from features.feast_repo import apply
    from features.materialize import materialize
    from features.spec import load_features
    from pipelines.features_build import build

    features = load_features(project)
    missing = [v for v in features.views if offline.read_manifest(project.offline, v) is None]
    if rebuild or missing:
        with console.status("building feature views..."):
            for r in build(project, features, beam_args=beam_args):
                detail = f"{r['rows']:,} rows, {r['entities']:,} entities" if r["status"] == "built" else r["problem"]
                console.print(f"  features {r['view']}: {detail}")
    with console.status("applying Feast and materializing..."):
        apply(project, features)
        for r in materialize(project, features):
            console.print(f"  online {r['view']}: {r['written']:,} written, {r['skipped_unchanged']:,} unchanged")
