"""``millrace nightly``: the scheduled job, as the chain of stages of ``STAGES`` (pipelines.stages
times each one, stops at the first that fails and writes the run report). Land the example if
needed; ingest and validate every source (only partitions with new or changed landing files; with
``--date``, that day's partitions, again only the new or changed ones unless ``--rerun``); rebuild
the feature views when the lake changed (or they were never built); apply the Feast repository;
materialize what changed; check the champions' inputs for drift when a partition was committed;
train the models of models.yaml when triggered: on the first run (no registered version yet), when
drift went over a model's threshold, when a model has no champion and new data came, when a
source's contract version differs from the one of the current release, or when asked
(``--force-train``); then index every retrieval champion that has no index and release the
champions when they or their indexes changed (idempotent, so a run killed after training releases
on the next one). New data alone does not retrain a model whose inputs have not drifted.

What is still owed survives a kill: ``<state>/nightly/pending.json`` says whether the feature views
must be rebuilt and which models must be trained (and why). It is written before the work it names
and cleared step by step as each step finishes (a model only once it is registered and gated), so
a run killed after the feature rebuild, or in the middle of a model's first training, leaves the
next run the same work instead of "nothing new"."""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, replace

from millrace.contracts.faults import checkpoint
from millrace.contracts.project import Project
from millrace.pipelines.errors import CorruptFile, PipelineError, RunFailed
from millrace.pipelines.stages import Done, RunReport, Skipped, TrainedModel


@dataclass(frozen=True)
class Pending:
    """The work a nightly owes. ``ingesting`` is set while ingest runs: found set, the last run
    died there and may have committed partitions, so the features are rebuilt to be sure."""

    features: bool = False
    train: tuple[str, ...] = ()
    ingesting: bool = False
    since: str = ""
    version: int = 1
    reasons: tuple[str, ...] = ()
    drift: bool = False  # partitions committed since the last drift check (a scheduler runs it apart)
    features_from: str = ""  # owed features: rebuild the snapshot days from this one on ("": every day)


def pending_path(project: Project) -> str:
    return os.path.join(project.state_dir, "nightly", "pending.json")


def read_pending(project: Project) -> Pending:
    path = pending_path(project)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return Pending(features=bool(data["features"]), train=tuple(data["train"]), ingesting=bool(data["ingesting"]),
                       since=str(data.get("since", "")), reasons=tuple(data.get("reasons", ())),
                       drift=bool(data.get("drift", False)), features_from=str(data.get("features_from", "")))
    except FileNotFoundError:
        return Pending()
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFile(path, f"not a pending-work record ({exc})",
                          "delete it and run `millrace nightly --force-train` to redo every step") from None


def write_pending(project: Project, pending: Pending) -> None:
    """Atomically (a temp file renamed), so a kill leaves the old record or the new one."""
    path = pending_path(project)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(pending), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _owe(pending: Pending, reason: str, features: bool = False, train: tuple[str, ...] = (),
         features_from: dt.date | None = None) -> Pending:
    """``reason`` is kept when it owes training: the reasons are the run report's training triggers.
    ``features_from``: the owed feature rebuild may start at that day (None: every day); what was
    owed before widens it."""
    names = pending.train + tuple(n for n in train if n not in pending.train)
    kept = (reason,) if train and reason not in pending.reasons else ()
    owed_from = _widened(pending, features_from) if features else pending.features_from
    return replace(pending, features=pending.features or features, train=names, features_from=owed_from,
                   since=pending.since or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   reasons=pending.reasons + kept)


def _widened(pending: Pending, day: dt.date | None) -> str:
    """The first day of the owed feature rebuild: the earlier of the one owed and ``day``; "" (every
    day) wins over any day."""
    if day is None or (pending.features and not pending.features_from):
        return ""
    return min(pending.features_from, day.isoformat()) if pending.features else day.isoformat()


def _settled(pending: Pending) -> Pending:
    return pending if pending.features or pending.train else replace(pending, since="", reasons=())


def chosen_stages(names: list[str] | None) -> tuple[str, ...]:
    """The stages to run, in chain order (``--stages``; None: all). Validation runs inside ingest,
    before each partition commits, so the two go together."""
    if not names:
        return STAGES
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise PipelineError(f"--stages: unknown stage(s) {unknown} (fix: use some of {', '.join(STAGES)})")
    wanted = set(names)
    if ("ingest" in wanted) != ("validate" in wanted):
        wanted |= {"ingest", "validate"}  # one unit: nothing is committed unvalidated
    return tuple(n for n in STAGES if n in wanted)


