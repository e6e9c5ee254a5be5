"""``millrace features build``: committed lake partitions -> offline feature tables (Beam).

    Create(view names) | BuildFeatureView | reports

Each view is computed by the pure ``features.compute.compute_view`` on Arrow tables read from
the lake, and committed to the offline store by rename, with a manifest naming the lake
partitions (and their run ids) it was built from. A build killed anywhere and rerun gives the
same tables (tests/features/test_kill.py): a view is committed whole or not at all.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.options.pipeline_options import PipelineOptions

from millrace.contracts.arrow import TIMESTAMP
from millrace.contracts.faults import checkpoint
from millrace.contracts.project import Project
from millrace.features import offline
from millrace.features.compute import compute_view
from millrace.features.records import LakeInput, ViewBuildReport
from millrace.features.spec import Features
from millrace.pipelines import lake


def source_rows(project: Project, source: str, until: dt.date | None = None,
                read: dict | None = None) -> tuple[pa.Table, list[LakeInput]]:
    """Committed rows of a source (events up to the end of ``until``) and the partitions read.
    ``read``: the sources already read by this build (views of one source read its lake once)."""
    contract = project.contract(source)
    if read is not None and source in read:
        table, inputs = read[source]
    else:
        table, inputs = _read_source(project, source)
        if read is not None:
            read[source] = table, inputs
    if table is not None and until is not None and contract.event_time:
        end = pa.scalar(dt.datetime.combine(until + dt.timedelta(days=1), dt.time(), dt.timezone.utc),
                        TIMESTAMP)
        table = table.filter(pc.less(table.column(contract.event_time), end))
    return table, inputs


def _read_source(project: Project, source: str) -> tuple[pa.Table | None, list[LakeInput]]:
    key = project.contract(source).partitioning.key
    tables, inputs = [], []
    for part, t in lake.snapshot(project.lake, source, key):  # rows and manifest of one commit each
        tables.append(t.append_column(key, pa.repeat(pa.scalar(part.value), t.num_rows)))
        inputs.append(LakeInput(partition=f"{key}={part.value}", run_id=part.manifest.run_id,
                                contract_version=part.manifest.contract.version, rows=part.manifest.rows))
    return (pa.concat_tables(tables) if tables else None), inputs


def latest_snapshot(project: Project, source: str, read: dict | None = None) -> tuple[pa.Table | None, list[LakeInput]]:
    """The rows of the newest committed partition (a catalogue snapshot)."""
    table, inputs = source_rows(project, source, read=read)
    if table is None:
        return None, inputs
    key = project.contract(source).partitioning.key
    newest = pc.max(table.column(key))
    return table.filter(pc.equal(table.column(key), newest)), inputs[-1:]


def first_changed_day(project: Project, features: Features, committed: dict[str, list[str]]) -> dt.date | None:
    """The earliest snapshot day that newly committed partitions (source -> partition values) can
    change, or None when every day may have changed. Snapshots look back only, so days before the
    earliest new event keep their values. That day is known when each such partition holds events of
    one period (its source is partitioned by event time) and no view reads the source whole (a
    static view's catalogue, an enrichment lookup)."""
    whole = {v.source for v in features.views.values() if v.static} | \
        {v.enrich.source for v in features.views.values() if v.enrich}
    days = []
    for source, values in committed.items():
        if not values:
            continue
        if source in whole or not project.contract(source).partitioning.field:
            return None
        days.extend(lake.period_start(v) for v in values)
    return min(days) if days else None


def lake_changes(project: Project, features: Features) -> dict[str, list[str]]:
    """Partitions (by source) that the built views were not built from: committed since by a run the
    nightly did not make (a stream's lake commits, a hand-run ingest). A view never built counts as
    nothing here (it is built whole anyway); a catalogue read as its newest partition compares that."""
    out: dict[str, set[str]] = {}
    for name, view in features.views.items():
        manifest = offline.read_manifest(project.offline, name)
        if manifest is None:
            continue
        built = {(i.partition, i.run_id) for i in manifest.inputs}
        sources = [(view.source, view.static)] + ([(view.enrich.source, True)] if view.enrich else [])
        for source, newest_only in sources:
            key = project.contract(source).partitioning.key
            committed = lake.committed_partitions(project.lake, source, key)
            for c in committed[-1:] if newest_only else committed:
                if (f"{key}={c.value}", c.manifest.run_id) not in built:
                    out.setdefault(source, set()).add(c.value)
    return {source: sorted(values) for source, values in out.items()}


def rebuildable_from(project: Project, features: Features, day: dt.date | None) -> dt.date | None:
    """``day`` when a rebuild of the days from it on gives the tables a whole rebuild would: every
    view was built before, from the features.yaml of now. Otherwise None (rebuild whole)."""
    if day is None:
        return None
    spec_hash = _spec_hash(features)
    for name in features.views:
        manifest = offline.read_manifest(project.offline, name)
        if manifest is None or manifest.features_yaml_sha256 != spec_hash:
            return None
    return day


def _spec_hash(features: Features) -> str:
    return hashlib.sha256(features.path.read_bytes()).hexdigest()[:16]


class _BuildFn(beam.DoFn):
    def __init__(self, project_root: str, locations: dict[str, str], first: dt.date | None, last: dt.date | None,
                 run_id: str):
        self.project_root, self.locations, self.first, self.last = project_root, locations, first, last
        self.run_id = run_id

    def setup(self):  # once per worker: the project, its contracts and features.yaml parsed once
        from millrace.contracts.project import load_project
        from millrace.features.spec import load_features

        # the driver's locations: a worker in another process may not share its environment
        self.project = load_project(self.project_root, self.locations)
        self.features = load_features(self.project)

    def start_bundle(self):
        self.read: dict = {}  # the sources read in this bundle: one lake read for all their views

    def process(self, view_name: str):
        yield build_view(self.project, self.features, view_name, self.first, self.last, self.run_id, self.read)

    def finish_bundle(self):
        self.read = {}


def build_view(project: Project, features: Features, name: str, first: dt.date | None, last: dt.date | None,
               run_id: str, read: dict | None = None) -> ViewBuildReport:
    started = time.time()
    view = features.view(name)
    if view.static:
        events, inputs = latest_snapshot(project, view.source, read)
    else:
        events, inputs = source_rows(project, view.source, last, read)
    if events is None:
        return ViewBuildReport(view=name, status="skipped", problem=f"source '{view.source}' has no committed partitions")
    lookup = None
    if view.enrich:
        lookup, more = latest_snapshot(project, view.enrich.source, read)
        inputs = inputs + more
    created = dt.datetime.now(dt.timezone.utc)
    contract = project.contract(view.source)
    fresh = compute_view(view, features.join_keys(name), contract.event_time, events, lookup, features.types[name],
                         created, (None, None) if view.static else (first, last),
                         derived=features.derived_columns(view.source))
    existing = None
    if not view.static and (first or last) and offline.read_manifest(project.offline, name):
        existing = offline.read_view(project.offline, name)
    table = offline.merge(existing, fresh, first, last) if not view.static else fresh
    manifest = offline.write_view(project.offline, name, table,
                                  {"inputs": inputs, "features_yaml_sha256": _spec_hash(features),
                                   "range": (str(first) if first else None, str(last) if last else None)}, run_id)
    checkpoint("after_view_commit")  # the view is committed; its build report is not yet written
    return ViewBuildReport(view=name, status="built", rows=manifest.rows, entities=manifest.entities,
                           rebuilt_rows=fresh.num_rows, seconds=time.time() - started)


class BuildFeatureView(beam.PTransform):
    """View names -> one report per view, each view computed and committed to the offline store."""

    def __init__(self, project_root: str, locations: dict[str, str], first: dt.date | None, last: dt.date | None,
                 run_id: str):
        super().__init__()
        self.args = (project_root, locations, first, last, run_id)

    def expand(self, names):
        return names | "Build" >> beam.ParDo(_BuildFn(*self.args))


def build(project: Project, features: Features, first: dt.date | None = None, last: dt.date | None = None,
          views: list[str] | None = None, beam_args: list[str] | None = None) -> list[ViewBuildReport]:
    from millrace.pipelines.ingest import local_runner, new_run_id

    names = views or list(features.views)
    for n in names:
        features.view(n)  # unknown names fail before any work
    run_id = new_run_id()
    options = PipelineOptions(list(project.config.pipeline.options) + list(beam_args or []))
    reports: list[ViewBuildReport] = []
    with beam.Pipeline(runner=local_runner(options), options=options) as pipeline:
        _ = (pipeline | "Views" >> beam.Create(names)
             | "BuildFeatureView" >> BuildFeatureView(str(project.root), project.locations(), first, last, run_id)
             | "Collect" >> beam.Map(_save, project.state_dir, run_id))
    for n in names:
        reports.append(_load(project.state_dir, run_id, n))
    return reports


def _report_path(state_dir: str, run_id: str, view: str) -> str:
    return lake.join(state_dir, "runs", "features", run_id, f"{view}.json")


def _save(report: ViewBuildReport, state_dir: str, run_id: str) -> None:
    lake.write_bytes(_report_path(state_dir, run_id, report.view), report.to_json().encode())


def _load(state_dir: str, run_id: str, view: str) -> ViewBuildReport:
    path = _report_path(state_dir, run_id, view)
    return ViewBuildReport.from_json(lake.read_bytes(path), path, "run `millrace features build` again")
