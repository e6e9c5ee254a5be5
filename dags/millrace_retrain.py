"""``millrace_retrain``: train → index → release, scheduled on the ``millrace_drift_trigger`` asset.

The nightly's drift task emits the asset when a model's inputs drifted past its threshold; the
trigger records travel as the event's extra and stay in the state dir (drift/triggers/), which is
what the train stage acts on, so a retried or late run retrains exactly the triggered models."""
from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Asset, task

from millrace.dags import cli

DRIFT = Asset(cli.DRIFT_ASSET)

with DAG("millrace_retrain", schedule=[DRIFT], start_date=dt.datetime(2026, 1, 1), catchup=False,
         max_active_runs=1, default_args={"retries": 3, "retry_delay": dt.timedelta(minutes=5)},
         tags=["millrace"], doc_md=__doc__) as dag:

    @task(task_id="train")
    def train(*, triggering_asset_events=None) -> None:
        for event in (triggering_asset_events or {}).get(DRIFT, []):
            print(f"drift trigger: {event.extra}")
        cli.stage("train")

    @task(task_id="index")
    def index() -> None:
        cli.stage("index")

    @task(task_id="release")
    def release() -> None:
        cli.stage("release")

    train() >> index() >> release()
