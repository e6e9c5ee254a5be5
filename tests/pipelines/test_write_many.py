"""write_partitions: partitions written together are each judged and committed on their own."""
import json

import pytest

from millrace.contracts.loader import load_contract
from millrace.pipelines import lake
from millrace.pipelines.write import COMMITTED, REJECTED, Locations, write_partition, write_partitions
from tests.conftest import EXAMPLE
from tests.pipelines.test_transforms import HEADER, _landing
from millrace.pipelines.decode import decode_file
from tests.pipelines.test_transforms import NOW_US


def _strict(tmp_path):
    """The ratings contract with partitions of at least two rows."""
    text = (EXAMPLE / "contracts" / "ratings.yaml").read_text().replace("mustBeGreaterThan: 0", "mustBeGreaterThan: 1")
    path = tmp_path / "strict.yaml"
    path.write_text(text)
    return load_contract(path)


def _decoded(contract, tmp_path, day: str, lines: list[str]):
    d = _landing(tmp_path, day, HEADER + "".join(lines))
    return [decode_file(contract, "ratings", d, open(d.path, "rb").read(), NOW_US, "run")]


def test_each_partition_is_judged_alone_and_passing_ones_share_a_page(tmp_path):
    from millrace.validation.expectations import SuiteRunner

    contract = _strict(tmp_path)
    where = Locations(str(tmp_path / "lake"), str(tmp_path / "q"), str(tmp_path / "state"))
    items = [("2009-11", _decoded(contract, tmp_path, "2009-11-02", ["1,2,4.0,1257159144\n", "1,3,4.0,1257159144\n"])),
             ("2009-12", _decoded(contract, tmp_path, "2009-12-14", ["1,2,4.0,1260759144\n"])),
             ("2010-01", _decoded(contract, tmp_path, "2010-01-02", ["3,4,5.0,1262434000\n", "3,5,5.0,1262434000\n"]))]
    reports = write_partitions(contract, "ratings", items, where, "run", SuiteRunner(contract))
    assert [(r.partition, r.status) for r in reports] == [("2009-11", COMMITTED), ("2009-12", REJECTED),
                                                          ("2010-01", COMMITTED)]
    assert "expect_table_row_count_to_be_between" in reports[1].problem
    assert [c.value for c in lake.committed_partitions(where.lake, "ratings", "month")] == ["2009-11", "2010-01"]
    # The rejected partition has a page of its own; the committed ones share the page of the stacked rows.
    assert reports[1].expectations.data_docs.endswith("month=2009-12.html")
    assert reports[0].expectations.data_docs == reports[2].expectations.data_docs
    assert reports[0].expectations.data_docs.endswith("-run.html")
    for r in reports:
        assert (tmp_path / "state" / "data_docs" / "ratings" / r.expectations.data_docs.rsplit("/", 1)[1]).exists()
    # Each committed partition's result file holds its own row count.
    [c] = [c for c in lake.committed_partitions(where.lake, "ratings", "month") if c.value == "2010-01"]
    result = json.loads(lake.read_bytes(lake.join(c.directory, c.manifest.expectations.results)))
    counts = [r["result"]["observed_value"] for r in result["great_expectations"]["results"]
              if r["expectation_config"]["type"] == "expect_table_row_count_to_be_between"]
    assert counts == [2]


def test_one_partition_written_alone_gets_its_own_page(tmp_path):
    from millrace.validation.expectations import SuiteRunner

    contract = _strict(tmp_path)
    where = Locations(str(tmp_path / "lake"), str(tmp_path / "q"), str(tmp_path / "state"))
    decoded = _decoded(contract, tmp_path, "2009-11-02", ["1,2,4.0,1257159144\n", "1,3,4.0,1257159144\n"])
    report = write_partition(contract, "ratings", "2009-11", decoded, where, "run", SuiteRunner(contract))
    assert report.status == COMMITTED and report.expectations.data_docs.endswith("month=2009-11.html")


@pytest.mark.slow
def test_the_docs_index_links_each_partition_to_its_page_and_drops_replaced_pages(project_dir):
    import datetime as dt
    import os

    from millrace.contracts.project import load_project
    from millrace.pipelines.ingest import ingest

    project = load_project(project_dir)
    for day, ts in (("2009-11-02", 1257159144), ("2009-12-14", 1260759144)):
        folder = os.path.join(project.landing, "ratings", day)
        os.makedirs(folder)
        with open(os.path.join(folder, "r.csv"), "w") as fh:
            fh.write(HEADER + "".join(f"{u},{u + 1},4.0,{ts}\n" for u in range(1, 30)))
    docs = os.path.join(project.state_dir, "data_docs", "ratings")
    first = ingest(project, "ratings")
    shared = {r.expectations.data_docs for r in first.reports}
    assert len(shared) == 1  # validated together: one page
    again = ingest(project, "ratings", dt.date(2009, 12, 1), dt.date(2009, 12, 31))  # one partition alone
    assert again.reports[0].expectations.data_docs.endswith("month=2009-12.html")
    index = open(os.path.join(docs, "index.html")).read()
    assert 'href="month=2009-12.html">2009-12</a> committed, passed' in index
    assert f'href="{shared.pop().rsplit("/", 1)[1]}">2009-11</a>' in index  # still its page from the first run
    ingest(project, "ratings", dt.date(2009, 11, 1), dt.date(2009, 12, 31))  # both again, together
    pages = sorted(p for p in os.listdir(docs) if p != "index.html")
    assert len(pages) == 1 and pages[0].startswith("month=2009-11..2009-12-")  # replaced pages are gone
