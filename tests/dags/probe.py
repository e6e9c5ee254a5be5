"""``python -m tests.dags.probe DAGS_FOLDER [DAG_ID]``: load the DAG folder with Airflow's DagBag in this
process and print one JSON line: import errors, each DAG's tasks, schedule, outlets and retries, the
heavy modules parsing loaded, and, given DAG_ID, the states of one ``dag.test()`` run of it. Run by
tests/dags in a child process, with AIRFLOW_HOME (and a SQLite metadata database) of its own."""
from __future__ import annotations

import json
import sys
import time

HEAVY = ("millrace.pipelines", "millrace.training", "millrace.features", "apache_beam", "torch", "mlflow", "feast",
         "great_expectations", "evidently")


def _mapped(task) -> bool:
    return any(c.__name__ == "MappedOperator" for c in type(task).__mro__)


def main() -> None:
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    out = {"errors": {path: text[-500:] for path, text in bag.import_errors.items()},
           "heavy": sorted(m for m in HEAVY if m in sys.modules), "parse_seconds": time.perf_counter() - started,
           "dags": {}}
    for dag_id, dag in bag.dags.items():
        condition = getattr(dag.timetable, "asset_condition", None)
        out["dags"][dag_id] = {
            "tasks": [t.task_id for t in dag.topological_sort()], "timetable": type(dag.timetable).__name__,
            "cron": getattr(dag.timetable, "expression", None), "catchup": dag.catchup,
            "schedule_assets": sorted(a.name for a in getattr(condition, "objects", ())),
            "outlets": {t.task_id: [o.name for o in t.outlets] for t in dag.tasks if t.outlets},
            "retries": {t.task_id: t.retries for t in dag.tasks},
            "mapped": sorted(t.task_id for t in dag.tasks if _mapped(t)),
            "params": sorted(dag.params)}
    if len(sys.argv) > 2:
        run = bag.get_dag(sys.argv[2]).test()
        out["run"] = {"state": str(run.state), "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