STAGES = ("ingest", "validate", "features", "materialize", "drift", "train", "index", "release")


def nightly(console, project: Project, beam_args: list[str], expectations: bool = True, bundled: bool = False,
            train: bool | None = None, date: dt.date | None = None, as_json: bool = False,
            stages: tuple[str, ...] = STAGES, rerun: bool = False) -> RunReport:
    """``train``: True always trains, False never, None when triggered. ``date``: ingest only that
    day's partitions (a scheduler's data interval) that have new or changed files, or all of them
    with ``rerun``; the later stages see the whole lake.
    ``stages``: run only these (a scheduler's one task per stage; what one stage owes the next
    survives in pending.json). Returns the run report (also written under the state dir); a
    failing stage raises StageFailed."""
    from millrace.pipelines.ingest import new_run_id
    from millrace.pipelines.stages import Chain, render

    if bundled:
        from millrace.pipelines.example import already_landed, land

        if not already_landed(project):
            console.print("landing the MovieLens example (first run)...")
            for source, landed in land(project).items():
                console.print(f"  {source}: {landed.records:,} records in {landed.files:,} files "
                              f"({landed.planted} planted bad records)")
    has_features = (project.root / "features.yaml").exists()
    models = _model_names(project) if has_features and (project.root / "models.yaml").exists() else []
    chain = Chain(project, new_run_id(), stages, date)
    if rerun and date is None:
        raise PipelineError("--rerun redoes one day's committed work: it needs --date (fix: add --date YYYY-MM-DD, "
                            "or rebuild a range with `millrace backfill --from D1 --to D2`)")
    work = _Work(console, project, beam_args, expectations, date, has_features, models, rerun, chain.run_id)
    no_features = lambda: Skipped("no features.yaml in the project")  # noqa: E731
    bodies = {"ingest": work.ingest, "validate": work.validate,
              "features": work.features if has_features else no_features,
              "materialize": work.materialize if has_features else no_features,
              "drift": work.drift, "train": lambda: work.train(train), "index": work.index, "release": work.release}
    for name in stages:
        chain.run(name, bodies[name])
        chain.training_triggers, chain.release = list(work.triggers), work.current
        chain.drift_triggers, chain.models_trained = work.drift_triggers, work.trained
    report, path = chain.write()
    if as_json:
        from millrace.pipelines.cli.common import print_json

        print_json(report)
        return report
    render(console, report, path)
    release = f", release {work.current} current (millrace release show)" if work.current else ""
    console.print(f"nightly done: lake at {project.lake}, data docs at {project.state_dir}/data_docs, "
                  f"Feast repository at {project.state_dir}/feast{release}")
    return report


