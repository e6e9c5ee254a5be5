"""``millrace_backfill``: rebuild the partitions with a landing date in ``from``..``to``, one mapped
task per partition, then rebuild and materialize the features once. Triggered by hand with the
two params (``airflow dags trigger millrace_backfill -c '{"from": "2016-01-01", "to": "2016-06-30"}'``).

``plan`` lists the partitions (``millrace backfill --plan``); each mapped ``ingest`` task is
``millrace ingest --source S --from F --to T --partition P``: partitions of different sources
run in parallel, those of one source queue at the source's write lock (``--lock-wait``), since a
source has one writer. A failed partition's task is retried or cleared alone: the others stay
committed. Nothing here trains, so ``champion`` never moves; retrain afterwards with
``millrace nightly --force-train`` (or ``millrace backfill ... --promote`` by hand)."""
from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, get_current_context, task

from millrace.dags import cli

LOCK_WAIT_SECONDS = 6 * 3600  # a partition waits for the ones of its source ahead of it
DATE = {"type": "string", "format": "date", "description": "a landing date, YYYY-MM-DD"}

with DAG("millrace_backfill", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, max_active_runs=1,
         default_args={"retries": 3, "retry_delay": dt.timedelta(minutes=5)}, tags=["millrace"], doc_md=__doc__,
         params={"from": Param(dt.date.today().replace(day=1).isoformat(), **DATE),
                 "to": Param(dt.date.today().isoformat(), **DATE)}) as dag:

    def _range() -> list[str]:
        params = get_current_context()["params"]
        return ["--from", params["from"], "--to", params["to"]]

    @task(task_id="plan")
    def plan() -> list[dict]:
        return cli.run(["backfill", *_range(), "--plan"])

    @task(task_id="ingest", map_index_template="{{ task.op_kwargs['unit']['source'] }}="
                                                "{{ task.op_kwargs['unit']['partition'] }}")
    def ingest(unit: dict) -> None:
        cli.run(["ingest", "--source", unit["source"], "--from", unit["first_landing"], "--to",
                 unit["last_landing"], "--partition", unit["partition"], "--lock-wait", str(LOCK_WAIT_SECONDS)])

    @task(task_id="features")
    def features() -> None:
        cli.run(["backfill", *_range(), "--stages", "features,materialize"])

    ingest.expand(unit=plan()) >> features()
