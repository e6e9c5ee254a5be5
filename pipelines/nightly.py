"""``millrace nightly``: the scheduled job. For now: land the example if needed, ingest and
validate every source (only partitions with new or changed landing files)."""
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
    console.print(f"nightly done: lake at {project.lake}, data docs at {project.state_dir}/data_docs")
    return results