class _Work:
    """The stages' bodies; what one stage learns (the ingest results, what is owed, the champions)
    the next one reads from here."""

    def __init__(self, console, project: Project, beam_args, expectations: bool, date, has_features: bool,
                 models: list[str], rerun: bool = False, run_id: str = ""):
        self.console, self.project, self.beam_args, self.expectations = console, project, beam_args, expectations
        self.date, self.has_features, self.models, self.rerun = date, has_features, models, rerun
        self.run_id = run_id
        self.trained: list[TrainedModel] = []
        self.results, self.failures = [], []
        self.pending = read_pending(project)
        self.triggers: tuple[str, ...] = ()
        self.champions: dict[str, str] = {}
        self.indexes: dict[str, str] = {}
        self.current: str | None = None
        self.drift_triggers: list[dict] = []

    def ingest(self) -> Done | Skipped:
        from millrace.pipelines.errors import NothingToIngest
        from millrace.pipelines.summary import run_ingest_with_summary

        project, pending = self.project, self.pending
        died_ingesting = pending.ingesting
        write_pending(project, replace(pending, ingesting=True))
        for source in project.sources:
            try:
                self.results.append(run_ingest_with_summary(self.console, project, source, self.date, self.date,
                                                            self.beam_args, self.expectations,
                                                            changed_only=not self.rerun))
            except RunFailed as exc:  # partitions refused by validation: the other sources still go in
                self.failures.append(str(exc))
            except NothingToIngest as exc:  # --date with no landing files for this source
                self.console.print(f"  {source}: {exc}")
        if any(r.committed for r in self.results) or died_ingesting:
            why = "new data in the lake" if not died_ingesting else "the last run died during ingest"
            day = None if died_ingesting else self._first_changed_day()
            pending = replace(_owe(pending, why, features=self.has_features, features_from=day),
                              drift=bool(self.models))
        self.pending = _settled(replace(pending, ingesting=False))
        write_pending(project, self.pending)  # what this ingest changed is owed before anything else can fail
        committed = sum(len(r.committed) for r in self.results)
        if not committed:
            return Skipped("no new or changed landing files" + (f" for {self.date}" if self.date else ""))
        return Done(sum(r.total("records") for r in self.results),
                    f"{committed} partition(s) committed from {len(self.results)} source(s)")

    def _first_changed_day(self) -> dt.date | None:
        if not self.has_features:
            return None
        from millrace.features.spec import load_features
        from millrace.pipelines.features_build import first_changed_day

        committed = {r.source: [p.partition for p in r.committed] for r in self.results}
        return first_changed_day(self.project, load_features(self.project), committed)

    def validate(self) -> Done | Skipped:
        """Validation runs inside ingest, on each partition before it commits (nothing invalid
        reaches the lake); this stage reports it and fails when a partition was refused."""
        if self.failures:
            raise RunFailed("; ".join(self.failures))
        if not any(r.reports for r in self.results):
            return Skipped("nothing ingested")
        good = sum(r.total("good") for r in self.results)
        bad = sum(r.total("quarantined") for r in self.results)
        return Done(good, f"{bad:,} quarantined; checked within ingest before each partition committed", timed=False)

    def features(self) -> Done | Skipped:
        from millrace.features import offline
        from millrace.features.spec import load_features
        from millrace.pipelines.features_build import build, first_changed_day, lake_changes, rebuildable_from

        project, features = self.project, load_features(self.project)
        missing = [v for v in features.views if offline.read_manifest(project.offline, v) is None]
        if missing and not self.pending.features:
            self.pending = _owe(self.pending, "feature views never built", features=True)
            write_pending(project, self.pending)
        if not self.pending.features:
            changed = lake_changes(project, features)
            if changed:  # e.g. a stream's lake commits: rebuilt from the first day they can change
                self.pending = replace(_owe(self.pending, "partitions committed outside the nightly", features=True,
                                            features_from=first_changed_day(project, features, changed)),
                                       drift=bool(self.models) or self.pending.drift)
                write_pending(project, self.pending)
        if not self.pending.features:
            return Skipped("no new data: every view is up to date")
        rows = 0
        owed_from = dt.date.fromisoformat(self.pending.features_from) if self.pending.features_from else None
        first = rebuildable_from(project, features, owed_from)
        with self.console.status("building feature views..."):
            built = list(build(project, features, first=first, beam_args=self.beam_args))
        for r in built:
            detail = f"{r.rows:,} rows, {r.entities:,} entities" if r.status == "built" else r.problem
            self.console.print(f"  features {r.view}: {detail}")
            rows += r.rows if r.status == "built" else 0
        days = f"the days from {first} on" if first else "every day"
        return Done(rows, f"{len(built)} view(s) rebuilt ({days})")

    def materialize(self) -> Done:
        from millrace.features.feast_repo import applied
        from millrace.features.materialize import materialize
        from millrace.features.spec import load_features

        features = load_features(self.project)
        written = unchanged = 0
        with self.console.status("applying Feast and materializing..."):
            for r in materialize(self.project, features, store=applied(self.project, features)):
                self.console.print(f"  online {r.view}: {r.written:,} written, {r.skipped_unchanged:,} unchanged")
                written, unchanged = written + r.written, unchanged + r.skipped_unchanged
        if self.pending.features:
            self.pending = _settled(replace(self.pending, features=False, features_from=""))
            write_pending(self.project, self.pending)
        return Done(written, f"{unchanged:,} unchanged")

    def drift(self) -> Done | Skipped:
        """Only when ingest committed something: the newest partition is then a new one."""
        from millrace.pipelines.drift import NO_CHAMPION, drift, pending_triggers

        if not self.models:
            return Skipped("no models.yaml in the project")
        if not self.pending.drift:
            return Skipped("no new partition to compare")
        checked = drift(self.project, self.models, say=self.console.print)
        self.pending = replace(self.pending, drift=False)
        no_champion = tuple(c.model for c in checked if c.why == NO_CHAMPION)
        if no_champion:  # nothing to compare against: new data is the only chance to pass the gates
            self.pending = _owe(self.pending, f"no champion yet, new data ({', '.join(no_champion)})",
                                train=no_champion)
        write_pending(self.project, self.pending)  # one write: the check done and what it owes
        compared = [c.record for c in checked if c.record is not None]
        if not compared:
            return Skipped("; ".join(f"{c.model}: {c.why}" for c in checked) or "no champion yet")
        for r in compared:
            self.console.print(f"  drift {r.model}: share {r.share:.2f} of {len(r.columns)} columns "
                               f"(threshold {r.threshold:.2f}){': retraining triggered' if r.triggered else ''}")
        fired = [r.model for r in compared if r.triggered]
        self.drift_triggers = [t.model_dump() for t in pending_triggers(self.project) if t.model in fired]
        return Done(sum(r.current_rows for r in compared),
                    f"triggered: {', '.join(fired)}" if fired else "no trigger (every share within its threshold)")

    def train(self, train: bool | None) -> Done | Skipped:
        from millrace.pipelines.drift import acted_on, pending_triggers, remember_champions

        if not self.models:
            checkpoint("before_training")
            return Skipped("no models.yaml in the project")
        if train:  # owed before anything runs: a forced run killed here leaves the training to the next
            self.pending = _owe(self.pending, "asked (--force-train)", train=tuple(self.models))
        changed = _contract_changes(self.project)
        if changed:
            self.pending = _owe(self.pending, f"contract version changed ({changed})", train=tuple(self.models))
        for trigger in pending_triggers(self.project):
            if trigger.model in self.models:
                self.pending = _owe(self.pending, f"drift {trigger.share:.2f} > {trigger.threshold:.2f} on "
                                    f"{trigger.date} ({trigger.model})", train=(trigger.model,))
        write_pending(self.project, self.pending)
        checkpoint("before_training")
        self.triggers = ("asked (--force-train)",) if train else self.pending.reasons
        if train is False:
            owed = f"; still owed: {', '.join(self.pending.train)}" if self.pending.train else ""
            self.console.print(f"  models: not training (--no-train){owed}")
            return Skipped(f"--no-train{owed}")
        outcomes, failed = _models(self.console, self.project, self.pending, self.models, always=bool(train))
        trained = [o.model for o in outcomes]
        for name in trained:
            acted_on(self.project, name)
        self.trained = [TrainedModel(model=o.model, version=o.version, run_id=o.run_id, promoted=o.promoted)
                        for o in outcomes]
        if trained and not self.triggers:
            self.triggers = ("first training",)
        _tag_runs(self.project, self.trained, self.run_id, self.triggers)
        if trained:
            remember_champions(self.project, self.models)
        if failed:
            raise RunFailed("training failed: " + "; ".join(failed))
        if not trained:
            return Skipped("nothing new to train on")
        return Done(len(trained), "trained: " + ", ".join(trained))

    def index(self) -> Done | Skipped:
        if not self.models:
            return Skipped("no models.yaml in the project")
        self.champions = _champions(self.console, self.project, self.models)
        if not self.champions:
            return Skipped("no model has a champion yet")
        self.indexes, built = _indexes(self.console, self.project, self.champions)
        if not self.indexes:
            return Skipped("no retrieval model among the champions")
        if not built:
            return Skipped("every retrieval champion has its index")
        from millrace.pipelines.drift import remember_champions

        remember_champions(self.project, self.models)  # after the registry's tags of the new indexes
        return Done(len(built), "built: " + ", ".join(built))

    def release(self) -> Done | Skipped:
        if not self.champions and self.models:  # the index stage ran in another process
            self.champions = _champions(self.console, self.project, self.models)
            if self.champions:
                self.indexes = _indexes(self.console, self.project, self.champions)[0]
        if not self.champions:
            self.console.print("  release: none (no model has a champion yet)")
            return Skipped("no model has a champion yet")
        self.current, made = _release(self.console, self.project, self.champions, self.indexes)
        return Done(detail=f"{self.current} is current") if made else \
            Skipped(f"{self.current} is current (its champions and indexes are unchanged)")


