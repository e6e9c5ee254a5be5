"""``millrace_nightly``: the nightly chain, one task per stage, daily, no catch-up.

ingest (with validate: nothing is committed unvalidated) → features → materialize → drift → train
→ index → release. Each task is ``millrace nightly --stages <stage>``; what one stage owes the
next is in the state dir (pending.json), so a task retried or rerun alone does the right work.
The drift task emits the ``millrace_drift_trigger`` asset only when a model's drift passed its
threshold (the trigger records as the event's extra); otherwise it is skipped and the chain goes
on. Set MILLRACE_PROJECT (and MILLRACE_STATE_DIR) in the workers' environment."""
from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Asset, task

from millrace.dags import cli

DRIFT = Asset(cli.DRIFT_ASSET)
RETRIES = {"retries": 3, "retry_delay": dt.timedelta(minutes=5), "retry_exponential_backoff": True}

with DAG("millrace_nightly", schedule="@daily", start_date=dt.datetime(2026, 1, 1), catchup=False,
         max_active_runs=1, default_args=RETRIES, tags=["millrace"], doc_md=__doc__) as dag:

    @task(task_id="ingest")
    def ingest() -> None:
        cli.stage("ingest")

    @task(task_id="features")
    def features() -> None:
        cli.stage("features")

    @task(task_id="materialize")
    def materialize() -> None:
        cli.stage("materialize")

    @task(task_id="drift", outlets=[DRIFT])
    def drift(*, outlet_events=None) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        report = cli.stage("drift")
        if not report["drift_triggers"]:
            raise AirflowSkipException("no model's drift passed its threshold: no retraining trigger")
        outlet_events[DRIFT].extra = {"triggers": report["drift_triggers"], "run_id": report["run_id"]}

    @task(task_id="train", trigger_rule="none_failed")  # a skipped drift (no trigger) is not a failure
    def train() -> None:
        cli.stage("train")

    @task(task_id="index")
    def index() -> None:
        cli.stage("index")

    @task(task_id="release")
    def release() -> None:
        cli.stage("release")

    ingest() >> features() >> materialize() >> drift() >> train() >> index() >> release()
