"""``millrace backfill --from D1 --to D2``: rebuild a range of partitions, resumably.

Each source's partitions with a landing date in the range are re-ingested ``--chunk`` partitions
per ingest run (one Beam pipeline, one atomic commit each); after every chunk the backfill record
``<state>/backfills/<from>_<to>.json`` (:class:`BackfillRecord`) lists what is committed, so a
killed backfill, run again with the same range, resumes after the last committed chunk. Sources go
``--workers`` at a time; within a source, chunks go one after another (a source has one writer:
ingest holds its lock). Then the feature views are rebuilt and materialized once for the range.

The ``train`` stage (asked with ``--stages``) registers a new version of every model as
``challenger`` with its gate verdict, and never moves ``champion``; ``--promote`` trains, moves
``champion`` to each version that passes its gates, then indexes and releases like the nightly."""
from __future__ import annotations

import datetime as dt
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from millrace.contracts.project import Project
from millrace.contracts.records import Record
from millrace.pipelines import landing
from millrace.pipelines.errors import PipelineError, RunFailed

STAGES = ("ingest", "features", "materialize", "train")
DEFAULT_STAGES = ("ingest", "features", "materialize")


class BackfillRecord(Record):
    """``<state>/backfills/<from>_<to>.json``: what a backfill of this range has committed."""

    format_version: Literal[1] = 1
    start: str
    end: str
    stages: list[str]
    started_at: str
    finished_at: str = ""
    done: dict[str, list[str]] = {}     # source -> partitions committed by this backfill, in order
    features_built: bool = False
    materialized: bool = False
    promote: bool = False
    trained: dict[str, str] = {}        # model -> the version this backfill registered
    release: str = ""                   # with --promote: the release current at the end


def record_path(project: Project, start: dt.date, end: dt.date) -> str:
    return os.path.join(project.state_dir, "backfills", f"{start.isoformat()}_{end.isoformat()}.json")


def read_record(project: Project, start: dt.date, end: dt.date) -> BackfillRecord | None:
    path = record_path(project, start, end)
    try:
        with open(path, encoding="utf-8") as f:
            return BackfillRecord.from_json(f.read(), path, fix="delete it to start the backfill over")
    except FileNotFoundError:
        return None


def _write(project: Project, record: BackfillRecord) -> None:
    path = record_path(project, dt.date.fromisoformat(record.start), dt.date.fromisoformat(record.end))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(record.to_json())
    os.replace(tmp, path)


def chunks(project: Project, source: str, start: dt.date, end: dt.date, size: int,
           skip: set[str]) -> list[tuple[dt.date, dt.date, list[str]]]:
    """The source's partitions with a landing date in [start, end], not in ``skip``, in order,
    ``size`` at a time: (first landing date, last landing date, partitions) per ingest run."""
    contract = project.contract(source)
    found = landing.scan(project.landing, source, contract)
    dates: dict[str, list[str]] = {}
    for f in found.files:
        if start.isoformat() <= f.landing_date <= end.isoformat():
            dates.setdefault(str(f.partition), []).append(f.landing_date)
    todo = [p for p in sorted(dates, key=lambda p: min(dates[p])) if p not in skip]
    out = []
    for i in range(0, len(todo), size):
        group = todo[i:i + size]
        first, last = min(dates[group[0]]), max(dates[group[-1]])
        out.append((dt.date.fromisoformat(first), dt.date.fromisoformat(last), group))
    return out


class PlannedPartition(Record):
    """One partition a backfill of the range rebuilds: a scheduler's mapped task each
    (``millrace ingest --source S --from F --to T --partition P``)."""

    source: str
    partition: str
    first_landing: str
    last_landing: str


def plan(project: Project, start: dt.date, end: dt.date) -> list[PlannedPartition]:
    """Every partition with a landing date in [start, end], source by source, in landing order."""
    if start > end:
        raise PipelineError(f"--from {start} is after --to {end} (fix: swap them)")
    return [PlannedPartition(source=source, partition=group[0], first_landing=first.isoformat(),
                             last_landing=last.isoformat())
            for source in project.sources for first, last, group in chunks(project, source, start, end, 1, set())]