def _tag_runs(project: Project, trained: list[TrainedModel], run_id: str, triggers: tuple[str, ...]) -> None:
    """Each training run this nightly started names the nightly and why it trained: from MLflow a
    user finds the run report (``millrace.nightly.report``)."""
    from millrace.pipelines.stages import report_path
    from millrace.training import registry

    if not trained:
        return
    client = registry.connect(project)
    for t in trained:
        for key, value in (("millrace.nightly.run_id", run_id), ("millrace.nightly.triggers", "; ".join(triggers)),
                           ("millrace.nightly.report", report_path(project, run_id))):
            client.set_tag(t.run_id, key, value[:4000])


def _model_names(project: Project) -> list[str]:
    from millrace.features.spec import load_features
    from millrace.training.spec import load_models

    return list(load_models(project, load_features(project)).names)


def _models(console, project: Project, pending: Pending, names: list[str],
            always: bool) -> tuple[list, list[str]]:
    """Train what is owed (or everything, ``always``); returns the training outcomes and the
    failures, one line each."""
    from millrace.pipelines.drift import NOT_TRAINED, champion_facts
    from millrace.pipelines.train import train_with_summary
    from millrace.training.errors import TrainingError

    owed = [n for n in names if always or n in pending.train]
    if not always:
        facts = champion_facts(project, [n for n in names if n not in owed])
        owed += [n for n, f in facts.items() if f.why == NOT_TRAINED]  # never registered: its first training
    owed = [n for n in names if n in owed]  # the order of models.yaml
    if not owed:
        console.print("  models: nothing new to train on (use --force-train to retrain anyway)")
        return [], []
    if pending.train and not always:
        console.print(f"  models: owed since {pending.since} ({'; '.join(pending.reasons) or 'first training'}): "
                      f"{', '.join(n for n in owed if n in pending.train)}")
    pending = _owe(pending, "asked (--force-train)" if always else "first training", train=tuple(owed))
    write_pending(project, pending)  # before training: a kill mid-training leaves the model owed
    trained, failures = [], []
    for name in owed:
        try:
            outcome = train_with_summary(console, project, [name])[0]
        except TrainingError as exc:  # one refused model must not hold back the others; it stays owed
            console.print(f"[red]  {name}: {exc}[/]")
            failures.append(f"{name}: {exc}")
            continue
        trained.append(outcome)
        pending = _settled(replace(pending, train=tuple(n for n in pending.train if n != name)))
        write_pending(project, pending)
    return trained, failures


