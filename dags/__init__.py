"""Airflow 3 DAGs of millrace (``millrace.dags``): point Airflow's ``dags_folder`` at this folder.

``millrace_nightly`` runs the nightly chain one task per stage, ``millrace_retrain`` runs training,
indexing and release whenever the nightly's drift task emits the drift asset, ``millrace_backfill``
rebuilds a range of partitions (one mapped task each) when triggered by hand. The DAG files are
thin: every task runs the ``millrace`` CLI in a subprocess (``cli.run``), so parsing them imports
Airflow's SDK and nothing of millrace's pipelines, Beam, torch, MLflow or Feast (tests/dags)."""