def backfill(console, project: Project, start: dt.date, end: dt.date, stages: tuple[str, ...] = DEFAULT_STAGES,
             chunk: int = 12, workers: int = 1, beam_args: list[str] | None = None,
             expectations: bool = True, promote: bool = False) -> BackfillRecord:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from millrace.pipelines.ingest import ingest

    if start > end:
        raise PipelineError(f"--from {start} is after --to {end} (fix: swap them)")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise PipelineError(f"--stages: unknown stage(s) {unknown} (fix: use some of {', '.join(STAGES)})")
    if promote and "train" not in stages:
        stages = (*stages, "train")  # promoting is training's last step
    stages = tuple(s for s in STAGES if s in stages)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record = read_record(project, start, end)
    if record is None or record.finished_at or record.stages != list(stages) or record.promote != promote:
        record = BackfillRecord(start=start.isoformat(), end=end.isoformat(), stages=list(stages), started_at=now,
                                promote=promote)
        _write(project, record)
    else:
        held = sum(len(v) for v in record.done.values())
        console.print(f"resuming the backfill started {record.started_at}: {held} partition(s) already committed")
    lock = threading.Lock()
    state = {"record": record}
    timings: dict[str, float] = {}

    if "ingest" in stages:
        plans = {s: chunks(project, s, start, end, chunk, set(record.done.get(s, []))) for s in project.sources}
        total = sum(len(g[2]) for groups in plans.values() for g in groups)
        with Progress(TextColumn("[bold]backfill[/] partitions"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("ingest", total=total)

            def one_source(source: str) -> None:
                began = time.perf_counter()
                for first, last, group in plans[source]:
                    # exactly the chunk's partitions: another one may share a landing date with it
                    result = ingest(project, source, first, last, beam_args, expectations,
                                    partitions=frozenset(group))
                    if result.rejected:
                        names = ", ".join(f"{r.key}={r.partition}" for r in result.rejected)
                        raise RunFailed(f"{source}: partition(s) not committed: {names} "
                                        f"(first: {result.rejected[0].problem})")
                    with lock:
                        current = state["record"]
                        done = {**current.done, source: [*current.done.get(source, []), *group]}
                        state["record"] = current.model_copy(update={"done": done})
                        _write(project, state["record"])
                    bar.advance(task, len(group))
                timings[source] = time.perf_counter() - began

            with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="backfill") as pool:
                for future in [pool.submit(one_source, s) for s in project.sources]:
                    future.result()  # the first failure leaves as itself; finished chunks are recorded
    record = state["record"]
    if "features" in stages and (project.root / "features.yaml").exists() and not record.features_built:
        from millrace.features.spec import load_features
        from millrace.pipelines.features_build import build

        began = time.perf_counter()
        with console.status("rebuilding feature views..."):
            build(project, load_features(project), start, end, beam_args=beam_args)
        timings["features"] = time.perf_counter() - began
        record = record.model_copy(update={"features_built": True})
        _write(project, record)
    if "materialize" in stages and (project.root / "features.yaml").exists() and not record.materialized:
        from millrace.features.feast_repo import applied
        from millrace.features.materialize import materialize
        from millrace.features.spec import load_features

        began = time.perf_counter()
        with console.status("materializing..."):
            features = load_features(project)
            materialize(project, features, store=applied(project, features))
        timings["materialize"] = time.perf_counter() - began
        record = record.model_copy(update={"materialized": True})
        _write(project, record)
    if "train" in stages:
        record = _train(console, project, record, timings)
    record = record.model_copy(update={"finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    _write(project, record)
    _render(console, record, timings)
    return record


def _train(console, project: Project, record: BackfillRecord, timings: dict[str, float]) -> BackfillRecord:
    """Every model not yet trained by this backfill (a resumed one skips those it registered);
    with ``promote``, champion moves on a passing gate and the champions are indexed and released."""
    from millrace.pipelines.nightly import _champions, _indexes, _model_names, _release
    from millrace.pipelines.train import train_with_summary

    if not (project.root / "models.yaml").exists():
        return record
    began = time.perf_counter()
    for name in _model_names(project):
        if name in record.trained:
            continue
        outcome = train_with_summary(console, project, [name], promote=record.promote)[0]
        record = record.model_copy(update={"trained": {**record.trained, name: outcome.version}})
        _write(project, record)
    if record.promote:
        champions = _champions(console, project, list(record.trained))
        if champions:
            indexes = _indexes(console, project, champions)[0]
            record = record.model_copy(update={"release": _release(console, project, champions, indexes)[0]})
            _write(project, record)
    timings["train"] = time.perf_counter() - began
    return record


def _render(console, record: BackfillRecord, timings: dict[str, float]) -> None:
    from rich.table import Table

    if record.promote:
        caption = f"champion moved where a gate passed; release {record.release or 'unchanged'} is current"
    elif record.trained:
        caption = "new versions are challengers: champion unchanged (promote with `millrace models promote`)"
    else:
        caption = "no model trained: champion unchanged (retrain with `millrace nightly --force-train`)"
    table = Table(title=f"backfill {record.start} .. {record.end}", caption=caption)
    table.add_column("step")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    for source, parts in record.done.items():
        table.add_row(f"ingest {source}", f"{len(parts):,} partition(s)",
                      f"{timings[source]:.1f}" if source in timings else "")
    for step, flag in (("features", record.features_built), ("materialize", record.materialized)):
        if step in record.stages:
            table.add_row(step, "done" if flag else "", f"{timings[step]:.1f}" if step in timings else "")
    if "train" in record.stages:
        trained = ", ".join(f"{m} v{v}" for m, v in record.trained.items()) or "nothing"
        table.add_row("train", trained, f"{timings['train']:.1f}" if "train" in timings else "")
    console.print(table)
