"""A run never ends as "nothing to ingest" when it could not see what happened: a failed listing
raises, and a planned partition without a report fails the run."""
import os

import pytest

from millrace.contracts.errors import StorageError
from millrace.contracts.project import load_project
from millrace.pipelines import ingest as ingest_module
from millrace.pipelines import lake
from millrace.pipelines.errors import RunFailed

HEADER = "userId,movieId,rating,timestamp\n"


@pytest.fixture
def project(project_dir):
    project = load_project(project_dir)
    folder = os.path.join(project.landing, "ratings", "2009-12-14")
    os.makedirs(folder)
    with open(os.path.join(folder, "r.csv"), "w") as fh:
        fh.write(HEADER + "".join(f"{u},{u + 1},4.0,1260759144\n" for u in range(1, 30)))
    return project


@pytest.mark.slow
def test_a_failed_listing_of_the_reports_raises(project, monkeypatch):
    real = lake.list_dir

    def list_dir(directory):
        if directory.endswith("partitions"):
            raise StorageError(directory, "cannot list the folder: Input/output error")
        return real(directory)

    monkeypatch.setattr(lake, "list_dir", list_dir)
    with pytest.raises(StorageError, match="partitions: cannot list the folder"):
        ingest_module.ingest(project, "ratings", validate=False)


@pytest.mark.slow
def test_a_planned_partition_without_a_report_fails_the_run(project, monkeypatch):
    real = ingest_module._load_reports
    monkeypatch.setattr(ingest_module, "_load_reports", lambda reports_dir: [])
    with pytest.raises(RunFailed, match=r"ratings: no report for 1 of 1 partition\(s\) under .*e\.g\. 2009-12"):
        ingest_module.ingest(project, "ratings", validate=False)
    # nothing was committed: a run commits only when every planned partition has its outcome
    assert lake.committed_partitions(project.lake, "ratings", "month") == []
    monkeypatch.setattr(ingest_module, "_load_reports", real)
    result = ingest_module.ingest(project, "ratings", validate=False)
    assert [r.status for r in result.reports] == ["committed"]
    assert [c.value for c in lake.committed_partitions(project.lake, "ratings", "month")] == ["2009-12"]
