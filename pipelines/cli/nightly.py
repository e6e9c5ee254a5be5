"""``millrace nightly``: the scheduled job."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer()


@app.command("nightly", context_settings=common.PASS_THROUGH)
def nightly(ctx: typer.Context,
            date: Optional[str] = typer.Option(None, "--date", metavar="YYYY-MM-DD", help="Ingest only this day's "
                                               "partitions with new or changed files (a scheduler's data interval; "
                                               "default: every new or changed landing file)."),
            rerun: bool = typer.Option(False, "--rerun", help="With --date: ingest that day's partitions again even "
                                       "when committed and unchanged, then redo the stages after it."),
            force_train: bool = typer.Option(False, "--force-train", "--train", help="Retrain every model (default: "
                                             "only when triggered: first run, drift over a model's threshold, no "
                                             "champion yet, a contract version change)."),
            no_train: bool = typer.Option(False, "--no-train", help="Never train (what is owed stays owed)."),
            stages: Optional[str] = typer.Option(None, "--stages", metavar="A,B", help="Run only these stages, "
                                                 "in chain order (ingest, validate, features, materialize, drift, "
                                                 "train, index, release; ingest and validate go together). "
                                                 "Default: all."),
            expectations: bool = typer.Option(True, help="Run the Great Expectations suites."),
            as_json: bool = common.json_option()):
    """The scheduled job, stage by stage: ingest, validate, features, materialize, drift, train,
    index, release; one summary table and a JSON run report under the state dir."""
    from millrace.pipelines.nightly import chosen_stages
    from millrace.pipelines.nightly import nightly as run_nightly

    if force_train and no_train:
        common.fail("--force-train and --no-train contradict each other (fix: pass one)")
    day = common.date_range(date, None, None)[0]
    run_nightly(common.console(as_json), common.project(), list(ctx.args), expectations, bundled=common.is_bundled(),
                train=True if force_train else False if no_train else None, date=day, as_json=as_json, rerun=rerun,
                stages=chosen_stages([s.strip() for s in stages.split(",") if s.strip()] if stages else None))
