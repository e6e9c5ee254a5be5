"""``millrace drift``: have the model inputs of the data that came after the champion moved away
from the data it was trained and validated on?

For each model with a champion: the **current** rows are the rows newer than the newest event the
champion saw (``split.until`` of its MLflow run: the end of its holdout), the newest partition of
them widened back over earlier partitions until they hold ``drift.min_rows``; with fewer new rows
than that the check waits (skipped, no trigger). With ``--date``, that day's partition widened the
same way, new to the champion or not. The **reference** is the newest ``drift.reference_rows``
examples (models.yaml) the champion saw, the current ones left out. Comparing only what is new to
the champion is what stops a loop: rows it was already validated on, compared again after every
retraining, would trigger again on any data with a trend. Both get the model's input features
point in time from the offline store (the training code's join, so the values are the ones the
model was fed and is served). validation.drift runs Evidently on them. A champion trained before
``split.until`` was recorded falls back to its holdout cut (``split.at``).

Left under ``<state>/drift/<model>/<date>/``: ``report.html``, ``report.json`` (Evidently's) and
``verdict.json`` (:class:`DriftRecord`); the same are logged to an MLflow run ``drift-<date>`` in
the model's experiment. A drift share over ``drift.share`` also writes the retraining trigger
``<state>/drift/triggers/<model>.json`` (:class:`Trigger`): the nightly's train stage retrains
the model and then moves the trigger to ``triggers/acted/``; Airflow's retrain DAG is scheduled on
the asset the drift task emits with it."""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.project import Project
from millrace.contracts.records import Record
from millrace.pipelines import lake
from millrace.pipelines.champions import ChampionFacts, Champions
from millrace.pipelines.errors import PipelineError

class ColumnRecord(Record):
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


class DriftRecord(Record):
    """``<state>/drift/<model>/<date>/verdict.json``."""

    format_version: Literal[1] = 1
    model: str
    champion: str
    date: str                       # the newest partition compared
    partitions: list[str]           # every partition of the current rows (the newest first)
    share: float
    threshold: float
    triggered: bool
    drifted: list[str]
    columns: list[ColumnRecord]
    left_out: list[str]
    reference_rows: int
    current_rows: int
    reference_until: str            # the newest event the champion saw: the reference is up to it
    report_html: str
    report_json: str
    checked_at: str


class Trigger(Record):
    """``<state>/drift/triggers/<model>.json``: retrain this model (read by the nightly and Airflow)."""

    format_version: Literal[1] = 1
    model: str
    date: str
    share: float
    threshold: float
    columns: list[str]
    verdict: str                    # the DriftRecord's path
    recorded_at: str


NOT_TRAINED, NO_CHAMPION = "not trained yet", "no champion yet (nothing to compare against)"


@dataclass(frozen=True)
class Checked:
    model: str
    record: DriftRecord | None      # None: skipped
    why: str = ""                   # why it was skipped


def drift(project: Project, models: list[str] | None = None, date: dt.date | None = None,
          say=lambda text: None) -> list[Checked]:
    from millrace.features.spec import load_features
    from millrace.training.spec import load_models

    features = load_features(project)
    specs = load_models(project, features)
    names = models or list(specs.names)
    for name in names:
        specs.get(name)  # UnknownModel, with the valid names
    champions = Champions(project, _champion_facts)
    checked = []
    for name in names:
        facts = champions.of(name)
        if facts.champion is None:
            checked.append(Checked(name, None, facts.why))
            continue
        if not facts.seen:
            checked.append(Checked(name, None, f"v{facts.champion}'s run records no training period (split.until)"))
            continue
        try:
            record = _check(project, features, specs.get(name), name, facts.champion,
                            dt.datetime.fromisoformat(facts.seen), date, say)
        except _TooFewNewRows as wait:
            say(f"drift {name}: {wait}")
            checked.append(Checked(name, None, str(wait)))
            continue
        _log_to_mlflow(champions.client, project, name, record)
        checked.append(Checked(name, record))
    champions.keep()
    return checked


def champion_facts(project: Project, models: list[str]) -> dict[str, ChampionFacts]:
    """Each model's champion facts, from the registry or its unchanged copy (``pipelines.champions``)."""
    champions = Champions(project, _champion_facts)
    facts = {name: champions.of(name) for name in models}
    champions.keep()
    return facts