def _champions(console, project: Project, names: list[str]) -> dict[str, str]:
    """Each model's champion version; models without one are left out (said on the console)."""
    from millrace.pipelines.drift import NOT_TRAINED, champion_facts

    champions = {}
    for name, facts in champion_facts(project, names).items():
        if facts.champion is not None:
            champions[name] = facts.champion
        elif facts.why == NOT_TRAINED:
            console.print(f"  release: {name} left out (not trained yet)")
        else:
            console.print(f"  release: {name} left out (no version has passed its gates: no champion)")
    return champions


def _indexes(console, project: Project, champions: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Every retrieval champion's newest passing index (built when it has none): the build ids by
    model, and the models whose index this run built."""
    from millrace.features.spec import load_features
    from millrace.indexing.errors import IndexingError
    from millrace.pipelines.index import index_with_summary, latest_index
    from millrace.training import registry
    from millrace.training.spec import load_models

    models = load_models(project, load_features(project))
    indexes, built = {}, []
    for name, version in champions.items():
        if models.get(name).family != "two_tower":
            continue
        reg = registry.registered_name(project, name)
        folder = latest_index(project, reg, version)
        if folder is None:
            try:
                folder = index_with_summary(console, project, name, version=version).folder
            except IndexingError as exc:
                raise RunFailed(f"index of {reg} v{version}: {exc}; the current release stays") from None
            built.append(f"{name} v{version}")
        indexes[name] = os.path.basename(folder)
    return indexes, built


def _release(console, project: Project, champions: dict[str, str], indexes: dict[str, str]) -> tuple[str, bool]:
    """Release the champions unless the current release already holds exactly them and their
    indexes. Returns the current release id and whether this call made it. Idempotent: a nightly
    killed after training releases on its next run."""
    from millrace.indexing.release import current, read
    from millrace.pipelines.release import create, release_root

    root = release_root(project)
    pointer = current(root)
    if pointer is not None:
        held = read(root, pointer.release)
        if {n: m.version for n, m in held.models.items()} == champions and \
                {n: i.build_id for n, i in held.indexes.items()} == indexes:
            console.print(f"  release {held.id} is current (its champions and indexes are unchanged)")
            return held.id, False
    made = create(project, list(champions))
    what = ", ".join(f"{n} v{v}" for n, v in champions.items())
    console.print(f"  release {made.id} is current: {what}")
    return made.id, True


def _contract_changes(project: Project) -> str:
    """The sources whose contract version differs from the one the current release was trained
    under ("ratings 1.0.0 -> 1.1.0"), or "" (also when nothing is released yet)."""
    from millrace.indexing.release import current, read
    from millrace.pipelines.release import release_root

    root = release_root(project)
    pointer = current(root)
    if pointer is None:
        return ""
    held = read(root, pointer.release).contracts
    changed = [f"{s} {ref.version} -> {project.contract(s).version}" for s, ref in held.items()
               if s in project.sources and project.contract(s).version != ref.version]
    return ", ".join(changed)