def remember_champions(project: Project, models: list[str]) -> None:
    """After training changed the registry: keep its champions' facts, so that the next drift check
    need not connect to MLflow (the last write to the registry of a nightly that trained)."""
    champions = Champions(project, _champion_facts, reread=True)
    for name in models:
        champions.of(name)
    champions.keep()


def _champion_facts(client, project: Project, name: str) -> ChampionFacts:
    from millrace.training import registry
    from millrace.training.errors import UnknownModel

    reg = registry.registered_name(project, name)
    try:
        registry.versions(client, reg)
    except UnknownModel:
        return ChampionFacts(name, None, why=NOT_TRAINED)
    champion = registry.alias_target(client, reg, registry.CHAMPION)
    if champion is None:
        return ChampionFacts(name, None, why=NO_CHAMPION)
    params = client.get_run(registry.get_version(client, reg, champion).run_id).data.params
    return ChampionFacts(name, champion, seen=params.get("split.until") or params.get("split.at") or "")


class _TooFewNewRows(Exception):
    """Not yet enough rows new to the champion to compare: the check waits for more."""


def _check(project: Project, features, spec, name: str, champion: str, seen: dt.datetime, date: dt.date | None,
           say) -> DriftRecord:
    from millrace.features.expr import derive
    from millrace.features.training_set import training_set
    from millrace.validation.drift import drift_report

    source = spec.examples.source
    contract = project.contract(source)
    key, time = contract.partitioning.key, contract.event_time
    table = derive(lake.read_source(project.lake, source, key), features.derived_columns(source))
    if table.num_rows == 0:
        raise PipelineError(f"drift of {name}: the source '{source}' has no committed rows (fix: ingest it first)")
    until = pa.scalar(seen).cast(table.schema.field(time).type)
    known = pc.less_equal(table.column(time), until)
    candidates = table if date is not None else table.filter(pc.invert(known))
    if date is None and candidates.num_rows < spec.drift.min_rows:
        raise _TooFewNewRows(f"{candidates.num_rows:,} row(s) newer than v{champion}'s data (up to "
                             f"{seen:%Y-%m-%d %H:%M}); the check waits for drift.min_rows ({spec.drift.min_rows:,})")
    partitions = _current_partitions(candidates, key, spec.drift.min_rows, date, source)
    in_current = pc.is_in(candidates.column(key), value_set=pa.array(partitions, table.schema.field(key).type))
    current = candidates.filter(in_current)
    in_current = pc.is_in(table.column(key), value_set=pa.array(partitions, table.schema.field(key).type))
    reference = table.filter(pc.and_(known, pc.invert(in_current)))
    if reference.num_rows == 0:
        raise PipelineError(f"drift of {name}: no committed rows of v{champion}'s training period (up to {seen}) "
                            f"outside the compared partitions (fix: the lake no longer holds the champion's "
                            f"training data; retrain it)")
    reference = _newest_rows(reference, time, spec.drift.reference_rows)
    refs = spec.input_features
    reference, current = (training_set(project, features, t, refs, time) for t in (reference, current))
    columns = [c for c in reference.column_names if "__" in c] + [c for c in spec.request if c in current.column_names]
    say(f"drift {name} v{champion}: {current.num_rows:,} rows of {', '.join(map(str, partitions[:3]))}"
        f"{' ...' if len(partitions) > 3 else ''} against {reference.num_rows:,} of its training period")
    snapshot, verdict = drift_report(reference, current, columns, spec.drift.share, spec.drift.column_threshold)
    newest = str(partitions[0])
    folder = os.path.join(project.state_dir, "drift", name, newest)
    os.makedirs(folder, exist_ok=True)
    html, report_json = os.path.join(folder, "report.html"), os.path.join(folder, "report.json")
    snapshot.save_html(html)
    snapshot.save_json(report_json)
    record = DriftRecord(
        model=name, champion=champion, date=newest, partitions=[str(p) for p in partitions], share=verdict.share,
        threshold=verdict.threshold, triggered=verdict.triggered, drifted=verdict.drifted,
        columns=[ColumnRecord(column=c.column, method=c.method, score=c.score, threshold=c.threshold,
                              drifted=c.drifted) for c in verdict.columns],
        left_out=verdict.left_out, reference_rows=verdict.reference_rows, current_rows=verdict.current_rows,
        reference_until=seen.isoformat(), report_html=html, report_json=report_json,
        checked_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    verdict_path = os.path.join(folder, "verdict.json")
    _write(verdict_path, record.to_json())
    if record.triggered:
        trigger = Trigger(model=name, date=newest, share=record.share, threshold=record.threshold,
                          columns=record.drifted, verdict=verdict_path, recorded_at=record.checked_at)
        _write(trigger_path(project, name), trigger.to_json())
    return record


def _newest_rows(table: pa.Table, time: str, rows: int) -> pa.Table:
    """The ``rows`` latest rows by event time. The end of the training period, not a sample of all
    of it: features over a growing history (all-time means, counts, windows filling up) move for
    as long as the history grows, so the start of a long training period would read as drift."""
    if table.num_rows <= rows:
        return table
    newest = pc.sort_indices(table, sort_keys=[(time, "descending")]).slice(0, rows).to_numpy()
    return table.take(np.sort(newest))  # back in the lake's order


def _current_partitions(table: pa.Table, key: str, min_rows: int, date: dt.date | None, source: str) -> list:
    """The newest partition (or ``date``'s) and as many earlier ones as make ``min_rows``, newest first."""
    counts = table.group_by(key).aggregate([([], "count_all")]).sort_by([(key, "descending")])
    values, sizes = counts.column(key).to_pylist(), counts.column("count_all").to_pylist()
    if date is not None:
        keep = [i for i, v in enumerate(values) if lake.period_start(v) <= date]
        if not keep or not _holds(values[keep[0]], date):
            raise PipelineError(f"drift: no committed partition of '{source}' for {date} "
                                f"(fix: ingest it first, or leave out --date for the newest)")
        values, sizes = [values[i] for i in keep], [sizes[i] for i in keep]
    chosen, rows = [], 0
    for value, size in zip(values, sizes):
        chosen.append(value)
        rows += size
        if rows >= min_rows:
            break
    return chosen


def _holds(value, date: dt.date) -> bool:
    """Whether the partition ``value`` (by day, month or year) holds ``date``."""
    return date.isoformat().startswith(lake.period_start(value).isoformat()[:len(str(value)[:10])])


def trigger_path(project: Project, model: str) -> str:
    return os.path.join(project.state_dir, "drift", "triggers", f"{model}.json")


def pending_triggers(project: Project) -> list[Trigger]:
    """The triggers not yet acted on (a damaged file is an error: a trigger must not be lost)."""
    folder = os.path.join(project.state_dir, "drift", "triggers")
    found = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if entry.endswith(".json"):
            path = os.path.join(folder, entry)
            with open(path, encoding="utf-8") as f:
                found.append(Trigger.from_json(f.read(), path, fix="run `millrace drift` again to rewrite it"))
    return found


def acted_on(project: Project, model: str) -> None:
    """The model was retrained: its trigger moves to ``triggers/acted/`` (kept, dated, for audit)."""
    path = trigger_path(project, model)
    if os.path.exists(path):
        done = os.path.join(os.path.dirname(path), "acted")
        os.makedirs(done, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        os.replace(path, os.path.join(done, f"{model}-{stamp}.json"))


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _log_to_mlflow(client, project: Project, name: str, record: DriftRecord) -> None:
    """A run ``drift-<date>`` in the model's experiment: the share as a metric, the reports as artifacts."""
    from millrace.training import registry

    run = client.create_run(registry.experiment_id(client, project, name), run_name=f"drift-{record.date}",
                            tags={"millrace.kind": "drift", "millrace.champion": record.champion,
                                  "millrace.drift.triggered": str(record.triggered).lower()})
    run_id = run.info.run_id
    client.log_metric(run_id, "drift_share", record.share)
    client.log_metric(run_id, "drifted_columns", len(record.drifted))
    client.log_param(run_id, "drift.threshold", record.threshold)
    client.log_param(run_id, "drift.partitions", json.dumps(record.partitions)[:6000])
    for path in (record.report_html, record.report_json, os.path.join(os.path.dirname(record.report_html),
                                                                     "verdict.json")):
        client.log_artifact(run_id, path, artifact_path="drift")
    client.set_terminated(run_id)
